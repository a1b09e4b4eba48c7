"""Feature caches on disk: a checked read-only view, and the two rules every writer follows.

* ``exclusive_writer``: one writer per cache at a time (a lock file beside the store), so two
  jobs pointed at the same cache fail clearly instead of interleaving.
* ``create_store_atomically``: an empty cache (arrays, flags, attributes) is built in a hidden
  sibling directory and renamed into place, so a process killed while creating it leaves either
  nothing or a complete, empty cache; never a directory that opens without its cache key.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from samcache.integrity import (
    Damage,
    finite_or_raise,
    require_sound,
    resume_advice,
    undecodable,
)
from samcache.zarrio import ItemLedger, StoreError, atomic_dir_path, open_group

log = logging.getLogger(__name__)

RESUME_ADVICE = resume_advice("features")


@contextlib.contextmanager
def exclusive_writer(path: Path) -> Iterator[None]:
    """Hold ``<path>.lock`` for the duration; a second writer gets a clear ``StoreError``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(f"{path}: another process is writing this cache") from None
        yield  # the kernel releases the lock when the process dies, however it dies


def create_store_atomically(path: Path, build: Callable[[zarr.Group], None]) -> zarr.Group:
    """Run ``build`` on a new group in a temporary sibling, then rename it to ``path``.

    Call it while holding ``exclusive_writer(path)``: temporary directories left by killed
    writers are then safe to delete.
    """
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = atomic_dir_path(path)
    try:
        build(open_group(tmp, "w"))
        tmp.rename(path)
    except BaseException:  # a full disk, an interrupt: leave nothing half-built behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return open_group(path, "r+")


def view_array_name(array: str, view: str) -> str:
    """The array of a tap under a view: the tap's own array for the identity."""
    return array if view == "identity" else f"{array}__{view}"


def report_repairs(path: Path, damages: list[Damage]) -> None:
    """Log the damaged items whose flags a resuming writer cleared (it recomputes them)."""
    if damages:
        shown = "; ".join(str(d) for d in damages[:5])
        more = f"; and {len(damages) - 5} more" if len(damages) > 5 else ""
        log.warning("%s: damaged, recomputing: %s%s", path, shown, more)


@dataclass(frozen=True)
class TapInfo:
    name: str
    array: str
    channels: int
    grid: int
    dtype: str
    ref: str = ""  # "<name>@<grid>" for a pooled copy, the name for the native map


