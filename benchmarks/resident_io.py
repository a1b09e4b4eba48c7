"""Bytes read and epoch time of a seed-000 head's inputs at paper scale: streamed, resident, pooled.

Builds (once, in ``--dir``) a synthetic dataset store of ``--items`` 224 px images and a feature
cache shaped like SAM ViT-H's with seed 000's taps: patch embedding, blocks 1, 16 and 32
(1280 x 64 x 64) and the neck (256 x 64 x 64), float16, the default codec, plus blocks 1, 16 and
32 pooled onto the 224 px backbones' stage grids (56, 28, 14), as the paper config stores them.
The maps are smooth random fields (a coarse random map upsampled, plus noise), so that they
compress about as much as real encoder maps (0.72 for ViT-H with random weights; the ratio is
printed). Then, for each way a run can get its inputs, it times ``--epochs`` epochs of batches of
the training items (the inputs of ``sam_slca_projector``: the image and five taps) and counts
the bytes read:

* ``streamed``: every batch read from Zarr (the next one prefetched), as a run does whose inputs
  exceed the memory budget;
* ``resident``: the native taps read once into host memory, every batch gathered from there;
* ``pooled``: the taps stored at the stage grids, read once (22 MiB per image instead of 42).

``--head`` also trains the head (``sam_slca_projector`` on ``--backbone``) for one epoch on each,
to put the data time next to a CPU head's compute time; the epoch of a GPU head is shorter, so
the data time is the one that matters there. Bytes are those the process read from files
(``rchar`` of /proc/self/io, page cache included) and those the run's reader decoded.

    python benchmarks/resident_io.py --dir /tmp/paper-io --items 200 [--epochs 2] [--head]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from samcache.data.store import DatasetStore  # noqa: E402
from samcache.data.synthetic import write_synthetic_store  # noqa: E402
from samcache.features.extract import open_or_create_cache  # noqa: E402
from samcache.features.pipeline import pool_to_grid  # noqa: E402
from samcache.features.specs import feature_set_from_config  # noqa: E402
from samcache.features.store import FeatureStore  # noqa: E402
from samcache.inputs import RunInputs, batches  # noqa: E402
from samcache.resident import ResidentCache  # noqa: E402
from samcache.zarrio import ItemLedger  # noqa: E402

NATIVE = ["patch_embed", "block:1", "block:16", "block:32", "neck"]
POOLED = ["patch_embed", "block:1@56", "block:16@28", "block:32@14", "neck"]
MiB = 2**20


def rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def smooth_maps(gen: torch.Generator, n: int, channels: int) -> torch.Tensor:
    coarse = torch.randn(n, channels, 8, 8, generator=gen)
    fine = F.interpolate(coarse, size=(64, 64), mode="bilinear", align_corners=False)
    return fine + 0.1 * torch.randn(n, channels, 64, 64, generator=gen)


def build(root: Path, items: int) -> tuple[Path, Path]:
    store = root / "paper.zarr"
    if not store.exists():
        write_synthetic_store(store, name="paper", n_images=items, image_size=224, seed=0)
    ds = DatasetStore(store)
    cfg = {"encoder": "vit_h", "weights": "random", "taps": NATIVE + POOLED[1:4]}
    fset = feature_set_from_config(cfg, "paper:synthetic")
    out = root / "features.zarr"
    g = open_or_create_cache(out, fset, ds, batch_size=8)
    ledger = ItemLedger(g, ds.n_items, int(g.attrs["items_per_shard"]))
    t0 = time.perf_counter()
    for a, b in ledger.missing_units():
        gen = torch.Generator().manual_seed(a)
        native = {
            t.name: smooth_maps(gen, b - a, 256 if t.name == "neck" else 1280)
            for t in fset.taps
            if t.grid is None
        }
        for t in fset.taps:
            maps = native[t.name] if t.grid is None else pool_to_grid(native[t.name], t.grid)
            g[t.array_name][a:b] = maps.half().numpy()
        ledger.mark(a, b)
        print(f"  wrote items {a}-{b} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return store, out


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def one_mode(store: Path, features: Path, taps: list[str], memory_gb: float, a) -> dict:
    ds = DatasetStore(store)
    fs = FeatureStore(features)
    train = ds.indices("train")
    cache = ResidentCache(memory_gb)
    labels = ds.labels("melanoma")
    epochs = []
    for epoch in range(a.epochs):
        before_io, before_decoded = rchar(), cache.stats.total_bytes
        t0 = time.perf_counter()
        with RunInputs(
            ds,
            frozenset({"image", "taps"}),
            train,
            train,
            labels=labels,
            features=fs,
            taps=taps,
            image_size=224,
            cache=cache,
        ) as inputs:
            setup = time.perf_counter() - t0
            gen = torch.Generator().manual_seed(epoch)
            n = 0
            for batch in batches(inputs, train, a.batch_size, generator=gen):
                n += len(batch["label"])
            data_s = time.perf_counter() - t0
            head_s = None
            if a.head and epoch == 0:
                from samcache.heads import build_head

                torch.manual_seed(0)
                head = build_head(
                    "sam_slca_projector",
                    n_outputs=2,
                    input_shapes=inputs.input_shapes(),
                    backbone=a.backbone,
                    stage_taps=taps,
                    projector_tap="neck",
                )
                opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad])
                t1 = time.perf_counter()
                for batch in batches(inputs, train, a.batch_size, generator=gen):
                    loss = head.loss(head(batch), batch, "binary")
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                head_s = time.perf_counter() - t1
        epochs.append(
            {
                "epoch": epoch + 1,
                "images": n,
                "data_s": round(data_s, 2),
                "setup_s": round(setup, 2),
                "file_bytes_read_mib": round((rchar() - before_io) / MiB, 1),
                "decoded_mib": round((cache.stats.total_bytes - before_decoded) / MiB, 1),
                **({"epoch_with_head_s": round(head_s, 1)} if head_s is not None else {}),
            }
        )
        print(f"    epoch {epoch + 1}: {epochs[-1]}", flush=True)
    return {"taps": taps, "memory_gb": memory_gb, "epochs": epochs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, required=True, help="where the synthetic stores live")
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--head", action="store_true", help="also train the head one epoch per mode")
    ap.add_argument("--backbone", default="resnet18", help="timm backbone of the head (--head)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/out/resident_io.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    a.dir.mkdir(parents=True, exist_ok=True)
    print(f"building the synthetic stores in {a.dir} (once)", flush=True)
    store, features = build(a.dir, a.items)
    fs = FeatureStore(features)
    raw = {t: int(np.prod(fs.array(t).shape[1:])) * 2 for t in fs.taps}
    stored = {
        t: disk_bytes(features / info.array) / fs.array(t).shape[0] for t, info in fs.taps.items()
    }
    figures = {
        "items": a.items,
        "train_items": int(len(DatasetStore(store).indices("train"))),
        "platform": platform.platform(),
        "threads": a.threads,
        "raw_mib_per_image": {t: round(v / MiB, 2) for t, v in raw.items()},
        "stored_mib_per_image": {t: round(v / MiB, 2) for t, v in stored.items()},
        "native_taps_mib_per_image": round(sum(raw[t] for t in NATIVE) / MiB, 2),
        "pooled_taps_mib_per_image": round(sum(raw[t] for t in POOLED) / MiB, 2),
        "modes": {},
    }
    print(json.dumps({k: v for k, v in figures.items() if k != "modes"}, indent=1), flush=True)
    for mode, taps, memory in (
        ("streamed", NATIVE, 0.0),
        ("resident", NATIVE, 64.0),
        ("pooled", POOLED, 64.0),
    ):
        print(f"  {mode}:", flush=True)
        figures["modes"][mode] = one_mode(store, features, taps, memory, a)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(figures, indent=1) + "\n")
    print(json.dumps(figures["modes"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
