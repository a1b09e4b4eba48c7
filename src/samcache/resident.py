"""The inputs a training process holds once and shares between all of its runs.

A run reads prepared arrays (tapped maps as cached, images and masks at the head's input size,
spatially pooled taps) for the items it touches. ``ResidentCache`` keeps each such array, keyed
by what determines its contents (store, cache key, array, input size), as one block of rows in
host memory, or in GPU memory when the process trains on a GPU and the block fits there. A
later run of the same process that needs the same array reads the rows it wants from the block:
each item is read from Zarr once per process, however many runs use it.

A block that would take the cache over its memory budget first evicts the least recently used
blocks that the current run does not hold; if it still does not fit, ``get`` returns ``None``
and the run streams that array from Zarr batch by batch (``samcache.inputs`` reads the next
batch in a background thread while the current one trains). Either way the values are the
same: an item's prepared rows do not depend on which other items were read with it.

``ReadStats`` counts what was read from the stores, for logs and benchmarks.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import numpy as np
import torch

log = logging.getLogger(__name__)

GIB = 2**30


@dataclass
class ReadStats:
    """Rows and bytes of prepared arrays read from the stores, by array kind."""

    rows: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, kind: str, arr: np.ndarray) -> None:
        with self._lock:
            self.rows[kind] = self.rows.get(kind, 0) + int(arr.shape[0])
            self.bytes[kind] = self.bytes.get(kind, 0) + int(arr.nbytes)

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())


class Resident:
    """One resident array: rows of prepared items, and where each item's row is.

    Host blocks are numpy arrays (gathering rows by numpy indexing is many times faster than
    ``index_select`` on CPU float16 tensors); GPU blocks are CUDA tensors.
    """

    def __init__(self, n_items: int, data: np.ndarray | torch.Tensor, items: np.ndarray) -> None:
        self.data = data
        self.row = np.full(n_items, -1, dtype=np.int64)
        self.row[items] = np.arange(len(items))
        self.users = 0  # runs holding this block; a held block is never evicted

    @property
    def on_gpu(self) -> bool:
        return isinstance(self.data, torch.Tensor) and self.data.device.type == "cuda"

    @property
    def nbytes(self) -> int:
        if isinstance(self.data, np.ndarray):
            return int(self.data.nbytes)
        return self.data.numel() * self.data.element_size()

    def host_rows(self) -> np.ndarray:
        return self.data if isinstance(self.data, np.ndarray) else self.data.cpu().numpy()

    def missing(self, items: np.ndarray) -> np.ndarray:
        items = np.unique(np.asarray(items, dtype=np.int64))
        return items[self.row[items] < 0]

    def take(self, items: np.ndarray) -> torch.Tensor:
        """The rows of ``items``, in that order (on the block's device)."""
        rows = self.row[np.asarray(items, dtype=np.int64)]
        if (rows < 0).any():
            raise KeyError("items not resident")  # a bug, never data: callers extend first
        if isinstance(self.data, np.ndarray):
            return torch.from_numpy(self.data[rows])
        return self.data.index_select(0, torch.from_numpy(rows).to(self.data.device))


class ResidentCache:
    """Prepared input arrays of one process, within a host (and optionally a GPU) budget.

    ``memory_gb`` bounds host memory; ``device`` with ``device_memory_gb`` lets blocks live in
    GPU memory instead (a process that trains on CUDA then gathers batches on the GPU). A block
    goes to the GPU when it fits that budget, else it stays in host memory when it fits there.
    """

    def __init__(
        self,
        memory_gb: float = 8.0,
        *,
        device: torch.device | str | None = None,
        device_memory_gb: float = 0.0,
    ) -> None:
        self.budget = int(memory_gb * GIB)
        self.device = torch.device(device) if device is not None else None
        on_gpu = self.device is not None and self.device.type == "cuda"
        self.device_budget = int(device_memory_gb * GIB) if on_gpu else 0
        self.blocks: OrderedDict[Hashable, Resident] = OrderedDict()
        self.stats = ReadStats()

    # --- accounting -------------------------------------------------------------------------

    def _held(self, on_device: bool, besides: Hashable) -> int:
        return sum(
            b.nbytes for k, b in self.blocks.items() if k != besides and b.on_gpu == on_device
        )

    def _make_room(self, nbytes: int, on_device: bool, replacing: Hashable) -> bool:
        """Evict unheld blocks, least recently used first, until ``nbytes`` more fit."""
        budget = self.device_budget if on_device else self.budget
        if nbytes > budget:
            return False
        for key in list(self.blocks):
            if self._held(on_device, replacing) + nbytes <= budget:
                break
            block = self.blocks[key]
            if key != replacing and block.users == 0 and block.on_gpu == on_device:
                log.info("resident inputs: evicting %s (%.2f GiB)", key[0], block.nbytes / GIB)
                del self.blocks[key]
        return self._held(on_device, replacing) + nbytes <= budget

    def _place(self, nbytes: int, key: Hashable) -> torch.device | None:
        if self.device_budget and self._make_room(nbytes, True, key):
            return self.device
        if self._make_room(nbytes, False, key):
            return torch.device("cpu")
        return None

    @property
    def held_bytes(self) -> int:
        return sum(b.nbytes for b in self.blocks.values())

    # --- access -----------------------------------------------------------------------------

    def get(
        self,
        key: Hashable,
        n_items: int,
        items: np.ndarray,
        load: Callable[[np.ndarray], np.ndarray],
        row_bytes: int,
    ) -> Resident | None:
        """The resident block ``key`` holding at least ``items``, or None to stream them.

        ``key[0]`` names the kind of array (for logs and ``stats``). ``load(items)`` returns the
        prepared rows of sorted, distinct ``items`` as a numpy array; ``row_bytes`` is the size
        of one prepared row, to check the budget before anything is read. A block that lacks
        some of ``items`` is extended by reading only those. The caller holds the block until
        ``release``.
        """
        items = np.unique(np.asarray(items, dtype=np.int64))
        block = self.blocks.get(key)
        missing = items if block is None else block.missing(items)
        if block is not None and not len(missing):
            self.blocks.move_to_end(key)
            block.users += 1
            return block
        old = np.empty(0, np.int64) if block is None else _items_by_row(block)
        place = self._place((len(old) + len(missing)) * row_bytes, key)
        if place is None:
            return None
        rows = np.ascontiguousarray(load(missing))
        self.stats.add(str(key[0]), rows)
        if block is not None:  # extended: the old rows first, then the new ones
            rows = np.concatenate([block.host_rows(), rows])
        data = torch.from_numpy(rows).to(place) if place.type == "cuda" else rows
        fresh = Resident(n_items, data, np.concatenate([old, missing]))
        fresh.users = (block.users if block is not None else 0) + 1
        self.blocks[key] = fresh
        self.blocks.move_to_end(key)
        return fresh

    def release(self, block: Resident | None) -> None:
        if block is not None:
            block.users = max(0, block.users - 1)


def _items_by_row(block: Resident) -> np.ndarray:
    """A block's items in the order of its rows."""
    items = np.flatnonzero(block.row >= 0)
    return items[np.argsort(block.row[items], kind="stable")]
