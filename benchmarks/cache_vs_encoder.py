"""The ratio the feature cache exists for: an epoch of a head on cached taps against the same
head with the frozen encoder in the loop.

Measured: SAM's ViT-B image encoder (random weights; the speed does not depend on them) at a
small input (``--input`` px instead of 1024, so that a CPU finishes), seed 000's fusion head
(``sam_slca_projector``, SLCA into every stage of a ``--backbone`` at ``--image-size`` px, plus
the projector) reading ViT-B's patch embedding, blocks 1, 6 and 12 and the neck. One epoch over
``--images`` images in batches of ``--batch-size``:

* cached: the taps were computed once before; the epoch gathers them from memory and trains
  the head;
* encoder in the loop: every batch first runs the frozen encoder (``inference_mode``) to get the
  same taps, then trains the head.

The two alternate for ``--rounds`` rounds so that both see the same machine load; the ratio is
the median of the per-round ratios.

Projected: the same ratio from FLOPs (``torch.utils.flop_counter``; the encoder's by
``samcache.features.cost.encoder_flops``, which the tests check against the counter) for the
paper's setting, ViT-H at 1024 px against ``--paper-backbone`` with SLCA and the projector at
224 px, forward and backward, assuming both run at the same FLOP rate. Every epoch of every run
saves that much; the cache pays it once per image.

    python benchmarks/cache_vs_encoder.py [--input 256] [--images 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from samcache.features.cost import encoder_flops  # noqa: E402
from samcache.features.encoders import build_encoder, encoder_spec  # noqa: E402
from samcache.features.specs import TapSpec  # noqa: E402
from samcache.features.taps import TapRecorder  # noqa: E402
from samcache.heads import build_head  # noqa: E402

VIT_B_TAPS = ["patch_embed", "block:1", "block:6", "block:12", "neck"]
VIT_H_TAPS = ["patch_embed", "block:1", "block:16", "block:32", "neck"]


def fusion_head(tap_shapes: dict, backbone: str, image_size: int):
    torch.manual_seed(0)
    return build_head(
        "sam_slca_projector",
        n_outputs=2,
        input_shapes={"image": (3, image_size, image_size), "taps": tap_shapes},
        backbone=backbone,
        projector_tap="neck",
    )


def train_step(head, opt, image, taps, label) -> None:
    out = head({"image": image, "taps": taps, "label": label})
    loss = head.loss(out, {"label": label}, "binary")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def head_flops(head, image_size: int, tap_shapes: dict) -> int:
    """FLOPs of one training step of ``head`` on one image (forward and backward)."""
    image = torch.randn(1, 3, image_size, image_size)
    taps = {t: torch.randn(1, *s) for t, s in tap_shapes.items()}
    with FlopCounterMode(display=False) as counter:
        out = head({"image": image, "taps": taps})
        out["logits"].sum().backward()
    head.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", type=int, default=256, help="encoder input side (1024 in SAM)")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backbone", default="resnet18", help="the measured head's timm backbone")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--paper-backbone", default="resnet152")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/out/cache_vs_encoder.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    enc = build_encoder("vit_b", seed=0, img_size=a.input)
    recorder = TapRecorder(enc, [TapSpec(t) for t in VIT_B_TAPS])
    gen = torch.Generator().manual_seed(0)
    sam_in = torch.randn(a.images, 3, a.input, a.input, generator=gen)
    image = torch.randn(a.images, 3, a.image_size, a.image_size, generator=gen)
    label = torch.arange(a.images) % 2
    t0 = time.perf_counter()
    cached = {t: [] for t in VIT_B_TAPS}
    for s in range(0, a.images, a.batch_size):
        out = recorder(sam_in[s : s + a.batch_size])
        for t in VIT_B_TAPS:
            cached[t].append(out[t].half())
    cached = {t: torch.cat(v) for t, v in cached.items()}
    encode_once_s = time.perf_counter() - t0
    shapes = {t: tuple(v.shape[1:]) for t, v in cached.items()}
    head = fusion_head(shapes, a.backbone, a.image_size)
    opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=1e-4)

    def epoch_cached() -> float:
        t = time.perf_counter()
        for s in range(0, a.images, a.batch_size):
            taps = {k: v[s : s + a.batch_size].float() for k, v in cached.items()}
            train_step(head, opt, image[s : s + a.batch_size], taps, label[s : s + a.batch_size])
        return time.perf_counter() - t

    def epoch_encoder() -> float:
        t = time.perf_counter()
        for s in range(0, a.images, a.batch_size):
            taps = {k: v.clone() for k, v in recorder(sam_in[s : s + a.batch_size]).items()}
            train_step(head, opt, image[s : s + a.batch_size], taps, label[s : s + a.batch_size])
        return time.perf_counter() - t

    epoch_cached()  # warm-up: first-call costs belong to neither
    rounds = []
    for r in range(a.rounds):
        c, e = epoch_cached(), epoch_encoder()
        rounds.append({"cached_s": round(c, 2), "encoder_in_loop_s": round(e, 2)})
        print(f"round {r + 1}: cached {c:.1f} s, encoder in the loop {e:.1f} s ({e / c:.1f}x)")
    ratio = statistics.median(r["encoder_in_loop_s"] / r["cached_s"] for r in rounds)

    # FLOP projection for the paper: ViT-H at 1024 px against seed 000's head at 224 px
    vit_h = encoder_spec("vit_h")
    paper_shapes = {t: (256 if t == "neck" else vit_h.embed_dim, 64, 64) for t in VIT_H_TAPS}
    paper_head = fusion_head(paper_shapes, a.paper_backbone, 224)
    f_head = head_flops(paper_head, 224, paper_shapes)
    f_enc = encoder_flops(vit_h)
    measured_head = head_flops(head, a.image_size, shapes)
    small_spec = encoder_spec("vit_b")
    with FlopCounterMode(display=False) as counter:
        recorder(sam_in[:1])
    measured_enc = counter.get_total_flops()

    figures = {
        "platform": platform.platform(),
        "threads": a.threads,
        "measured": {
            "encoder": f"vit_b ({small_spec.embed_dim}-d, {small_spec.depth} blocks), "
            f"{a.input} px input, random weights",
            "head": f"sam_slca_projector on {a.backbone} at {a.image_size} px",
            "images": a.images,
            "batch_size": a.batch_size,
            "encode_once_s": round(encode_once_s, 2),
            "rounds": rounds,
            "epoch_ratio_median": round(ratio, 1),
            "encoder_gflop_per_image": round(measured_enc / 1e9, 2),
            "head_train_gflop_per_image": round(measured_head / 1e9, 2),
        },
        "projected": {
            "encoder": "vit_h at 1024 px",
            "head": f"sam_slca_projector on {a.paper_backbone} at 224 px",
            "encoder_gflop_per_image": round(f_enc / 1e9, 1),
            "head_train_gflop_per_image": round(f_head / 1e9, 1),
            "epoch_ratio": round((f_enc + f_head) / f_head, 1),
        },
    }
    print(json.dumps(figures, indent=1))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
