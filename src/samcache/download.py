"""Downloads that resume, retry, verify, and give way to files placed by hand.

``fetch(remote, folder)`` returns ``folder/<filename>`` once its checksum matches:

* a file already there (downloaded before, or placed by hand because the machine is offline or
  the source needs a login) is verified and used without any network access;
* otherwise the file is downloaded to ``<filename>.part``; an interrupted transfer continues
  from the bytes already on disk (HTTP ``Range``), transient failures are retried with
  exponential backoff, and only a transfer whose checksum matches is renamed into place, so a
  corrupt download never appears under the final name;
* when the network cannot be reached the error names the URL and the folder where the file may
  be placed by hand.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from samcache.progress import progress_bar

log = logging.getLogger(__name__)
CHUNK = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    """A file at a URL with the checksum that proves it is the right one."""

    url: str
    filename: str
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None

    def __post_init__(self) -> None:
        if not (self.sha256 or self.md5):
            raise ValueError(f"{self.filename}: a download needs a sha256 or md5 checksum")


class DownloadError(RuntimeError):
    """The file could not be obtained; the message says where to place it by hand."""


class ChecksumError(DownloadError):
    """A file's content is not what its checksum says."""


def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, remote: RemoteFile) -> None:
    """Raise ``ChecksumError`` unless ``path`` has the expected size and checksum."""
    if remote.size is not None and path.stat().st_size != remote.size:
        raise ChecksumError(
            f"{path}: {path.stat().st_size} bytes, expected {remote.size} for {remote.url}"
        )
    algorithm, expected = ("sha256", remote.sha256) if remote.sha256 else ("md5", remote.md5)
    actual = file_digest(path, algorithm)
    if actual.lower() != str(expected).lower():
        raise ChecksumError(
            f"{path}: {algorithm} is {actual}, expected {expected} for {remote.url}"
        )


def _manual_hint(remote: RemoteFile, folder: Path) -> str:
    return (
        f"download {remote.url} by other means and place it at {folder / remote.filename} "
        "(it is verified and then used without any download)"
    )


def fetch(
    remote: RemoteFile,
    folder: str | Path,
    *,
    retries: int = 5,
    backoff: float = 2.0,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    folder = Path(folder)
    target = folder / remote.filename
    if target.exists():
        try:
            verify(target, remote)
        except ChecksumError as err:
            raise ChecksumError(
                f"{err}. The file at {target} is not the expected one: delete it to download it "
                "again, or replace it with the right file."
            ) from None
        log.info("using %s (checksum verified, no download)", target)
        return target
    folder.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    last: Exception | None = None
    for attempt in range(retries + 1):
        try:
            _transfer(remote, part, timeout=timeout, progress=progress)
            break
        except urllib.error.HTTPError as err:
            if err.code in (401, 403, 404):  # retrying will not help
                raise DownloadError(
                    f"{remote.url}: HTTP {err.code}. {_manual_hint(remote, folder)}"
                ) from err
            last = err
        except (
            urllib.error.URLError,
            http.client.HTTPException,
            ConnectionError,
            TimeoutError,
        ) as err:
            last = err
        if attempt < retries:
            wait = backoff * 2**attempt
            log.warning(
                "download of %s failed (%s); retry %d/%d in %.0f s",
                remote.url,
                last,
                attempt + 1,
                retries,
                wait,
            )
            time.sleep(wait)
    else:
        raise DownloadError(
            f"could not download {remote.url} after {retries + 1} attempts ({last}). "
            f"If this machine is offline, {_manual_hint(remote, folder)}; a partial transfer is kept "
            f"at {part} and resumed next time."
        )
    try:
        verify(part, remote)
    except ChecksumError as err:
        part.unlink(missing_ok=True)  # a corrupt transfer must not be resumed
        raise ChecksumError(
            f"{err}. The corrupt download was deleted; nothing else was written."
        ) from None
    part.replace(target)
    return target


def _transfer(remote: RemoteFile, part: Path, *, timeout: float, progress: bool) -> None:
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(remote.url, headers={"User-Agent": "samcache"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # the part file already holds every byte
            return
        raise
    with response:
        if have and response.status == 200:  # the server ignored the range: start over
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else remote.size
        mode = "ab" if have else "wb"
        bar = progress_bar(total=total or 0, desc=remote.filename, unit="B", enable=progress)
        bar.update(have)
        with open(part, mode) as out, bar:
            while block := response.read(CHUNK):
                out.write(block)
                bar.update(len(block))
        if total is not None and part.stat().st_size < total:
            raise http.client.IncompleteRead(b"", total - part.stat().st_size)
