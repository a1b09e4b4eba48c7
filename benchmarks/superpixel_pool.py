"""Seed 003's superpixel pooling and unpooling at paper scale, against a loop over superpixels.

SANet's superpixel attention module runs ``Unpool(Pool(F))`` on every training batch: the
paper's batch of 5 images doubled by the shuffled copies (10), the decoder's last map at 256 px
(32 channels in samcache's ResUNet) and SLIC-zero labels with 1000 superpixels per image; the
superpixel probe pools SAM's 64 x 64 neck (256 channels). Timed side by side in one process,
forward and backward, on the CPU (and CUDA when present):

* ``samcache``: ``superpixel_smooth`` (a scatter-add and a gather on the labels' own grid;
  ``index_add`` over the nonzero (superpixel, cell) pairs on a coarser grid);
* ``overlap matrix``: the dense (B, N, h w) overlap matrix and two batched products, the
  direct matrix form of the resampling rule (its matrix is N times the features at full
  resolution);
* ``loop``: a Python loop over the superpixels of each image (boolean mask, mean, write back),
  the direct reading of eq. 1, on the first image only and scaled by the batch.

Prints the figures and writes ``benchmarks/out/superpixel_pool.json``.

    python benchmarks/superpixel_pool.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from samcache.heads.superpixel_ops import superpixel_overlap, superpixel_smooth

REPO = Path(__file__).resolve().parents[1]


def labels_like_slic(b: int, side: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """Blocks of about side²/n pixels each, ids shuffled: the sizes and count of SLIC's."""
    cells = max(1, round(n**0.5))
    rows = torch.arange(side) * cells // side
    grid = rows[:, None] * cells + rows[None, :]
    perm = torch.stack([torch.randperm(cells * cells, generator=gen) for _ in range(b)])
    return torch.stack([perm[i][grid] for i in range(b)])


def timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def loop_smooth(f: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(f)
    for s in labels.unique():
        m = labels == s
        out[:, m] = f[:, m].mean(dim=1, keepdim=True)
    return out


def case(name: str, b: int, c: int, grid: int, side: int, n: int, device, repeats: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    labels = labels_like_slic(b, side, n, gen).to(device)
    feats = torch.randn(b, c, grid, grid, generator=gen).to(device).requires_grad_()

    def ours():
        superpixel_smooth(feats, labels).sum().backward()

    def overlap():
        o = superpixel_overlap(labels, (grid, grid))  # (B, N, h w)
        flat = feats.reshape(b, c, -1).transpose(1, 2)  # (B, h w, C)
        regions = torch.bmm(o, flat) / o.sum(-1).clamp_min(1)[..., None]
        out = torch.bmm(o.transpose(1, 2), regions) / o.sum(1)[..., None]
        out.sum().backward()

    row = {"case": name, "batch": b, "channels": c, "grid": grid, "labels": side, "n": n}
    row["samcache_s"] = timed(ours, repeats)
    row["overlap_matrix_MiB"] = b * (int(labels.max()) + 1) * grid * grid * 4 / 2**20
    if row["overlap_matrix_MiB"] < 4096:
        row["overlap_s"] = timed(overlap, repeats)
    if grid == side:
        one = feats[0].detach()
        row["loop_s"] = timed(lambda: loop_smooth(one, labels[0]), 1) * b
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/out/superpixel_pool.json")
    a = ap.parse_args()
    torch.set_num_threads(1)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for dev in devices:
        device = torch.device(dev)
        for args in (
            ("SANet module, 256 px, 1000 superpixels", 10, 32, 256, 256, 1000),
            ("probe on the 64 x 64 neck, 1000 superpixels", 10, 256, 64, 256, 1000),
        ):
            row = {"device": dev, **case(*args, device=device, repeats=a.repeats)}
            rows.append(row)
            print(
                f"{dev:4s} {row['case']}: samcache {row['samcache_s'] * 1e3:.1f} ms"
                + (
                    f", overlap matrix {row['overlap_s'] * 1e3:.1f} ms"
                    if "overlap_s" in row
                    else ""
                )
                + f" ({row['overlap_matrix_MiB']:.0f} MiB)"
                + (f", loop {row['loop_s'] * 1e3:.0f} ms (forward only)" if "loop_s" in row else "")
            )
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(
        json.dumps(
            {"platform": platform.platform(), "torch": torch.__version__, "rows": rows}, indent=1
        )
    )


if __name__ == "__main__":
    main()
