"""Feature extraction into a resumable, crash-safe Zarr feature cache.

Layout of ``features.zarr``::

    <tap array>   (N, C, g, g) float16 by default, one image per chunk, shards of whole batches
    <tap array>__<view>  the same for each view beyond the identity (``samcache.views``): the
                  rows of training images; other images' rows hold zeros (written, so that
                  every flagged item has its chunk on disk and integrity checks hold)
    complete      (N,) bool, set for a batch only after all of its tap arrays are written
    attrs: cache_key, key_fields, dataset_fingerprint, batch_size, items_per_shard, taps,
           extractions (device, attention path and versions of every run that wrote to it)

Work is done in fixed batches ``[k*B, (k+1)*B)``. A restarted extraction recomputes exactly the
batches that have an incomplete image, with the same batch composition as the first attempt, so
the resumed store equals an uninterrupted one value for value. The empty store is created in a
temporary directory and renamed into place, every chunk file is written to a temporary name and
renamed (zarr's ``LocalStore``), and a batch's flags are written after its data: a process
killed at any instant leaves images that are complete or that read as missing.

Three stages overlap (``samcache.features.pipeline``): a loader thread reads and resizes the
next batch, the main thread runs the encoder, and a writer thread compresses and stores the
previous batch.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import zarr

from samcache import __version__
from samcache.data.store import DatasetStore
from samcache.device import resolve_device
from samcache.download import verify
from samcache.features.attention import ATTENTION_IMPLEMENTATIONS
from samcache.features.checkpoints import CHECKPOINT_DIR, fetch_checkpoint, official_checkpoint
from samcache.features.cost import cpu_time_estimate
from samcache.features.encoders import build_encoder
from samcache.features.pipeline import run_pipeline
from samcache.features.specs import FeatureSetSpec
from samcache.features.store import (
    FeatureStore,
    TapInfo,
    create_store_atomically,
    exclusive_writer,
    report_repairs,
    view_array_name,
)
from samcache.integrity import clear_damaged
from samcache.zarrio import (
    ItemLedger,
    StoreError,
    create_item_array,
    open_group,
    remove_partial_files,
)

log = logging.getLogger(__name__)

MAX_SHARD_BYTES = 128 << 20


def _choose_items_per_shard(batch_size: int, item_bytes: int) -> int:
    """The largest divisor of the batch size whose shard stays under MAX_SHARD_BYTES."""
    best = 1
    for d in range(1, batch_size + 1):
        if batch_size % d == 0 and d * item_bytes <= MAX_SHARD_BYTES:
            best = d
    return best


def _check_existing(out: Path, fset: FeatureSetSpec, ds: DatasetStore) -> zarr.Group:
    g = open_group(out, "r+")
    attrs = dict(g.attrs)
    if attrs.get("cache_key") != fset.key():
        old, new = attrs.get("key_fields", {}), fset.key_fields()
        differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise StoreError(
            f"{out}: holds a cache built with other settings (differs in: {', '.join(differ)}). "
            "Delete it or give the new settings their own cache path; samcache never mixes the two."
        )
    if attrs.get("dataset_fingerprint") != ds.fingerprint:
        raise StoreError(
            f"{out}: was started from another version of {ds.path}; delete it to rebuild."
        )
    removed = remove_partial_files(out)
    if removed:
        log.info("removed %d partial files left by an interrupted run", removed)
    return g


def _build_empty(g: zarr.Group, fset: FeatureSetSpec, ds: DatasetStore, batch_size: int) -> None:
    spec = fset.spec
    taps = [
        TapInfo(
            t.name, t.array_name, spec.tap_channels(t.name), t.stored_grid(spec), t.dtype, t.ref
        )
        for t in fset.taps
    ]
    item_bytes = max(t.channels * t.grid**2 * np.dtype(t.dtype).itemsize for t in taps)
    per_shard = _choose_items_per_shard(batch_size, item_bytes)
    for t in taps:
        for view in fset.views:  # views beyond the identity: zeros in the rows of other images
            create_item_array(
                g,
                view_array_name(t.array, view),
                n_items=ds.n_items,
                item_shape=(t.channels, t.grid, t.grid),
                dtype=t.dtype,
                items_per_shard=per_shard,
            )
    ItemLedger(g, ds.n_items, per_shard)
    g.attrs.update(
        {
            "cache_key": fset.key(),
            "key_fields": fset.key_fields(),
            "dataset_fingerprint": ds.fingerprint,
            "dataset_path": str(ds.path),
            "n_items": ds.n_items,
            "batch_size": batch_size,
            "items_per_shard": per_shard,
            "taps": [t.__dict__ for t in taps],
            "views": list(fset.views),
            "weights": fset.weights,
            "extractions": [],
        }
    )


def open_or_create_cache(
    out: Path, fset: FeatureSetSpec, ds: DatasetStore, batch_size: int
) -> zarr.Group:
    """The cache at ``out``: checked against the settings if it exists, else created empty."""
    if (out / "zarr.json").is_file():
        return _check_existing(out, fset, ds)
    if out.exists() and any(out.iterdir()):
        raise StoreError(f"{out}: exists but is not a feature cache (no zarr.json); delete it")
    if out.exists():
        out.rmdir()
    return create_store_atomically(out, lambda g: _build_empty(g, fset, ds, batch_size))


@contextlib.contextmanager
def no_tf32_for_float32(device: torch.device, compute_dtype: str) -> Iterator[None]:
    """On CUDA, float32 compute must not silently use TF32 (cuDNN allows it by default)."""
    if device.type != "cuda" or compute_dtype != "float32":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def extract_features(
    dataset: str | Path,
    out: str | Path,
    fset: FeatureSetSpec,
    *,
    checkpoint: str | Path | None = None,
    checkpoint_dir: str | Path = CHECKPOINT_DIR,
    batch_size: int = 8,
    device: str = "auto",
    seed: int | None = None,
    attention: str = "auto",
    progress: bool = True,
) -> FeatureStore:
    """Fill (or finish) the feature cache at ``out`` for every image of ``dataset``.

    The weights are the feature set's: ``official`` loads the verified checkpoint from
    ``checkpoint_dir`` (downloading it if it is not there), a path loads that file, ``random``
    draws them from the feature set's seed (``seed``, if given, must be the same). ``checkpoint``
    may name the official file's location instead; it is verified against the published SHA-256.
    Nothing is loaded or downloaded when the cache is already complete.

    ``attention``: ``auto`` uses the fused SDPA path where a check on the first image shows it
    as accurate as segment-anything's own attention (``samcache.features.attention``);
    ``sdpa`` or ``original`` force one path.
    """
    if attention not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"attention must be one of {ATTENTION_IMPLEMENTATIONS}, not {attention!r}")
    seed = _random_seed(fset, seed)
    if fset.weights != "official" and checkpoint is not None:
        resolve_checkpoint(fset, checkpoint, checkpoint_dir)  # refuse a mismatch before writing
    out = Path(out)
    ds = DatasetStore(dataset)
    with exclusive_writer(out):
        g = open_or_create_cache(out, fset, ds, batch_size)
        batch_size = int(g.attrs["batch_size"])  # a resumed cache keeps its batch composition
        ledger = ItemLedger(g, ds.n_items, int(g.attrs["items_per_shard"]))
        report_repairs(out, clear_damaged(g, ledger))
        done = ledger.done()
        batches = [
            (a, min(a + batch_size, ds.n_items))
            for a in range(0, ds.n_items, batch_size)
            if not done[a : a + batch_size].all()
        ]
        todo = sum(b - a for a, b in batches)
        log.info(
            "%s: %d of %d images already complete; computing %d images in %d batches of %d",
            out,
            ds.n_items - todo,
            ds.n_items,
            todo,
            len(batches),
            batch_size,
        )
        attention = _resumed_attention(g, attention)
        if batches:
            ds.verify_fingerprint()  # the images about to be encoded are the ones the key names
            weights = resolve_checkpoint(fset, checkpoint, checkpoint_dir)
            dev = resolve_device(device)
            _extract(ds, g, ledger, fset, batches, weights, dev, seed, attention, progress)
    return FeatureStore(out, expect_key=fset.key(), expect_dataset=ds.fingerprint)


def _random_seed(fset: FeatureSetSpec, seed: int | None) -> int:
    """The seed of random weights, as the cache key names it."""
    if not fset.weights_id.startswith("random:seed="):
        return 0  # unused: the weights come from a checkpoint
    keyed = int(fset.weights_id.split("=", 1)[1])
    if seed is not None and seed != keyed:
        raise ValueError(f"seed {seed} differs from the feature set's seed {keyed}")
    return keyed


def resolve_checkpoint(
    fset: FeatureSetSpec, checkpoint: str | Path | None, checkpoint_dir: str | Path
) -> Path | None:
    """The checkpoint file whose weights the cache key names, or None for random weights."""
    if fset.weights == "random":
        if checkpoint is not None:
            raise ValueError(f"weights: random, but a checkpoint was given ({checkpoint})")
        return None
    if fset.weights != "official":
        if checkpoint is not None and Path(checkpoint) != Path(fset.weights):
            raise ValueError(
                f"the feature set loads {fset.weights}; refusing the other checkpoint {checkpoint}"
            )
        return Path(fset.weights)
    if checkpoint is None:
        return fetch_checkpoint(fset.encoder, checkpoint_dir)
    verify(Path(checkpoint), official_checkpoint(fset.encoder))
    return Path(checkpoint)


def _resumed_attention(g: zarr.Group, requested: str) -> str:
    """A cache keeps the attention path chosen when it was started, so it never mixes two."""
    first = g.attrs.get("attention")
    if first is None and requested != "auto":
        g.attrs["attention"] = requested
    if first is None or requested == first:
        return requested
    if requested == "auto":
        return str(first)
    log.warning(
        "this cache was started with %s attention; continuing with %s as asked (the two "
        "differ only by floating-point rounding)",
        first,
        requested,
    )
    return requested


def _extract(ds, g, ledger, fset, batches, checkpoint, device, seed, attention, progress) -> None:
    spec = fset.spec
    n_todo = sum(b - a for a, b in batches)
    deepest = max((t.block_index or 0) + 1 for t in fset.taps)
    neck = any(t.name == "neck" for t in fset.taps)
    if device.type == "cpu" and spec.name in ("vit_h", "vit_l"):
        log.warning("%s", cpu_time_estimate(spec, n_todo, None if neck else deepest))
    start = time.perf_counter()
    encoder = build_encoder(spec.name, checkpoint, seed=seed).to(device)
    log.info("built %s on %s in %.1f s", spec.name, device, time.perf_counter() - start)
    with no_tf32_for_float32(device, fset.compute_dtype):
        chosen = run_pipeline(
            ds, g, ledger, fset, encoder, batches, device, attention=attention, progress=progress
        )
    runs = list(g.attrs.get("extractions", []))
    runs.append(
        {
            "images": n_todo,
            "device": str(device),
            "attention": chosen,
            "samcache": __version__,
            "torch": torch.__version__,
            "seconds": round(time.perf_counter() - start, 1),
        }
    )
    g.attrs["extractions"] = runs
