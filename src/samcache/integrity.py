"""Does a store hold what it claims? Cheap checks on every open, a full one on demand.

An item store (dataset store, feature, SLIC and SAM-prior caches) keeps each array's items in
chunk files, several per shard file (``samcache.zarrio``). zarr reads a missing file as the
fill value (zeros) without complaint, so a deleted shard would read as data. Every array is
therefore written with all of its chunks, zeros included (``write_empty_chunks``), and:

* ``check_files`` (cheap, on every open): the file of every item that is flagged complete
  exists; for a shard, its index (read from the file's last bytes) passes its CRC-32C and
  locates each item's chunk inside the file. A truncated or overwritten shard fails here.
  zarr offers no public call that checks a shard's index without decoding the shard, so the
  index is read here as zarr's sharding codec writes it (offset and length per chunk, little
  endian, then a CRC-32C), and only for that layout.
* ``check_values`` (full, ``samcache verify``): every flagged item decodes, and floating-point
  items hold no NaN or infinity.

Each problem is a ``Damage`` naming the array, the file and the items, so that a writer can
clear the flags of exactly those items and recompute them, and an error can name them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from samcache.zarrio import COMPLETE, ItemLedger, StoreError

_MISSING = np.uint64(2**64 - 1)  # offset and length of a chunk absent from its shard


@dataclass(frozen=True)
class Damage:
    """Items ``first..last`` of ``array`` (stored in ``file``, relative to the store) are bad."""

    array: str
    file: str
    first: int
    last: int
    problem: str
    whole_file: bool = False  # the file itself is unreadable: every item in it is lost

    def __str__(self) -> str:
        items = (
            f"item {self.first}" if self.first == self.last else f"items {self.first}..{self.last}"
        )
        return f"'{self.array}' {items} ({self.file}): {self.problem}"


class DamagedStoreError(StoreError):
    """A store holds less than it claims; ``damages`` says where."""

    def __init__(self, store: str | Path, damages: Sequence[Damage], advice: str) -> None:
        self.store = Path(store)
        self.damages = list(damages)
        shown = "; ".join(str(d) for d in self.damages[:3])
        more = f"; and {len(self.damages) - 3} more" if len(self.damages) > 3 else ""
        super().__init__(f"{store}: damaged: {shown}{more}. {advice}")


def resume_advice(command: str) -> str:
    """What to do about an incomplete or damaged cache built by ``samcache <command>``.

    Both ways find the missing or damaged items (the workflow checks every cache it is about
    to read before it plans) and recompute only them.
    """
    return (
        f"Run snakemake again, or the `samcache {command}` command that built it: either finds "
        "these images and recomputes only them"
    )


def _array_dir(array: zarr.Array) -> Path:
    root = getattr(array.store_path.store, "root", None)
    if root is None:
        raise StoreError(f"{array.store_path}: only local stores can be checked")
    return Path(root) / array.path


def _files(array: zarr.Array) -> Iterator[tuple[int, int, str]]:
    """``(first item, stop, key)`` of each file holding items along the first axis."""
    per_file = (array.shards or array.chunks)[0]
    extra = (0,) * (array.ndim - 1)
    for k, start in enumerate(range(0, array.shape[0], per_file)):
        key = array.metadata.encode_chunk_key((k, *extra))
        yield start, min(start + per_file, array.shape[0]), key


def _runs(items: Iterable[int]) -> list[tuple[int, int]]:
    """Consecutive runs of sorted item numbers as (first, last)."""
    out: list[tuple[int, int]] = []
    for i in items:
        if out and i == out[-1][1] + 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out


def _sharding(array: zarr.Array):
    """The array's sharding codec if its index is laid out as ``_shard_problems`` reads it."""
    from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec
    from zarr.codecs.sharding import ShardingCodecIndexLocation

    codec = array.metadata.codecs[0] if array.shards else None
    if not isinstance(codec, ShardingCodec):
        return None
    layout = [type(c) for c in codec.index_codecs]
    if codec.index_location != ShardingCodecIndexLocation.end or layout != [
        BytesCodec,
        Crc32cCodec,
    ]:
        return None
    return codec


def _read_shard_index(path: Path, size: int, n_chunks: int) -> np.ndarray | None:
    """(n_chunks, 2) offsets and lengths from a shard's last bytes; None if it fails its CRC."""
    import google_crc32c

    index_bytes = 16 * n_chunks + 4
    if size < index_bytes:
        return None
    with open(path, "rb") as fh:
        fh.seek(size - index_bytes)
        tail = fh.read(index_bytes)
    body, crc = tail[:-4], tail[-4:]
    if np.uint32(google_crc32c.value(body)).tobytes() != crc:
        return None
    return np.frombuffer(body, dtype="<u8").reshape(n_chunks, 2)


def _shard_index_problem(path: Path, size: int, n_chunks: int) -> str | None:
    if size < 16 * n_chunks + 4:
        return "truncated: shorter than its index"
    if _read_shard_index(path, size, n_chunks) is None:
        return "truncated or overwritten: its index fails its CRC-32C check"
    return None


