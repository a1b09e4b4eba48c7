"""Reading a run's rows from Zarr: ``read_items`` against zarr's orthogonal selection.

Side by side on one store (the demo's, or any dataset store and feature cache given): every
image, and every row of each feature tap, in a shuffled order as a run asks for them, plus a
10 % subset. Prints seconds per read and the ratio; writes benchmarks/out/run_inputs_read.json.

    python benchmarks/run_inputs_read.py --dataset data/stores/demo.zarr \\
        --features cache/features/demo/<set>-<key>/features.zarr
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from samcache.data.store import DatasetStore
from samcache.features.store import FeatureStore, read_items

REPO = Path(__file__).resolve().parents[1]


def orthogonal(arr, items: np.ndarray) -> np.ndarray:
    order = np.argsort(items, kind="stable")
    out = np.empty((len(items), *arr.shape[1:]), dtype=arr.dtype)
    out[order] = arr.get_orthogonal_selection((items[order],))
    return out


def seconds(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--features")
    a = ap.parse_args()
    ds = DatasetStore(a.dataset)
    arrays = {"images": ds.images}
    if a.features:
        fs = FeatureStore(a.features)
        arrays.update({f"tap {t}": fs.array(t) for t in fs.taps})
    rng = np.random.default_rng(0)
    n = ds.n_items
    selections = {"all, shuffled": rng.permutation(n), "10 %": rng.choice(n, n // 10, False)}
    rows = []
    for name, arr in arrays.items():
        for sel_name, items in selections.items():
            assert np.array_equal(read_items(arr, items), orthogonal(arr, items))
            fast, slow = seconds(read_items, arr, items), seconds(orthogonal, arr, items)
            rows.append(
                {"array": name, "rows": sel_name, "read_items_s": fast, "orthogonal_s": slow}
            )
            print(
                f"{name:18s} {sel_name:14s} read_items {fast:6.2f} s   orthogonal {slow:6.2f} s"
                f"   x{slow / fast:5.1f}"
            )
    out = REPO / "benchmarks/out/run_inputs_read.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