class FeatureStore:
    """A read-only view of a complete feature cache, checked against the expected key."""

    def __init__(
        self,
        path: str | Path,
        *,
        expect_key: str | None = None,
        expect_dataset: str | None = None,
        allow_incomplete: bool = False,
    ) -> None:
        self.path = Path(path)
        self.group = open_group(self.path, "r")
        self.attrs = dict(self.group.attrs)
        if "cache_key" not in self.attrs:
            raise StoreError(f"{self.path}: not a samcache feature cache (no cache_key attribute)")
        if expect_key is not None and self.attrs["cache_key"] != expect_key:
            raise StoreError(
                f"{self.path}: built with cache key {self.attrs['cache_key']}, expected {expect_key}. "
                "The settings that produced it differ from the current ones; point to the right cache "
                "or rebuild it."
            )
        if expect_dataset is not None and self.attrs["dataset_fingerprint"] != expect_dataset:
            raise StoreError(
                f"{self.path}: built from dataset fingerprint {self.attrs['dataset_fingerprint']}, "
                f"but the dataset store now has {expect_dataset}. The dataset changed; rebuild the cache."
            )
        done = ItemLedger.read(self.group)
        if not allow_incomplete and not done.all():
            raise StoreError(
                f"{self.path}: extraction is incomplete ({int((~done).sum())} of {len(done)} "
                f"images missing). {RESUME_ADVICE}"
            )
        arrays = [view_array_name(t.array, v) for t in self.taps.values() for v in self.views]
        require_sound(self.group, self.path, done, RESUME_ADVICE, arrays=arrays)

    @property
    def key(self) -> str:
        return str(self.attrs["cache_key"])

    @property
    def taps(self) -> dict[str, TapInfo]:
        """The stored taps by reference (``neck``, ``block:16@28``), in extraction order."""
        out = {}
        for t in self.attrs["taps"]:
            info = TapInfo(**{"ref": t["name"], **t})
            out[info.ref] = info
        return out

    @property
    def views(self) -> tuple[str, ...]:
        """``identity`` and the views cached for training images (``samcache.views``)."""
        return tuple(self.attrs.get("views", ["identity"]))

    def array(self, tap: str, view: str = "identity") -> zarr.Array:
        """The array of tap ``tap`` (a reference, or a name stored at one grid only) under
        ``view``."""
        taps = self.taps
        same_name = [t for t in taps.values() if t.name == tap]
        if tap in taps:
            info = taps[tap]
        elif len(same_name) == 1:
            info = same_name[0]
        else:
            raise StoreError(
                f"{self.path}: no tap '{tap}'; the cache holds {sorted(taps)}"
                + (" (name the grid: '<tap>@<grid>')" if same_name else "")
            )
        if view not in self.views:
            raise StoreError(f"{self.path}: no view '{view}'; the cache holds {list(self.views)}")
        return self.group[view_array_name(info.array, view)]

    def read(self, tap: str, indices: np.ndarray) -> np.ndarray:
        """Rows ``indices`` of a tap, in the given order."""
        return read_items(self.array(tap), indices)


#: Threads that read (and decompress) runs of items concurrently.
READ_THREADS = 4
#: Runs of items closer than this many bytes are read as one slice: for small items a few
#: unneeded ones cost less than another read call.
MERGE_GAP_BYTES = 1 << 20


def read_items(array: zarr.Array, indices: np.ndarray) -> np.ndarray:
    """``array[indices]`` along the first axis, in the given order, fast.

    zarr's (and h5py's) integer-array selection gathers element-wise: measured 30x slower than
    reading the same items by slices (benchmarks/cache_io.py). Indices are read here as runs of
    consecutive items (small items: runs with gaps under ``MERGE_GAP_BYTES``), each run one
    slice, runs in parallel threads (Blosc decompression releases the GIL), then put back in
    the requested order; repeated indices are read once.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= array.shape[0]):
        raise IndexError(f"item indices must lie in 0..{array.shape[0] - 1}")
    unique, inverse = np.unique(indices, return_inverse=True)
    item_bytes = max(1, int(np.prod(array.shape[1:])) * array.dtype.itemsize)
    max_gap = MERGE_GAP_BYTES // item_bytes  # 0 for items over 1 MiB: exact runs only
    breaks = np.flatnonzero(np.diff(unique) > max_gap + 1) + 1
    groups = [g for g in np.split(unique, breaks) if g.size]
    runs = [(int(g[0]), int(g[-1]) + 1) for g in groups]
    out = np.empty((len(unique), *array.shape[1:]), dtype=array.dtype)
    starts = np.cumsum([0] + [len(g) for g in groups])

    def fill(k: int) -> None:
        a, b = runs[k]
        try:
            block = array[a:b]
        except Exception as err:  # zarr and its codecs raise many kinds; each means damage
            raise undecodable(array, a, b, err) from None
        rows = out[starts[k] : starts[k + 1]]
        rows[...] = block if len(block) == len(groups[k]) else block[groups[k] - a]
        finite_or_raise(rows, array, groups[k])  # a damaged cache is an error, never data

    if len(runs) > 1:
        with ThreadPoolExecutor(min(READ_THREADS, len(runs))) as pool:
            list(pool.map(fill, range(len(runs))))
    elif runs:
        fill(0)
    if len(unique) == len(indices) and (np.diff(indices) > 0).all():
        return out  # already in the requested order
    return out[inverse.reshape(-1)]
