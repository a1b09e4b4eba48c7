"""The extraction loop: loading, encoding and writing overlapped in three threads.

* The **loader** thread reads a batch from the dataset store and resizes it with
  segment-anything's ``ResizeLongestSide`` (uint8, on the CPU); on CUDA it pins the batch so
  that the copy to the device is asynchronous.
* The **main** thread normalises and pads on the device, runs the encoder under
  ``torch.inference_mode`` and autocast, and pools and casts each tap to its storage dtype *on
  the device* (a float16 copy is half the bytes to move). It queues asynchronous copies into
  pinned host memory, records a CUDA event and moves on to the next batch without waiting, so
  the GPU is never idle while the host converts or compresses.
* The **writer** thread waits for a batch's event, refuses non-finite values, writes every tap
  (zarr compresses with Blosc, which releases the GIL) and only then sets the batch's flags.

Queues of two batches bound the memory in flight. An error in any thread stops the others and
is raised in the caller; nothing is flagged complete that was not written.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import zarr

from samcache.data.store import DatasetStore
from samcache.features.attention import attention_error, sdpa_is_exact_enough, set_attention
from samcache.features.preprocess import SamPreprocess
from samcache.features.specs import FeatureSetSpec
from samcache.features.store import view_array_name
from samcache.features.taps import TapRecorder
from samcache.progress import progress_bar
from samcache.views import apply_view
from samcache.zarrio import ItemLedger

log = logging.getLogger(__name__)

QUEUE_BATCHES = 2


@dataclass
class EncodedBatch:
    start: int
    stop: int
    taps: dict[str, torch.Tensor]  # host tensors (pinned on CUDA), storage dtype
    finite: torch.Tensor  # (n_taps,) bool, host
    ready: torch.cuda.Event | None  # set when the copies to the host are done
    items: np.ndarray | None = None  # the rows of a view batch (None: start..stop)
    views: dict[str, EncodedBatch] | None = None  # the training images' other views


def autocast_factory(
    device: torch.device, compute_dtype: str
) -> Callable[[], contextlib.AbstractContextManager]:
    if compute_dtype == "float32":
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=getattr(torch, compute_dtype))


def choose_attention(recorder: TapRecorder, x: torch.Tensor, autocast: Callable) -> str:
    """The fused path if it is exact enough on ``x`` (one image), else the original one."""
    original_err, fused_err = attention_error(
        lambda inp: recorder(inp)[recorder.last], recorder.encoder, x, autocast
    )
    chosen = "sdpa" if sdpa_is_exact_enough(original_err, fused_err) else "original"
    log.info(
        "attention: %s (relative error against float32 on the first image: original %.2e, "
        "sdpa %.2e)",
        chosen,
        original_err,
        fused_err,
    )
    set_attention(recorder.encoder, chosen)
    return chosen


def pool_to_grid(y: torch.Tensor, grid: int) -> torch.Tensor:
    """A (B, C, g, g) map average-pooled to grid x grid: in whole windows where ``grid``
    divides ``g``, else in torch's adaptive windows (what SLCA pools a map onto a stage with)."""
    if y.shape[-1] == grid:
        return y
    if y.shape[-1] % grid == 0:
        return F.avg_pool2d(y, y.shape[-1] // grid)
    return F.adaptive_avg_pool2d(y, grid)


def encode_batch(
    recorder: TapRecorder,
    fset: FeatureSetSpec,
    x: torch.Tensor,
    autocast: Callable,
    start: int,
    stop: int,
) -> EncodedBatch:
    """Run the encoder on ``x`` and start the copies of the stored taps to the host."""
    spec = fset.spec
    with autocast():
        outs = recorder(x)
    stored, finite = {}, []
    with torch.inference_mode():
        for t in fset.taps:
            y = pool_to_grid(outs[t.name].float(), t.stored_grid(spec))
            y = y.to(getattr(torch, t.dtype)).contiguous()
            finite.append(torch.isfinite(y).all())
            stored[t.ref] = y
        flags = torch.stack(finite)
        if x.device.type != "cuda":
            return EncodedBatch(start, stop, stored, flags, None)
        host = {
            name: torch.empty(y.shape, dtype=y.dtype, pin_memory=True).copy_(y, non_blocking=True)
            for name, y in stored.items()
        }
        host_flags = torch.empty(flags.shape, dtype=flags.dtype, pin_memory=True)
        host_flags.copy_(flags, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
    return EncodedBatch(start, stop, host, host_flags, ready)


def run_pipeline(
    ds: DatasetStore,
    g: zarr.Group,
    ledger: ItemLedger,
    fset: FeatureSetSpec,
    encoder: torch.nn.Module,
    batches: list[tuple[int, int]],
    device: torch.device,
    *,
    attention: str = "auto",
    progress: bool = True,
    busy: dict[str, float] | None = None,
) -> str:
    """Encode and store ``batches``; returns the attention path that was used.

    ``busy``, when given, receives the seconds each stage spent working (``load``, ``encode``,
    ``write``): their sum exceeds the wall time by as much as the stages overlapped. On CUDA,
    ``encode`` is the host's share (launching kernels); the writer waits for the device.
    """
    busy = {} if busy is None else busy
    for stage in ("load", "encode", "write"):
        busy.setdefault(stage, 0.0)
    recorder = TapRecorder(encoder, fset.taps)
    pre = SamPreprocess(fset.spec)
    arrays = {t.ref: g[t.array_name] for t in fset.taps}
    extra_views = [v for v in fset.views if v != "identity"]
    view_arrays = {
        v: {t.ref: g[view_array_name(t.array_name, v)] for t in fset.taps} for v in extra_views
    }
    is_train = None  # training rows, which alone get the extra views
    if extra_views:
        is_train = np.zeros(ds.n_items, dtype=bool)
        is_train[ds.indices("train")] = True
    autocast = autocast_factory(device, fset.compute_dtype)
    pin = device.type == "cuda"

    loaded: queue.Queue = queue.Queue(maxsize=QUEUE_BATCHES)
    written: queue.Queue = queue.Queue(maxsize=QUEUE_BATCHES)
    errors: list[BaseException] = []
    stop = threading.Event()

    def loader() -> None:
        try:
            for a, b in batches:
                if stop.is_set():
                    break
                t0 = time.perf_counter()
                images = np.asarray(ds.images[a:b])
                resized = torch.from_numpy(pre.resize(images))
                resized = resized.pin_memory() if pin else resized
                train = np.flatnonzero(is_train[a:b]) if is_train is not None else []
                views = {}
                for v in extra_views if len(train) else []:  # the image transformed, then SAM's
                    turned = np.stack([apply_view(images[j], v, axes=(0, 1)) for j in train])
                    x = torch.from_numpy(pre.resize(turned))
                    views[v] = (a + train, x.pin_memory() if pin else x)
                busy["load"] += time.perf_counter() - t0
                loaded.put((a, b, resized, views))
        except BaseException as err:  # surfaced in the main thread
            errors.append(err)
        finally:
            loaded.put(None)

    def write(batch: EncodedBatch) -> None:
        if batch.ready is not None:
            batch.ready.synchronize()
        bad = [n for n, ok in zip(batch.taps, batch.finite.tolist(), strict=True) if not ok]
        if bad:
            raise FloatingPointError(
                f"taps {bad} are not finite in {fset.compute_dtype} or overflow their storage "
                f"dtype on images {batch.start}..{batch.stop - 1}; use compute_dtype float32 or "
                "store them as float32"
            )
        for name, y in batch.taps.items():
            arrays[name][batch.start : batch.stop] = y.numpy()
        for v in extra_views:  # whole batches, zeros where an image is not a training image:
            vb = (batch.views or {}).get(v)  # every flagged item then has its chunk on disk
            if vb is not None:
                if vb.ready is not None:
                    vb.ready.synchronize()
                bad = [n for n, ok in zip(vb.taps, vb.finite.tolist(), strict=True) if not ok]
                if bad:
                    raise FloatingPointError(f"taps {bad} of view {v} are not finite")
            for name, arr in view_arrays[v].items():
                block = np.zeros((batch.stop - batch.start, *arr.shape[1:]), dtype=arr.dtype)
                if vb is not None:
                    block[np.asarray(vb.items) - batch.start] = vb.taps[name].numpy()
                arr[batch.start : batch.stop] = block
        ledger.mark(batch.start, batch.stop)  # only after every tap of the batch is on disk

    def writer() -> None:
        while (batch := written.get()) is not None:
            try:
                if not errors:
                    t0 = time.perf_counter()
                    write(batch)
                    busy["write"] += time.perf_counter() - t0
                    bar.update(batch.stop - batch.start)
            except BaseException as err:
                errors.append(err)

    bar = progress_bar(
        total=sum(b - a for a, b in batches),
        desc=f"{fset.spec.name} features",
        unit="img",
        enable=progress,
    )
    threads = [threading.Thread(target=f, daemon=True) for f in (loader, writer)]
    for t in threads:
        t.start()
    if attention != "auto":
        set_attention(encoder, attention)
    chosen = attention
    loader_done = False
    try:
        while (item := loaded.get()) is not None:
            a, b, resized, views = item
            t0 = time.perf_counter()
            x = pre.to_input(resized, device)
            if chosen == "auto":
                chosen = choose_attention(recorder, x[:1], autocast)
                g.attrs["attention"] = chosen  # before any batch is flagged: resumes reuse it
            encoded = encode_batch(recorder, fset, x, autocast, a, b)
            encoded.views = {}
            for v, (rows, xv) in views.items():
                vb = encode_batch(recorder, fset, pre.to_input(xv, device), autocast, a, b)
                vb.items = rows
                encoded.views[v] = vb
            busy["encode"] += time.perf_counter() - t0
            written.put(encoded)
            if errors:
                break
        else:
            loader_done = True
    finally:
        stop.set()
        while not loader_done:  # unblock the loader so that it can exit
            loader_done = loaded.get() is None
        written.put(None)
        for t in threads:
            t.join()
        bar.close()
    if errors:
        raise errors[0]
    return chosen
