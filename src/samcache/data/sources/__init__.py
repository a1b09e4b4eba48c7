"""Dataset sources: each turns a config entry (plus its downloads) into a dataset store.

A source registers a ``Source`` with

* ``files(spec)``: the remote files it needs (URL, filename, checksum where one is published),
  which the ``download`` rule fetches into ``data/raw/<source>/`` (or finds there, placed by
  hand); ``remote_files(spec)`` adds the dataset's ``mirror`` and pinned ``checksums``;
* ``build(name, spec, raw_dir, out, threads=...)``: the conversion into the dataset-store
  contract, reading ``raw_dir/<source>/``.

Built in: ``synthetic`` (the demo, no files), ``retinamnist`` and ``breastmnist``
(``samcache.data.sources.medmnist``), ``isic2016``, ``isic2017`` and ``isic2018``
(``samcache.data.sources.isic``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from samcache.data.store import DatasetStore
from samcache.download import RemoteFile


@dataclass(frozen=True)
class Source:
    name: str
    files: Callable[[Mapping[str, Any]], list[RemoteFile]]
    build: Callable[..., DatasetStore]  # (name, spec, raw_dir, out, *, threads=1)
    description: str = ""
    folder: str | None = None  # under the raw-data root; default: the source's name

    @property
    def raw_folder(self) -> str:
        return self.folder or self.name


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


def remote_files(spec: Mapping[str, Any]) -> list[RemoteFile]:
    """The files a dataset's config entry needs, with its ``mirror`` and ``checksums`` applied."""
    from samcache.data.sources.raw import with_settings

    return with_settings(get_source(spec["source"]).files(spec), spec)


def raw_paths(spec: Mapping[str, Any], raw_root: str = "data/raw") -> list[str]:
    """Where those files live: ``<raw_root>/<source>/<filename>``."""
    folder = get_source(spec["source"]).raw_folder
    return [f"{raw_root}/{folder}/{f.filename}" for f in remote_files(spec)]


def _load_builtin() -> None:
    from samcache.data.sources import isic, medmnist, synthetic  # noqa: F401