def _shard_item_problems(
    path: Path, size: int, n_chunks: int, wanted: np.ndarray
) -> list[tuple[int, str]]:
    """(chunk number, problem) for the chunks of ``wanted`` that a sound index cannot locate."""
    entries = _read_shard_index(path, size, n_chunks)
    data_end = size - (16 * n_chunks + 4)
    out = []
    for k in np.flatnonzero(wanted):
        offset, length = entries[k]
        if offset == _MISSING:
            out.append((int(k), "no data in its shard"))
        elif int(offset) + int(length) > data_end:
            out.append((int(k), "truncated: its data ends past the end of the shard"))
    return out


def check_files(array: zarr.Array, wanted: np.ndarray, name: str | None = None) -> list[Damage]:
    """Cheap: every item in ``wanted`` (bools along the first axis) has a sound file."""
    name = name or array.path
    root = _array_dir(array)
    codec = _sharding(array)
    damages = []
    for start, stop, key in _files(array):
        want = np.asarray(wanted[start:stop], dtype=bool)
        if not want.any():
            continue
        path = root / key
        rel = f"{array.path}/{key}"
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            damages.append(Damage(name, rel, start, stop - 1, "file missing", True))
            continue
        if codec is None:
            if size == 0:
                damages.append(Damage(name, rel, start, stop - 1, "empty file", True))
            continue
        per_shard = array.shards[0] // array.chunks[0]
        padded = np.zeros(per_shard, dtype=bool)
        padded[: len(want)] = want
        problem = _shard_index_problem(path, size, per_shard)
        if problem is not None:
            damages.append(Damage(name, rel, start, stop - 1, problem, True))
            continue
        for k, item_problem in _shard_item_problems(path, size, per_shard, padded):
            damages.append(Damage(name, rel, start + k, start + k, item_problem))
    return damages


def check_values(array: zarr.Array, wanted: np.ndarray, name: str | None = None) -> list[Damage]:
    """Full: every item in ``wanted`` decodes; floating-point items are finite."""
    name = name or array.path
    damages = []
    floating = np.issubdtype(array.dtype, np.floating)
    for start, stop, key in _files(array):
        want = np.asarray(wanted[start:stop], dtype=bool)
        if not want.any():
            continue
        rel = f"{array.path}/{key}"
        try:
            block = np.asarray(array[start:stop])
        except Exception as err:  # zarr and its codecs raise many kinds; each means damage
            problem = f"cannot be decoded ({type(err).__name__}: {err})"
            damages.append(Damage(name, rel, start, stop - 1, problem))
            continue
        if floating:
            bad = want & nonfinite_rows(block)
            for a, b in _runs(start + np.flatnonzero(bad)):
                damages.append(Damage(name, rel, a, b, "not finite (NaN or infinity)"))
    return damages


def item_arrays(group: zarr.Group, n_items: int) -> dict[str, zarr.Array]:
    """Every array of a store with one entry per item, by path (completion flags excluded)."""
    return {
        path: arr
        for path, arr in sorted(group.members(max_depth=None))
        if isinstance(arr, zarr.Array) and path != COMPLETE and arr.shape[:1] == (n_items,)
    }


def check_store(
    group: zarr.Group, wanted: np.ndarray, *, full: bool = False, arrays: Sequence[str] = ()
) -> list[Damage]:
    """Damages of the items ``wanted`` in every item array (or ``arrays``) of ``group``."""
    found = item_arrays(group, len(wanted))
    names = list(arrays) or list(found)
    damages = []
    for name in names:
        arr = found.get(name)
        if arr is None:
            raise StoreError(f"{group.store_path}: no array '{name}'")
        damages += check_files(arr, wanted, name)
        if full:
            known = damaged_items(damages, len(wanted))
            damages += check_values(arr, wanted & ~known, name)
    return damages


def damaged_items(damages: Iterable[Damage], n_items: int) -> np.ndarray:
    """Bools along the first axis: True for every item some damage covers."""
    out = np.zeros(n_items, dtype=bool)
    for d in damages:
        out[d.first : d.last + 1] = True
    return out


#: Elements tested for finiteness at a time: bounds the temporary mask (16 MB).
_FINITE_STEP = 1 << 24


