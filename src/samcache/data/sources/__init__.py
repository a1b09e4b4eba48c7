"""Dataset sources: each turns a config entry (plus its downloads) into a dataset store.

A source registers a ``Source`` with

* ``files(spec)``: the remote files it needs (URL, filename, checksum), which the ``download``
  rule fetches into ``data/raw/<source>/`` (or finds there, placed by hand);
* ``build(name, spec, raw_dir, out)``: the conversion into the dataset-store contract.

The synthetic demo needs no files.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from samcache.data.store import DatasetStore
from samcache.download import RemoteFile


@dataclass(frozen=True)
class Source:
    name: str
    files: Callable[[Mapping[str, Any]], list[RemoteFile]]
    build: Callable[[str, Mapping[str, Any], Path, Path], DatasetStore]
    description: str = ""


SOURCES: dict[str, Source] = {}


def register_source(source: Source) -> Source:
    if source.name in SOURCES:
        raise ValueError(f"source '{source.name}' is registered twice")
    SOURCES[source.name] = source
    return source


def get_source(name: str) -> Source:
    _load_builtin()
    try:
        return SOURCES[name]
    except KeyError:
        raise KeyError(f"unknown dataset source '{name}'; known: {sorted(SOURCES)}") from None


def _load_builtin() -> None:
    from samcache.data.sources import synthetic  # noqa: F401
