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

Where a checksum comes from is part of the file's description (``RemoteFile.origin``):
``published`` (by the source or a public record), ``pinned`` (by the user in config), or
``recorded``: for a file nobody has published a checksum of, the first download is accepted only
after the transfer is complete (``Content-Length``) and, for zip and tar archives, every member's
internal CRC has been read back; its SHA-256 is then written beside it as
``<filename>.sha256`` (``sha256sum -c`` format) with a warning that says so, and every later use
is verified against that lock file. ``first_download="refuse"`` turns this off: a file with no
known checksum is then never downloaded.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

from samcache.atomic import write_text_atomic
from samcache.progress import progress_bar

log = logging.getLogger(__name__)
CHUNK = 1 << 20
ORIGINS = ("published", "pinned", "recorded", "none")
FIRST_DOWNLOAD = ("record", "refuse")


@dataclass(frozen=True)
class RemoteFile:
    """A file at a URL with the checksum that proves it is the right one."""

    url: str
    filename: str
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None
    origin: str = "published"  # where the checksum comes from, one of ORIGINS

    def __post_init__(self) -> None:
        if self.origin not in ORIGINS:
            raise ValueError(f"{self.filename}: checksum origin {self.origin!r} not in {ORIGINS}")
        if not (self.sha256 or self.md5) and self.origin != "none":
            raise ValueError(f"{self.filename}: a download needs a sha256 or md5 checksum")

    @classmethod
    def unpublished(cls, url: str, filename: str) -> RemoteFile:
        """A file nobody has published a checksum of: see the module docstring."""
        return cls(url, filename, origin="none")

    def describe(self) -> dict[str, object]:
        """The provenance a dataset store records for this file."""
        out: dict[str, object] = {"file": self.filename, "url": self.url, "origin": self.origin}
        if self.sha256:
            out["sha256"] = self.sha256
        if self.md5:
            out["md5"] = self.md5
        return out


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


def lock_path(folder: str | Path, filename: str) -> Path:
    """Where the checksum recorded at a file's first download is kept."""
    return Path(folder) / f"{filename}.sha256"


def with_recorded_checksum(remote: RemoteFile, folder: str | Path) -> RemoteFile:
    """``remote`` with the checksum recorded in its lock file, if it has no other checksum."""
    lock = lock_path(folder, remote.filename)
    if remote.origin != "none" or not lock.exists():
        return remote
    fields = lock.read_text().split()
    if len(fields) != 2 or fields[1].lstrip("*") != remote.filename or len(fields[0]) != 64:
        raise ChecksumError(
            f"{lock}: not a '<sha256>  {remote.filename}' line; delete it and the file to download "
            "the file again"
        )
    return replace(remote, sha256=fields[0].lower(), origin="recorded")


def _origin_hint(remote: RemoteFile, folder: Path) -> str:
    if remote.origin == "recorded":
        return f" (recorded at its first download in {lock_path(folder, remote.filename)})"
    if remote.origin == "pinned":
        return " (pinned in the dataset's config key 'checksums')"
    return ""


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
            f"{path}: {algorithm} is {actual}, expected {expected}"
            f"{_origin_hint(remote, path.parent)} for {remote.url}"
        )


def check_archive(path: Path) -> bool:
    """Read every member of a zip or tar archive back, so a damaged transfer is caught.

    Returns whether ``path`` is an archive (other files cannot be checked this way).
    """
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()
            if bad is not None:
                raise ChecksumError(f"{path}: member '{bad}' fails its CRC check")
            return True
        if tarfile.is_tarfile(path):
            with tarfile.open(path) as tf:
                for member in tf:
                    if member.isfile():
                        with tf.extractfile(member) as f:  # type: ignore[union-attr]
                            while f.read(CHUNK):
                                pass
            return True
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as err:
        raise ChecksumError(f"{path}: damaged archive ({err})") from None
    return False


#: Names of archives (zip, tar) and of files that are zip archives inside (npz).
ARCHIVE_SUFFIXES = (".zip", ".npz", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def _record(path: Path, remote: RemoteFile, how: str) -> RemoteFile:
    is_archive = check_archive(path)
    if not is_archive and remote.filename.lower().endswith(ARCHIVE_SUFFIXES):
        raise ChecksumError(
            f"{path}: not an archive, though its name says so (an error page saved under its "
            "name? a truncated transfer?); no checksum was recorded. Delete it and download it "
            "again, or place the right file there."
        )
    checked = "every archive member's CRC was read back" if is_archive else "not an archive"
    digest = file_digest(path, "sha256")
    lock = lock_path(path.parent, remote.filename)
    write_text_atomic(lock, f"{digest}  {remote.filename}\n")
    log.warning(
        "%s: no published checksum exists; %s (%s), and its SHA-256 %s is now recorded in %s. "
        "Every later use is verified against it. To pin it for other machines, add it to the "
        "dataset's config: checksums: {%s: %s}",
        remote.filename,
        how,
        checked,
        digest,
        lock,
        remote.filename,
        digest,
    )
    return replace(remote, sha256=digest, origin="recorded")


def _mismatch_hint(remote: RemoteFile, target: Path) -> str:
    if remote.origin == "recorded":
        lock = lock_path(target.parent, remote.filename)
        return (
            f"The file at {target} is not the one first used there, whose checksum {lock} "
            f"records. If you replaced it with the right file, delete {lock} (it is checked and "
            "recorded again); otherwise delete both to download the file again."
        )
    return (
        f"The file at {target} is not the expected one: delete it to download it again, or "
        "replace it with the right file."
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
    first_download: str = "record",
) -> Path:
    """Return ``folder/<filename>`` verified (see the module docstring), downloading if needed."""
    folder = Path(folder)
    target = folder / remote.filename
    if first_download not in FIRST_DOWNLOAD:
        raise ValueError(f"first_download must be one of {FIRST_DOWNLOAD}, not {first_download!r}")
    remote = with_recorded_checksum(remote, folder)
    if remote.origin == "none" and first_download == "refuse":
        raise DownloadError(
            f"{remote.filename}: no checksum is published for {remote.url} and first_download is "
            "'refuse'. Pin its SHA-256 in the dataset's config (checksums: {"
            f"{remote.filename}: <sha256>}}), or allow first_download: record."
        )
    if target.exists() and remote.origin == "none":
        _record(target, remote, f"the file found at {target} (placed by hand) was used")
        return target
    if target.exists():
        try:
            verify(target, remote)
        except ChecksumError as err:
            raise ChecksumError(f"{err}. {_mismatch_hint(remote, target)}") from None
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
        if remote.origin == "none":
            _record(part, remote, f"it was downloaded from {remote.url}")
        else:
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
