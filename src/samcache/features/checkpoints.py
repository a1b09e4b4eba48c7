"""Official SAM checkpoints: downloaded once, verified, or placed by hand in ``checkpoints/``.

``fetch_checkpoint("vit_h")`` returns ``checkpoints/sam_vit_h_4b8939.pth`` once its SHA-256
matches the published one: a file already there (placed by hand on an offline machine, or
downloaded before) is verified and used; otherwise it is downloaded from the official URL with
resume and retries (``samcache.download.fetch``). The Snakemake rule ``sam_checkpoint`` calls
this, and the features rule depends on its output when a feature set uses ``weights: official``.

Another source can be named only explicitly (``url`` with its ``sha256``), for mirrors and for
tests; it is logged as a warning, never taken from the environment.
"""

from __future__ import annotations

import logging
from pathlib import Path

from samcache.download import RemoteFile, fetch
from samcache.features.specs import encoder_spec

log = logging.getLogger(__name__)

#: Where checkpoints are downloaded to and looked for (relative to the working directory).
CHECKPOINT_DIR = Path("checkpoints")


def official_checkpoint(encoder: str) -> RemoteFile:
    """The published checkpoint of ``encoder``: URL, file name, size and SHA-256."""
    spec = encoder_spec(encoder)
    if not (spec.checkpoint_url and spec.checkpoint_sha256):
        raise ValueError(
            f"encoder '{encoder}' has no official checkpoint; use weights: random or a checkpoint path"
        )
    return RemoteFile(
        spec.checkpoint_url,
        spec.checkpoint_url.rsplit("/", 1)[-1],
        sha256=spec.checkpoint_sha256,
        size=spec.checkpoint_bytes,
    )


def checkpoint_path(encoder: str, folder: str | Path = CHECKPOINT_DIR) -> Path:
    """Where the official checkpoint of ``encoder`` lives (whether or not it is there yet)."""
    return Path(folder) / official_checkpoint(encoder).filename


def fetch_checkpoint(
    encoder: str,
    folder: str | Path = CHECKPOINT_DIR,
    *,
    url: str | None = None,
    sha256: str | None = None,
    size: int | None = None,
    progress: bool = True,
) -> Path:
    """The verified checkpoint file of ``encoder``, downloaded only when it is not there.

    ``url`` replaces the official source; it needs the ``sha256`` of the file it serves, so
    that nothing unverified is ever loaded.
    """
    if url is None:
        remote = official_checkpoint(encoder)
    else:
        if not sha256:
            raise ValueError(
                f"a checkpoint URL other than the official one needs its sha256: {url}"
            )
        remote = RemoteFile(url, url.rsplit("/", 1)[-1], sha256=sha256, size=size)
        log.warning(
            "%s checkpoint from %s (sha256 %s) instead of the official source", encoder, url, sha256
        )
    return fetch(remote, folder, progress=progress)
