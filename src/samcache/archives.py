"""Safe extraction of zip and tar archives.

Every member's destination is resolved before anything is written; a member that would land
outside the target folder (absolute paths, ``..`` components, links pointing out) is refused
and the archive is not extracted at all.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import zipfile
import zlib
from pathlib import Path


class UnsafeArchiveError(RuntimeError):
    pass


class DamagedArchiveError(ValueError):
    """An archive that cannot be read whole: truncated, corrupt, or not an archive at all."""


def _damaged(archive: Path, err: object) -> DamagedArchiveError:
    return DamagedArchiveError(
        f"{archive}: damaged archive ({err}). Delete it and download it again (or place an "
        "intact copy there); nothing was extracted"
    )


def _inside(root: Path, name: str) -> Path:
    dest = (root / name).resolve()
    if dest != root and root not in dest.parents:
        raise UnsafeArchiveError(
            f"archive member '{name}' would be written outside {root}; refused"
        )
    return dest


def extract_archive(archive: str | Path, dest: str | Path) -> list[Path]:
    """Extract ``archive`` (zip, tar, tar.gz, ...) into ``dest``; return the extracted files.

    A damaged archive raises ``DamagedArchiveError`` and leaves ``dest`` as it was.
    """
    archive, root = Path(archive), Path(dest).resolve()
    existed = root.exists()
    try:
        return _extract(archive, root)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as err:
        if not existed:
            shutil.rmtree(root, ignore_errors=True)
        raise _damaged(archive, err) from None
    except UnsafeArchiveError:
        if not existed:
            shutil.rmtree(root, ignore_errors=True)
        raise


def _extract(archive: Path, root: Path) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:  # check everything before writing anything
                _inside(root, info.filename)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise UnsafeArchiveError(
                        f"archive member '{info.filename}' is a symbolic link; refused"
                    )
            out = []
            for info in infos:
                target = _inside(root, info.filename)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                out.append(target)
            return out
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            for m in members:
                _inside(root, m.name)
                if m.issym() or m.islnk():
                    _inside(root, os.path.join(os.path.dirname(m.name), m.linkname))
                if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
                    raise UnsafeArchiveError(
                        f"archive member '{m.name}' is a device or fifo; refused"
                    )
            tf.extractall(root, members=members, filter="data")
            return [root / m.name for m in members if m.isfile()]
    raise _damaged(archive, "not a zip or tar archive: truncated, or not the right file")
