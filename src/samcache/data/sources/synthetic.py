"""The embedded demo's source: synthetic dermoscopy-like images, no downloads."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from samcache.data.sources import Source, register_source
from samcache.data.store import DatasetStore
from samcache.data.synthetic import write_synthetic_store


def _build(
    name: str, spec: Mapping[str, Any], raw_dir: Path, out: Path, *, threads: int = 1
) -> DatasetStore:
    return write_synthetic_store(
        out,
        name=name,
        n_images=spec.get("n_images", 600),
        image_size=spec.get("image_size", 128),
        seed=spec.get("seed", 0),
        split_fractions=tuple(spec.get("split_fractions", (0.6, 0.2, 0.2))),
    )


register_source(
    Source(
        "synthetic",
        files=lambda spec: [],
        build=_build,
        description="synthetic dermoscopy-like demo images",
    )
)
