"""What every downloaded source shares: its files' settings, verification and safe extraction.

A dataset's config entry may carry, besides its source's own keys:

* ``mirror``: a base URL that serves the same files under their file names (an institutional
  mirror, or a local server); the checksums stay the same;
* ``checksums``: ``{file name: sha256}`` pinned by the user. A pin takes precedence over a
  published checksum (a source that re-publishes a file) and is the way to give a file with no
  published checksum one that every machine checks, including on its first download;
* ``first_download``: ``record`` (default) or ``refuse`` — what happens to a file that has
  neither a published nor a pinned checksum (see ``samcache.download``).

The conversion verifies every raw file again before reading it, so a file placed by hand (which
Snakemake then never downloads) is checked too, and records each file's URL, checksum and the
checksum's origin in the store's attributes.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from samcache.archives import extract_archive
from samcache.data.fractions import fraction_subsample
from samcache.download import (
    DownloadError,
    RemoteFile,
    fetch,
    lock_path,
    with_recorded_checksum,
)
from samcache.progress import progress_bar

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")
SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


def with_settings(files: Sequence[RemoteFile], spec: Mapping[str, Any]) -> list[RemoteFile]:
    """Apply the dataset's ``mirror`` and ``checksums`` settings to its source's files."""
    mirror = spec.get("mirror")
    pins = dict(spec.get("checksums") or {})
    names = {f.filename for f in files}
    for name, value in pins.items():
        if name not in names:
            raise ValueError(
                f"config key checksums.{name}: not a file of source '{spec.get('source')}'; "
                f"its files are {sorted(names)}"
            )
        if not SHA256.match(str(value)):
            raise ValueError(f"config key checksums.{name}: {value!r} is not a SHA-256 (64 hex)")
    out = []
    for f in files:
        if mirror:
            f = replace(f, url=f"{str(mirror).rstrip('/')}/{f.filename}")
        if f.filename in pins:
            pinned = str(pins[f.filename]).lower()
            if f.sha256 and f.sha256 != pinned:
                log.warning(
                    "%s: pinned sha256 %s replaces the published %s", f.filename, pinned, f.sha256
                )
            f = replace(f, sha256=pinned, md5=None, size=None, origin="pinned")
        out.append(f)
    return out


@contextmanager
def obtained(
    files: Sequence[RemoteFile], folder: Path, spec: Mapping[str, Any], *, progress: bool = True
) -> Iterator[tuple[dict[str, Path], list[dict[str, object]]]]:
    """``obtain`` for the duration of a conversion. A checksum recorded at this first use is
    removed again if the conversion fails: the file may be the wrong one, and a lock on the
    wrong file's checksum would refuse the right one placed there next."""
    fresh = [f.filename for f in files if not lock_path(folder, f.filename).exists()]
    try:
        yield obtain(files, folder, spec, progress=progress)
    except BaseException:
        for name in fresh:
            lock = lock_path(folder, name)
            if lock.exists():
                lock.unlink()
                log.warning("%s: the checksum recorded at its first use is removed again", lock)
        raise


def obtain(
    files: Sequence[RemoteFile], folder: Path, spec: Mapping[str, Any], *, progress: bool = True
) -> tuple[dict[str, Path], list[dict[str, object]]]:
    """Verify (downloading where missing) every file; return their paths and provenance."""
    policy = spec.get("first_download", "record")
    unknown = [f.filename for f in files if with_recorded_checksum(f, folder).origin == "none"]
    if policy == "refuse" and unknown:  # before any download, not after the first few
        raise DownloadError(
            f"no checksum is published or pinned for {unknown} and first_download is 'refuse': "
            "pin their SHA-256 under the dataset's config key 'checksums' "
            "(or allow first_download: record)"
        )
    paths, provenance = {}, []
    for f in files:
        paths[f.filename] = fetch(f, folder, progress=progress, first_download=policy)
        provenance.append(with_recorded_checksum(f, folder).describe())
    return paths, provenance


@contextmanager
def extracted(archives: Mapping[str, Path], workdir: Path) -> Iterator[dict[str, Path]]:
    """Extract each archive (safely) into its own folder of a scratch directory, removed after."""
    workdir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".extract-", dir=workdir))
    try:
        roots = {}
        for name, path in archives.items():
            roots[name] = scratch / Path(name).stem
            log.info("extracting %s", path)
            extract_archive(path, roots[name])
        yield roots
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def find_members(root: Path, pattern: str, archive: str) -> dict[str, Path]:
    """``{id: path}`` of the files under ``root`` whose name matches ``pattern`` (group 1 = id)."""
    rx = re.compile(pattern, re.IGNORECASE)
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        m = rx.fullmatch(path.name)
        if m is None or not path.is_file():
            continue
        if m.group(1) in found:
            raise ValueError(
                f"{archive}: '{m.group(1)}' appears twice ({found[m.group(1)]}, {path})"
            )
        found[m.group(1)] = path
    return found


def parallel_map(fn: Callable[[T], R], items: Sequence[T], threads: int, desc: str) -> list[R]:
    """``[fn(x) for x in items]`` in order, on ``threads`` threads (image decoding frees the GIL)."""
    bar = progress_bar(total=len(items), desc=desc)
    with bar, ThreadPoolExecutor(max(1, threads)) as pool:
        out = []
        for result in pool.map(fn, items):
            out.append(result)
            bar.update(1)
    return out


def carve_validation(
    train_idx: np.ndarray, labels: np.ndarray, fraction: float, seed: int
) -> np.ndarray:
    """Indices of a stratified, seeded validation subset of a training split."""
    if not 0 < fraction < 1:
        raise ValueError(f"config key val_fraction: {fraction} is not in (0, 1)")
    return fraction_subsample(train_idx, labels, 100.0 * fraction, seed)


def require(found: Mapping[str, T], ids: Iterable[str], what: str, archive: str) -> list[T]:
    """``found[i]`` for every id, or an error naming the first missing one and where to look."""
    out = []
    for i in ids:
        if i not in found:
            raise ValueError(f"{archive}: no {what} for {i}; is this the right file?")
        out.append(found[i])
    return out
