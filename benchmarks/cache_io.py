"""Feature-cache storage: bytes per image and random-batch reads, Zarr against HDF5 and .npy.

    python benchmarks/cache_io.py --source cache/features/<dataset>/<set>-<key>/features.zarr --tap block:32
    python benchmarks/cache_io.py            # features of the demo encoder, generated here

One tap's (N, C, g, g) feature maps are written in each layout, one image per chunk, then read
back in random batches (``--batch`` indices drawn without replacement, as a training loader
does) from files just written, i.e. from the page cache: the figure is the decode cost a
training run sees on a machine whose RAM holds the cache, not disk speed.

Layouts and codecs, paired for equal compression where the formats allow it:

* Zarr v3, sharded (one file per ``--shard`` images): Blosc-zstd + bit-shuffle at levels 1, 3
  and 5 (samcache's default is level 3), Blosc-lz4 + bit-shuffle, Blosc-zlib + byte-shuffle at
  level 5 (the analogue of HDF5's gzip + shuffle), and uncompressed, read as samcache reads
  (``read_items``: item runs as slices); once more with zarr's integer-array selection;
* HDF5 (h5py), chunked one image per chunk: gzip level 5 + shuffle, LZF + shuffle, uncompressed
  (h5py has no Blosc without the hdf5plugin package);
* one ``.npy`` file per image (uncompressed) and one ``.npz`` per image (deflate).

With ``--source`` the maps come from a real feature cache; only ``--distinct`` of them are read
and repeated to ``--items``. Every chunk is compressed on its own, so repetition changes neither
the bytes per image nor the cost of decoding one. Results go to benchmarks/out/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import zarr
from zarr.codecs import BloscCodec

from samcache.features.store import FeatureStore, read_items


def zarr_layout(
    codec: BloscCodec | None, shard: int, elementwise: bool = False
) -> tuple[Callable, Callable]:
    def write(path: Path, data: np.ndarray) -> None:
        n = len(data)
        a = zarr.create_array(
            str(path),
            shape=data.shape,
            chunks=(1, *data.shape[1:]),
            shards=(shard, *data.shape[1:]),
            dtype=data.dtype,
            compressors=codec,
            fill_value=0,
            zarr_format=3,
        )
        for s in range(0, n, shard):
            a[s : s + shard] = data[s : s + shard]

    def reader(path: Path) -> Callable[[np.ndarray], np.ndarray]:
        a = zarr.open_array(str(path), mode="r")
        if elementwise:  # zarr's own integer-array selection, for comparison
            return lambda idx: a.get_orthogonal_selection((idx,))
        return lambda idx: read_items(a, idx)  # what FeatureStore.read does

    return write, reader


def hdf5_layout(
    compression: str | None, opts: int | None, shuffle: bool
) -> tuple[Callable, Callable]:
    def write(path: Path, data: np.ndarray) -> None:
        with h5py.File(path, "w") as f:
            f.create_dataset(
                "x",
                data=data,
                chunks=(1, *data.shape[1:]),
                compression=compression,
                compression_opts=opts,
                shuffle=shuffle,
            )

    def reader(path: Path) -> Callable[[np.ndarray], np.ndarray]:
        ds = h5py.File(path, "r")["x"]
        # One read per item: h5py's fancy indexing (ds[idx]) is as slow as zarr's.
        return lambda idx: np.stack([ds[i] for i in idx])

    return write, reader


def npy_layout(compressed: bool) -> tuple[Callable, Callable]:
    def write(path: Path, data: np.ndarray) -> None:
        path.mkdir()
        for i, item in enumerate(data):
            if compressed:
                np.savez_compressed(path / f"{i:06d}.npz", x=item)
            else:
                np.save(path / f"{i:06d}.npy", item)

    def reader(path: Path) -> Callable[[np.ndarray], np.ndarray]:
        if compressed:
            return lambda idx: np.stack([np.load(path / f"{i:06d}.npz")["x"] for i in idx])
        return lambda idx: np.stack([np.load(path / f"{i:06d}.npy") for i in idx])

    return write, reader


def layouts(shard: int) -> dict[str, tuple[Callable, Callable]]:
    blosc = lambda cname, level, shuffle: BloscCodec(cname=cname, clevel=level, shuffle=shuffle)  # noqa: E731
    return {
        "zarr blosc-zstd-1 bitshuffle": zarr_layout(blosc("zstd", 1, "bitshuffle"), shard),
        "zarr blosc-zstd-3 bitshuffle (default)": zarr_layout(
            blosc("zstd", 3, "bitshuffle"), shard
        ),
        "zarr blosc-zstd-5 bitshuffle": zarr_layout(blosc("zstd", 5, "bitshuffle"), shard),
        "zarr blosc-lz4-5 bitshuffle": zarr_layout(blosc("lz4", 5, "bitshuffle"), shard),
        "zarr blosc-zlib-5 shuffle": zarr_layout(blosc("zlib", 5, "shuffle"), shard),
        "zarr uncompressed": zarr_layout(None, shard),
        "zarr blosc-zstd-3, integer-array read": zarr_layout(
            blosc("zstd", 3, "bitshuffle"), shard, elementwise=True
        ),
        "hdf5 gzip-5 shuffle": hdf5_layout("gzip", 5, True),
        "hdf5 lzf shuffle": hdf5_layout("lzf", None, True),
        "hdf5 uncompressed": hdf5_layout(None, None, False),
        "npy per image": npy_layout(False),
        "npz per image (deflate)": npy_layout(True),
    }


def disk_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def cached_sizes(path: str) -> dict[str, dict[str, float]]:
    """Bytes per image of every tap of a feature cache as it is stored (its own codec)."""
    fs = FeatureStore(path)
    n = fs.group["complete"].shape[0]
    sizes = {}
    for name, tap in fs.taps.items():
        arr = fs.array(name)
        stored = disk_bytes(Path(path) / tap.array) / n
        raw = float(np.prod(arr.shape[1:]) * arr.dtype.itemsize)
        sizes[name] = {"raw_bytes": raw, "stored_bytes": stored, "ratio": stored / raw}
    return sizes


def load_source(args) -> tuple[np.ndarray, str]:
    if args.source:
        fs = FeatureStore(args.source)
        arr = fs.array(args.tap)
        distinct = np.asarray(arr[: args.distinct])
        what = f"{args.source} tap {args.tap} (key {fs.key}), {len(distinct)} distinct maps"
    else:
        from samcache.data.synthetic import write_synthetic_store
        from samcache.features.extract import extract_features
        from samcache.features.specs import feature_set_from_config

        with tempfile.TemporaryDirectory() as tmp:
            store = write_synthetic_store(Path(tmp) / "s.zarr", n_images=max(10, args.distinct))
            cfg = {"encoder": "vit_tiny", "weights": "random", "taps": [args.tap]}
            fset = feature_set_from_config(cfg, "bench")
            fs = extract_features(store.path, Path(tmp) / "f.zarr", fset, progress=False)
            distinct = fs.read(args.tap, np.arange(args.distinct))
        what = f"vit_tiny (random weights) tap {args.tap} on demo images, {len(distinct)} distinct maps"
    reps = -(-args.items // len(distinct))
    return np.concatenate([distinct] * reps)[: args.items], what


def measure(name, write, reader, data, root: Path, args, rng) -> dict:
    path = root / name.replace(" ", "_").replace("(", "").replace(")", "")
    t0 = time.perf_counter()
    write(path, data)
    write_s = time.perf_counter() - t0
    read = reader(path)
    read(np.arange(min(args.batch, len(data))))  # open files, warm the page cache
    n_read, t0 = 0, time.perf_counter()
    for _ in range(args.batches):
        idx = np.sort(rng.choice(len(data), size=args.batch, replace=False))
        out = read(idx)
        n_read += len(out)
    read_s = time.perf_counter() - t0
    np.testing.assert_array_equal(read(np.array([0, len(data) - 1])), data[[0, -1]])
    item, size = data[0].nbytes, disk_bytes(path)
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
    return {
        "bytes_per_image": size / len(data),
        "ratio": size / data.nbytes,
        "write_images_per_s": len(data) / write_s,
        "read_images_per_s": n_read / read_s,
        "read_mb_per_s": n_read * item / read_s / 1e6,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", help="a feature cache (features.zarr); default: generate demo maps")
    p.add_argument("--tap", default="neck")
    p.add_argument("--distinct", type=int, default=8, help="distinct maps taken from the source")
    p.add_argument("--items", type=int, default=64, help="images in each layout")
    p.add_argument("--shard", type=int, default=8, help="images per Zarr shard file")
    p.add_argument("--batch", type=int, default=32, help="images per random read")
    p.add_argument("--batches", type=int, default=20, help="random reads timed per layout")
    p.add_argument("--only", nargs="*", help="layout names to run (substring match)")
    p.add_argument("--out", help="results JSON (default benchmarks/out/cache_io.json)")
    args = p.parse_args(argv)
    data, what = load_source(args)
    sizes = cached_sizes(args.source) if args.source else {}
    if sizes:
        print(f"{args.source} as stored, per image:")
        for name, r in sizes.items():
            print(
                f"  {name:12s} raw {r['raw_bytes'] / 2**20:7.3f} MiB  stored "
                f"{r['stored_bytes'] / 2**20:7.3f} MiB  ratio {r['ratio']:.3f}"
            )
        raw, stored = (sum(r[k] for r in sizes.values()) for k in ("raw_bytes", "stored_bytes"))
        print(f"  {'all taps':12s} raw {raw / 2**20:7.3f} MiB  stored {stored / 2**20:7.3f} MiB")
    rng = np.random.default_rng(0)
    results = {}
    root = Path(tempfile.mkdtemp(prefix="samcache-io-"))
    try:
        for name, (write, reader) in layouts(args.shard).items():
            if args.only and not any(o in name for o in args.only):
                continue
            results[name] = measure(name, write, reader, data, root, args, rng)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report = {
        "source": what,
        "item_shape": list(data.shape[1:]),
        "dtype": str(data.dtype),
        "raw_bytes_per_image": data[0].nbytes,
        "items": len(data),
        "batch": args.batch,
        "cached_taps": sizes,
        "layouts": results,
    }
    print(
        f"{what}; item {tuple(data.shape[1:])} {data.dtype} = {data[0].nbytes / 2**20:.2f} MiB raw"
    )
    print(
        f"{'layout':40s} {'MiB/img':>8s} {'ratio':>6s} {'write img/s':>12s} {'read img/s':>11s} {'read MB/s':>10s}"
    )
    for name, r in results.items():
        print(
            f"{name:40s} {r['bytes_per_image'] / 2**20:8.3f} {r['ratio']:6.3f} "
            f"{r['write_images_per_s']:12.1f} {r['read_images_per_s']:11.1f} {r['read_mb_per_s']:10.1f}"
        )
    out = Path(args.out or "benchmarks/out/cache_io.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"results: {out}")
    return report


if __name__ == "__main__":
    main()
