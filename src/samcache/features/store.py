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
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from samcache.zarrio import StoreError, atomic_dir_path, open_group


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
    build(open_group(tmp, "w"))
    tmp.rename(path)
    return open_group(path, "r+")


@dataclass(frozen=True)
class TapInfo:
    name: str
    array: str
    channels: int
    grid: int
    dtype: str


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
        if not allow_incomplete and not bool(np.asarray(self.group["complete"][:]).all()):
            raise StoreError(
                f"{self.path}: extraction is incomplete. Re-run `samcache features` (or the Snakemake "
                "rule) to resume it."
            )

    @property
    def key(self) -> str:
        return str(self.attrs["cache_key"])

    @property
    def taps(self) -> dict[str, TapInfo]:
        return {t["name"]: TapInfo(**t) for t in self.attrs["taps"]}

    def array(self, tap: str) -> zarr.Array:
        taps = self.taps
        if tap not in taps:
            raise StoreError(f"{self.path}: no tap '{tap}'; the cache holds {sorted(taps)}")
        return self.group[taps[tap].array]

    def read(self, tap: str, indices: np.ndarray) -> np.ndarray:
        """Rows ``indices`` of a tap, in the given order."""
        indices = np.asarray(indices)
        order = np.argsort(indices, kind="stable")
        out = np.empty((len(indices), *self.array(tap).shape[1:]), dtype=self.array(tap).dtype)
        out[order] = self.array(tap).get_orthogonal_selection((indices[order],))
        return out
