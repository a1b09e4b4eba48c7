"""Feature extraction into a resumable, crash-safe Zarr feature cache.

Layout of ``features.zarr``::

    <tap array>   (N, C, g, g) float16 by default, one image per chunk, shards of whole batches
    complete      (N,) bool, set for a batch only after all of its tap arrays are written
    attrs: cache_key, key_fields, dataset_fingerprint, batch_size, items_per_shard, taps

Work is done in fixed batches ``[k*B, (k+1)*B)``. A restarted extraction recomputes exactly the
batches that have an incomplete image, with the same batch composition as the first attempt, so
the resumed store equals an uninterrupted one value for value. Reading, the forward pass and
writing overlap: a loader thread resizes the next batch while the device computes, and a writer
thread compresses and stores the previous batch.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import zarr

from samcache.data.store import DatasetStore
from samcache.device import resolve_device
from samcache.features.encoders import build_encoder
from samcache.features.preprocess import SamPreprocess
from samcache.features.specs import FeatureSetSpec
from samcache.features.store import FeatureStore, TapInfo
from samcache.features.taps import TapRecorder
from samcache.progress import progress_bar
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


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Refuse a second writer on the same cache instead of letting two interleave."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(f"{path}: another process is writing this cache") from None
        yield


def _open_or_create(
    out: Path, fset: FeatureSetSpec, ds: DatasetStore, batch_size: int
) -> zarr.Group:
    key = fset.key()
    if (out / "zarr.json").is_file():
        g = open_group(out, "r+")
        attrs = dict(g.attrs)
        if attrs.get("cache_key") != key:
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
    spec = fset.spec
    g = open_group(out, "w")
    taps = []
    item_bytes = 0
    for t in fset.taps:
        grid = t.stored_grid(spec)
        c = spec.tap_channels(t.name)
        taps.append(TapInfo(t.name, t.array_name, c, grid, t.dtype))
        item_bytes = max(item_bytes, c * grid * grid * np.dtype(t.dtype).itemsize)
    per_shard = _choose_items_per_shard(batch_size, item_bytes)
    for t in taps:
        create_item_array(
            g,
            t.array,
            n_items=ds.n_items,
            item_shape=(t.channels, t.grid, t.grid),
            dtype=t.dtype,
            items_per_shard=per_shard,
        )
    ItemLedger(g, ds.n_items, per_shard)
    g.attrs.update(
        {
            "cache_key": key,
            "key_fields": fset.key_fields(),
            "dataset_fingerprint": ds.fingerprint,
            "dataset_path": str(ds.path),
            "n_items": ds.n_items,
            "batch_size": batch_size,
            "items_per_shard": per_shard,
            "taps": [t.__dict__ for t in taps],
            "weights": fset.weights,
        }
    )
    return g


def extract_features(
    dataset: str | Path,
    out: str | Path,
    fset: FeatureSetSpec,
    *,
    checkpoint: str | Path | None = None,
    batch_size: int = 8,
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
) -> FeatureStore:
    """Fill (or finish) the feature cache at ``out`` for every image of ``dataset``."""
    out = Path(out)
    ds = DatasetStore(dataset)
    with _exclusive(out):
        g = _open_or_create(out, fset, ds, batch_size)
        batch_size = int(g.attrs["batch_size"])  # a resumed cache keeps its batch composition
        ledger = ItemLedger(g, ds.n_items, int(g.attrs["items_per_shard"]))
        done = ledger.done()
        batches = [
            (a, min(a + batch_size, ds.n_items))
            for a in range(0, ds.n_items, batch_size)
            if not done[a : a + batch_size].all()
        ]
        if batches:
            _run(
                ds,
                g,
                ledger,
                fset,
                batches,
                checkpoint,
                batch_size,
                resolve_device(device),
                seed,
                progress,
            )
        g.attrs["complete"] = True
    return FeatureStore(out, expect_key=fset.key(), expect_dataset=ds.fingerprint)


def _run(ds, g, ledger, fset, batches, checkpoint, batch_size, device, seed, progress) -> None:
    spec = fset.spec
    if device.type == "cpu" and spec.name in ("vit_h", "vit_l"):
        log.warning(
            "%s on a CPU: expect roughly %s s per image; a CUDA GPU is 100x faster.",
            spec.name,
            {"vit_h": 30, "vit_l": 15}[spec.name],
        )
    encoder = build_encoder(spec.name, checkpoint, seed=seed).to(device)
    recorder = TapRecorder(encoder, fset.taps)
    pre = SamPreprocess(spec)
    arrays = {t.name: g[t.array_name] for t in fset.taps}
    autocast = (
        torch.autocast(device.type, dtype=getattr(torch, fset.compute_dtype))
        if fset.compute_dtype != "float32"
        else contextlib.nullcontext()
    )

    loaded: queue.Queue = queue.Queue(maxsize=2)
    written: queue.Queue = queue.Queue(maxsize=2)
    errors: list[BaseException] = []
    stop = threading.Event()

    def loader() -> None:
        try:
            for a, b in batches:
                if stop.is_set():
                    break
                loaded.put((a, b, pre.resize(np.asarray(ds.images[a:b]))))
        except BaseException as err:  # surfaced in the main thread
            errors.append(err)
        finally:
            loaded.put(None)

    def writer() -> None:
        while (item := written.get()) is not None:
            a, b, feats = item
            try:
                if not errors:
                    for name, arr in feats.items():
                        arrays[name][a:b] = arr
                    ledger.mark(a, b)  # only after every tap of the batch is on disk
            except BaseException as err:
                errors.append(err)

    threads = [
        threading.Thread(target=loader, daemon=True),
        threading.Thread(target=writer, daemon=True),
    ]
    for t in threads:
        t.start()
    total = sum(b - a for a, b in batches)
    bar = progress_bar(total=total, desc=f"{spec.name} features", unit="img", enable=progress)
    start = time.perf_counter()
    loader_done = False
    try:
        while (item := loaded.get()) is not None:
            a, b, resized = item
            with autocast:
                outs = recorder(pre.to_input(resized, device))
            feats = {}
            for t in fset.taps:
                x = outs[t.name].float()
                k = x.shape[-1] // t.stored_grid(spec)
                if k > 1:
                    x = F.avg_pool2d(x, k)
                x = x.to(getattr(torch, t.dtype)).cpu().numpy()
                if not np.isfinite(x).all():
                    raise FloatingPointError(
                        f"tap '{t.name}' overflows {t.dtype} on images {a}..{b - 1}; store it as float32"
                    )
                feats[t.name] = x
            written.put((a, b, feats))
            bar.update(b - a)
            if errors:
                break
        else:
            loader_done = True
    finally:
        stop.set()
        while not loader_done:  # unblock the loader so it can exit
            loader_done = loaded.get() is None
        written.put(None)
        for t in threads:
            t.join()
        bar.close()
    if errors:
        raise errors[0]
    log.info("extracted %d images in %.1f s", total, time.perf_counter() - start)
