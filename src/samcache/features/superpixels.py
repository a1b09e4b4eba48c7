"""SLIC superpixel label maps for every image of a dataset store, resumable like the feature cache.

Layout of ``superpixels.zarr``: ``labels`` (N, H, W) int32 from ``skimage.segmentation.slic``
(labels start at 0), ``complete`` (N,) bool, and attrs with the cache key and SLIC parameters.
Images are processed in fixed units by a pool of worker processes (SLIC holds the GIL), and a
unit's flags are set only after its label maps are written.
"""

from __future__ import annotations

import functools
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import zarr
from skimage.segmentation import slic

from samcache.data.store import DatasetStore
from samcache.features.specs import SlicParams
from samcache.features.store import create_store_atomically, exclusive_writer, report_repairs
from samcache.integrity import clear_damaged, require_sound, resume_advice
from samcache.progress import progress_bar
from samcache.zarrio import (
    ItemLedger,
    StoreError,
    create_item_array,
    open_group,
    remove_partial_files,
)

log = logging.getLogger(__name__)
RESUME_ADVICE = resume_advice("superpixels")


def slic_labels(image: np.ndarray, params: SlicParams) -> np.ndarray:
    """One image's SLIC label map, int32, labels from 0."""
    return slic(
        image,
        n_segments=params.n_segments,
        compactness=params.compactness,
        sigma=params.sigma,
        max_num_iter=params.max_num_iter,
        enforce_connectivity=params.enforce_connectivity,
        slic_zero=params.slic_zero,
        start_label=0,
        channel_axis=-1,
    ).astype(np.int32)


@functools.cache
def _images(path: str) -> zarr.Array:
    """The store's images, opened once per worker process (validating the store costs more
    than a unit of small images)."""
    return DatasetStore(path).images


def _unit(args: tuple[str, int, int, SlicParams]) -> tuple[int, int, np.ndarray]:
    path, a, b, params = args
    images = np.asarray(_images(path)[a:b])
    return a, b, np.stack([slic_labels(im, params) for im in images])


def _open_or_create(
    out: Path, ds: DatasetStore, params: SlicParams, key: str, unit: int
) -> zarr.Group:
    if (out / "zarr.json").is_file():
        g = open_group(out, "r+")
        if g.attrs.get("cache_key") != key or g.attrs.get("dataset_fingerprint") != ds.fingerprint:
            raise StoreError(
                f"{out}: holds superpixels built with other settings; delete it to rebuild"
            )
        remove_partial_files(out)
        return g
    unit = max(1, min(unit, ds.n_items))

    def build(g: zarr.Group) -> None:
        create_item_array(
            g,
            "labels",
            n_items=ds.n_items,
            item_shape=ds.image_shape,
            dtype="int32",
            items_per_shard=unit,
        )
        ItemLedger(g, ds.n_items, unit)
        g.attrs.update(
            {
                "cache_key": key,
                "slic": asdict(params),
                "dataset_fingerprint": ds.fingerprint,
                "dataset_path": str(ds.path),
                "unit": unit,
                "n_items": ds.n_items,
            }
        )

    return create_store_atomically(out, build)


def compute_superpixels(
    dataset: str | Path,
    out: str | Path,
    params: SlicParams,
    *,
    key: str,
    threads: int = 1,
    unit: int = 16,
    progress: bool = True,
) -> Path:
    """Fill (or finish) the SLIC cache at ``out``, ``threads`` worker processes in parallel.

    A unit's flags are set only after its label maps are written, and a restart recomputes
    only the units with a missing image, with the unit size the cache was created with.
    """
    out = Path(out)
    ds = DatasetStore(dataset)
    with exclusive_writer(out):
        g = _open_or_create(out, ds, params, key, unit)
        ledger = ItemLedger(g, ds.n_items, int(g.attrs["unit"]))
        report_repairs(out, clear_damaged(g, ledger))
        todo = ledger.missing_units()
        if todo:
            ds.verify_fingerprint()  # the images about to be segmented are the keyed ones
        n_todo = sum(b - a for a, b in todo)
        log.info("%s: %d of %d images already complete", out, ds.n_items - n_todo, ds.n_items)
        labels = g["labels"]
        bar = progress_bar(total=n_todo, desc="SLIC", unit="img", enable=progress)
        threads = max(1, min(threads, len(os.sched_getaffinity(0)), len(todo) or 1))
        jobs = [(str(ds.path), a, b, params) for a, b in todo]
        pool = None
        try:
            if threads == 1:
                results = map(_unit, jobs)
            else:
                pool = ProcessPoolExecutor(max_workers=threads)
                results = pool.map(_unit, jobs)
            for a, b, lab in results:
                labels[a:b] = lab
                ledger.mark(a, b)
                bar.update(b - a)
        finally:
            bar.close()
            if pool is not None:
                pool.shutdown(cancel_futures=True)
    return out


def stored_key(path: str | Path) -> str:
    """The cache key a superpixel store was built with (run records keep it)."""
    return str(open_group(path, "r").attrs["cache_key"])


def open_superpixels(path: str | Path, *, expect_key: str | None = None) -> zarr.Array:
    """The ``labels`` array of a complete, sound cache (checked against ``expect_key``)."""
    g = open_group(path, "r")
    if expect_key is not None and g.attrs.get("cache_key") != expect_key:
        raise StoreError(f"{path}: superpixel cache key differs from the expected {expect_key}")
    done = ItemLedger.read(g)
    if not done.all():
        raise StoreError(
            f"{path}: superpixels are incomplete ({int((~done).sum())} of {len(done)} images "
            f"missing). {RESUME_ADVICE}"
        )
    require_sound(g, path, done, RESUME_ADVICE)
    return g["labels"]