def nonfinite_rows(block: np.ndarray) -> np.ndarray:
    """Bools along the first axis: True where an item holds NaN or infinity."""
    bad = np.zeros(len(block), dtype=bool)
    if not np.issubdtype(block.dtype, np.floating) or not len(block):
        return bad
    per = max(1, _FINITE_STEP // max(1, block[0].size))
    for a in range(0, len(block), per):
        part = block[a : a + per]
        bad[a : a + per] = ~np.isfinite(part.reshape(len(part), -1)).all(axis=1)
    return bad


def finite_or_raise(block: np.ndarray, array: zarr.Array, items: np.ndarray) -> None:
    """Refuse items read from ``array`` that hold NaN or infinity, naming them."""
    bad = nonfinite_rows(block)
    if not bad.any():
        return
    items = sorted({int(i) for i in np.asarray(items)[bad]})
    store = Path(array.store_path.store.root)
    damages = [Damage(array.path, array.path, a, b, "NaN or infinity") for a, b in _runs(items)]
    raise DamagedStoreError(
        store,
        damages,
        f"Run `samcache verify --repair {store}`, then the step that built it again (or "
        "snakemake): it recomputes only those items",
    )


def undecodable(array: zarr.Array, start: int, stop: int, err: Exception) -> DamagedStoreError:
    """The error for items ``start..stop-1`` of ``array`` that failed to decode."""
    store = Path(array.store_path.store.root)
    problem = f"cannot be decoded ({type(err).__name__}: {err})"
    return DamagedStoreError(
        store,
        [Damage(array.path, array.path, start, stop - 1, problem)],
        f"Run `samcache verify --repair {store}`, then the step that built it again (or "
        "snakemake): it recomputes only the damaged items",
    )


def require_sound(
    group: zarr.Group,
    path: str | Path,
    wanted: np.ndarray,
    advice: str,
    arrays: Sequence[str] = (),
) -> None:
    """Raise ``DamagedStoreError`` (with ``advice``) if any item in ``wanted`` is damaged."""
    damages = check_store(group, wanted, arrays=arrays)
    if damages:
        raise DamagedStoreError(path, damages, advice)


def clear_damaged(group: zarr.Group, ledger: ItemLedger) -> list[Damage]:
    """Clear the completion flags of damaged items so that a resumed writer recomputes them."""
    damages = check_store(group, ledger.done())
    clear_flags(group, ledger, damages)
    return damages


def clear_flags(group: zarr.Group, ledger: ItemLedger, damages: Sequence[Damage]) -> int:
    """Unset the flags of damaged items; an unreadable file is deleted (zarr would read it
    before rewriting part of it). Returns how many items lost their flag."""
    root = Path(group.store_path.store.root) / group.store_path.path
    for d in damages:
        if d.whole_file:
            (root / d.file).unlink(missing_ok=True)
    bad = damaged_items(damages, ledger.n_items) & ledger.done()
    if bad.any():
        ledger.clear(bad)
    return int(bad.sum())


@dataclass
class Verification:
    """What ``verify_store`` found in one store."""

    path: Path
    n_items: int
    damages: list[Damage]
    is_cache: bool = True  # a cache has completion flags; a dataset store has none
    fingerprint_error: str | None = None
    cleared: int = 0  # items whose completion flags --repair cleared

    @property
    def sound(self) -> bool:
        return not self.damages and self.fingerprint_error is None


def verify_store(path: str | Path, *, full: bool = True, repair: bool = False) -> Verification:
    """Check every item a store claims to hold (decoding it with ``full``).

    A cache (it has completion flags): with ``repair``, the flags of damaged items are cleared,
    so that the step that built it recomputes only them. A dataset store has no flags, so its
    every item is checked and, with ``full``, its content fingerprint is recomputed; a damaged
    dataset store can only be rebuilt.
    """
    from samcache.zarrio import open_group

    path = Path(path)
    group = open_group(path, "r+" if repair else "r")
    if COMPLETE in group:
        flags = group[COMPLETE]
        ledger = ItemLedger(group, flags.shape[0], flags.chunks[0])
        report = Verification(path, ledger.n_items, check_store(group, ledger.done(), full=full))
        if repair and report.damages:
            report.cleared = clear_flags(group, ledger, report.damages)
        return report
    if "images" not in group:
        raise StoreError(f"{path}: neither a dataset store nor a samcache cache")
    n = group["images"].shape[0]
    report = Verification(path, n, check_store(group, np.ones(n, dtype=bool), full=full), False)
    if full and not report.damages:
        from samcache.data.store import DatasetStore

        try:
            DatasetStore(path).verify_fingerprint()
        except StoreError as err:
            report.fingerprint_error = str(err)
    return report


def manifest_problem(manifest: str | Path) -> str | None:
    """Why the cache a manifest stands for no longer holds what the manifest claims, or None.

    Cheap (``check_files``): the workflow asks it of every cache it is about to read.
    """
    import json

    from samcache.zarrio import open_group

    manifest = Path(manifest)
    try:
        store = Path(json.loads(manifest.read_text())["path"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{manifest} is unreadable ({err})"
    if not (store / "zarr.json").is_file():
        return f"{store} is missing"
    try:
        group = open_group(store, "r")
        done = ItemLedger.read(group)
        if not done.all():
            return f"{store}: {int((~done).sum())} of {len(done)} items are not flagged complete"
        damages = check_store(group, done)
    except StoreError as err:
        return str(err)
    if damages:
        more = f" and {len(damages) - 1} more" if len(damages) > 1 else ""
        return f"{store}: damaged: {damages[0]}{more}"
    return None
