"""SLIC superpixel throughput of the superpixel cache, by number of worker processes.

    python benchmarks/slic_throughput.py --images 64 --image-size 256 --threads 1 2

Runs ``compute_superpixels`` (what ``samcache superpixels`` and the Snakemake rule run) on the
synthetic demo images into a fresh cache for each worker count and reports images/s, the
speed-up over one worker, and the parallel efficiency. Results go to benchmarks/out/.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from samcache.data.synthetic import write_synthetic_store
from samcache.features.specs import SlicParams
from samcache.features.superpixels import compute_superpixels


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--threads", type=int, nargs="+", default=[1, len(os.sched_getaffinity(0))])
    p.add_argument("--n-segments", type=int, default=100)
    p.add_argument("--unit", type=int, default=8, help="images per unit of work (and shard)")
    p.add_argument("--out", help="results JSON (default benchmarks/out/slic_throughput.json)")
    args = p.parse_args(argv)
    params = SlicParams(n_segments=args.n_segments)
    rows = []
    with tempfile.TemporaryDirectory(prefix="samcache-slic-") as tmp:
        store = write_synthetic_store(
            Path(tmp) / "s.zarr", n_images=args.images, image_size=args.image_size
        )
        for threads in args.threads:
            t0 = time.perf_counter()
            compute_superpixels(
                store.path,
                Path(tmp) / f"sp{threads}.zarr",
                params,
                key="benchmark",
                threads=threads,
                unit=args.unit,
                progress=False,
            )
            rows.append(
                {"threads": threads, "images_per_s": args.images / (time.perf_counter() - t0)}
            )
    one = next((r["images_per_s"] for r in rows if r["threads"] == 1), None)
    print(f"SLIC n_segments={args.n_segments} on {args.images} images of {args.image_size} px")
    print(f"{'workers':>8s} {'images/s':>9s} {'speed-up':>9s} {'efficiency':>11s}")
    for r in rows:
        r["speedup"] = r["images_per_s"] / one if one else None
        eff = f"{r['speedup'] / r['threads']:11.0%}" if one else ""
        sp = f"{r['speedup']:9.2f}" if one else ""
        print(f"{r['threads']:8d} {r['images_per_s']:9.1f} {sp} {eff}")
    report = {
        "images": args.images,
        "image_size": args.image_size,
        "slic": params.__dict__,
        "cpus": len(os.sched_getaffinity(0)),
        "load_average": os.getloadavg()[0],
        "rows": rows,
    }
    out = Path(args.out or "benchmarks/out/slic_throughput.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"results: {out}")
    return report


if __name__ == "__main__":
    main()
