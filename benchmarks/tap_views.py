"""How far warped SAM taps are from re-encoded ones, and what a cached view costs.

    python benchmarks/tap_views.py --encoders vit_tiny vit_b --images 2

For each encoder (random weights drawn from seed 0: no checkpoint is needed, so the benchmark
runs offline) and a few synthetic demo images, every tap of the original image is transformed
the way ``tap_augment: warp`` transforms it (``samcache.augment.warp`` with the image's affine
grid) and compared with the same tap of the transformed image run through SAM's own
preprocessing and the encoder (what ``tap_augment: views`` caches). Transforms: horizontal flip,
a quarter turn, and a centred crop of 0.875 x the side resized back (seed 001's 224 of 256).
Reported per tap: the relative error ||warped - re-encoded|| / ||re-encoded||, and the seconds
of one encoder pass per image and the bytes one view adds per training image. Results go to
benchmarks/out/tap_views.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from samcache.augment import warp
from samcache.data.synthetic import render_lesion
from samcache.features.encoders import build_encoder, encoder_spec
from samcache.features.preprocess import SamPreprocess
from samcache.features.specs import parse_taps
from samcache.features.taps import TapRecorder
from samcache.views import apply_view

TAPS = {
    "vit_tiny": ["patch_embed", "block:1", "block:2", "block:4", "neck"],
    "vit_b": ["patch_embed", "block:1", "block:6", "block:12", "neck"],
    "vit_h": ["patch_embed", "block:1", "block:16", "block:32", "neck"],
}


def crop_resize(image: np.ndarray, share: float) -> np.ndarray:
    """The centred square of ``share`` x the side, resized back (bilinear, antialiased)."""
    side = image.shape[0]
    w = round(share * side)
    a = (side - w) // 2
    x = torch.from_numpy(np.ascontiguousarray(image[a : a + w, a : a + w])).permute(2, 0, 1)
    x = torch.nn.functional.interpolate(
        x[None].float(), size=(side, side), mode="bilinear", antialias=True, align_corners=False
    )
    return x[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def transforms(share: float) -> dict[str, tuple]:
    """name -> (image transform, affine matrix of the same transform for ``warp``)."""
    side = share
    return {
        "hflip": (lambda im: apply_view(im, "hflip", axes=(0, 1)), [[-1, 0, 0], [0, 1, 0]]),
        "rot90": (lambda im: apply_view(im, "rot90", axes=(0, 1)), [[0, -1, 0], [1, 0, 0]]),
        f"crop{share:g}": (lambda im: crop_resize(im, share), [[side, 0, 0], [0, side, 0]]),
    }


def encode(recorder: TapRecorder, pre: SamPreprocess, image: np.ndarray) -> dict[str, torch.Tensor]:
    x = pre.to_input(torch.from_numpy(pre.resize(image[None])), "cpu")
    return {k: v.float() for k, v in recorder(x).items()}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoders", nargs="+", default=["vit_tiny", "vit_b"])
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--crop", type=float, default=0.875)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/out/tap_views.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    images = [render_lesion(0, i, args.image_size).image for i in range(args.images)]
    result = {"images": args.images, "image_size": args.image_size, "encoders": {}}
    for name in args.encoders:
        spec = encoder_spec(name)
        taps = parse_taps(TAPS[name])
        recorder = TapRecorder(build_encoder(name, seed=0), taps)
        pre = SamPreprocess(spec)
        errors: dict[str, dict[str, list[float]]] = {}
        seconds = []
        for image in images:
            t0 = time.perf_counter()
            base = encode(recorder, pre, image)
            seconds.append(time.perf_counter() - t0)
            for tname, (fn, theta) in transforms(args.crop).items():
                again = encode(recorder, pre, np.ascontiguousarray(fn(image)))
                th = torch.tensor([theta], dtype=torch.float32)
                for tap, x in base.items():
                    warped = warp(x, th, "bilinear")
                    rel = float((warped - again[tap]).norm() / again[tap].norm())
                    errors.setdefault(tname, {}).setdefault(tap, []).append(rel)
        view_bytes = sum(spec.tap_channels(t.name) * t.stored_grid(spec) ** 2 * 2 for t in taps)
        result["encoders"][name] = {
            "weights": "random (seed 0)",
            "taps": TAPS[name],
            "relative_error": {
                t: {tap: round(float(np.mean(v)), 4) for tap, v in per.items()}
                for t, per in errors.items()
            },
            "seconds_per_encoder_pass_cpu": round(float(np.median(seconds)), 3),
            "float16_bytes_per_view_per_image": view_bytes,
        }
        print(name, json.dumps(result["encoders"][name], indent=1), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
