"""Zarr v3 conventions shared by every store samcache writes.

* Arrays of items (images, feature maps, label maps) are chunked one item per chunk, so any item
  can be read alone; when a store holds many items the chunks are grouped into shards so that a
  dataset does not become hundreds of thousands of files.
* Work is written in *units* that cover whole shards. zarr's ``LocalStore`` writes every chunk or
  shard file to a temporary name and renames it into place, so a file is either the old one or
  the new one, never half of each.
* An item counts as present only when its flag in the ``complete`` array is set, and the flag is
  written after all of the item's data. A process killed at any moment therefore leaves items
  that are complete or that read as missing, never an item that reads as complete but is not.
* Every chunk is written, also one that holds only the fill value (zarr skips those by
  default): a missing file then always means damage, never zeros (``samcache.integrity``).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec

#: Blosc + zstd with bit-shuffle: measured in ``benchmarks/cache_io.py`` against alternatives.
DEFAULT_COMPRESSOR = BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")
COMPLETE = "complete"

# A missing chunk file must mean damage, never "all zeros" (see the module docstring).
zarr.config.set({"array.write_empty_chunks": True})

# Snakemake marks a directory output (a dataset store) with a `.snakemake_timestamp` file, which
# zarr reports on every listing of the group; it is Snakemake's, not damage: say nothing of it.
warnings.filterwarnings("ignore", message=r"Object at \.snakemake_timestamp is not recognized")


class StoreError(RuntimeError):
    """A store is missing, malformed, or was built with other settings."""


def open_group(path: str | Path, mode: str = "r") -> zarr.Group:
    path = Path(path)
    if mode == "r" and not (path / "zarr.json").is_file():
        raise StoreError(
            f"{path}: not a Zarr v3 store (no zarr.json). Build it first with its samcache rule."
        )
    try:
        return zarr.open_group(str(path), mode=mode, zarr_format=3)
    except (FileNotFoundError, ValueError, KeyError) as err:
        raise StoreError(f"{path}: cannot open as a Zarr v3 group ({err})") from err


def create_item_array(
    group: zarr.Group,
    name: str,
    *,
    n_items: int,
    item_shape: tuple[int, ...],
    dtype: str | np.dtype,
    items_per_shard: int = 1,
    compressors: object = DEFAULT_COMPRESSOR,
    overwrite: bool = False,
) -> zarr.Array:
    """An array of ``n_items`` items, one item per chunk, ``items_per_shard`` chunks per file."""
    chunks = (1, *item_shape)
    shards = (items_per_shard, *item_shape) if items_per_shard > 1 else None
    return group.create_array(
        name,
        shape=(n_items, *item_shape),
        chunks=chunks,
        shards=shards,
        dtype=dtype,
        compressors=compressors,
        fill_value=0,
        overwrite=overwrite,
    )


def remove_partial_files(path: str | Path) -> int:
    """Delete temporary files that a killed writer left behind; returns how many."""
    removed = 0
    for p in Path(path).rglob("*.partial"):
        p.unlink(missing_ok=True)
        removed += 1
    return removed


class ItemLedger:
    """Per-item completion flags of an item store, written in units of ``unit`` items."""

    def __init__(self, group: zarr.Group, n_items: int, unit: int) -> None:
        if unit < 1:
            raise ValueError("unit must be >= 1")
        self.n_items = n_items
        self.unit = unit
        if COMPLETE in group:
            self.flags = group[COMPLETE]
            if self.flags.shape != (n_items,) or self.flags.chunks != (unit,):
                raise StoreError(
                    f"{group.store}: completion flags have shape {self.flags.shape} chunks "
                    f"{self.flags.chunks}, expected ({n_items},) chunks ({unit},)"
                )
        else:
            self.flags = group.create_array(
                COMPLETE,
                shape=(n_items,),
                chunks=(unit,),
                dtype="bool",
                fill_value=False,
                compressors=None,
            )

    @staticmethod
    def read(group: zarr.Group) -> np.ndarray:
        """The completion flags of a store opened for reading (missing array: none done)."""
        if COMPLETE not in group:
            raise StoreError(f"{group.store_path}: no completion flags ('{COMPLETE}')")
        flags = group[COMPLETE]
        ledger = ItemLedger.__new__(ItemLedger)
        ledger.n_items, ledger.unit, ledger.flags = flags.shape[0], flags.chunks[0], flags
        return ledger.done()

    def units(self) -> Iterator[tuple[int, int]]:
        for start in range(0, self.n_items, self.unit):
            yield start, min(start + self.unit, self.n_items)

    def done(self) -> np.ndarray:
        """The flags; a unit whose flags cannot be read counts as not done."""
        try:
            return np.asarray(self.flags[:], dtype=bool)
        except Exception:  # a damaged flag chunk: read unit by unit, keep what decodes
            out = np.zeros(self.n_items, dtype=bool)
            for a, b in self.units():
                with contextlib.suppress(Exception):
                    out[a:b] = np.asarray(self.flags[a:b], dtype=bool)
            return out

    def missing_units(self) -> list[tuple[int, int]]:
        done = self.done()
        return [(a, b) for a, b in self.units() if not done[a:b].all()]

    def mark(self, start: int, stop: int) -> None:
        self.flags[start:stop] = True

    def clear(self, items: np.ndarray) -> None:
        """Unset the flags of ``items`` (bools, one per item)."""
        done = self.done()
        for a, b in self.units():
            if items[a:b].any():
                self.flags[a:b] = done[a:b] & ~items[a:b]

    def all_complete(self) -> bool:
        return bool(self.done().all())


def atomic_dir_path(final: Path) -> Path:
    """A sibling temporary path for building a directory that is renamed into place when done."""
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")
