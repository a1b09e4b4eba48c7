"""Downloads and archive extraction against a loopback HTTP server."""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile

import pytest

from samcache.archives import UnsafeArchiveError, extract_archive
from samcache.download import ChecksumError, DownloadError, RemoteFile, fetch

from loopback import Loopback

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "srv"
    root.mkdir()
    (root / "file.bin").write_bytes(PAYLOAD)
    with Loopback(root) as srv:
        yield srv


def remote(server, **kw):
    args = {"sha256": hashlib.sha256(PAYLOAD).hexdigest(), "size": len(PAYLOAD)}
    args.update(kw)
    return RemoteFile(server.url("file.bin"), "file.bin", **args)


def test_download_verifies_and_lands(server, tmp_path):
    path = fetch(remote(server), tmp_path / "dl", progress=False)
    assert path.read_bytes() == PAYLOAD
    assert not (tmp_path / "dl" / "file.bin.part").exists()


def test_truncated_transfer_is_resumed_from_where_it_stopped(server, tmp_path):
    server.truncate_once["file.bin"] = 300_000
    path = fetch(remote(server), tmp_path / "dl", backoff=0, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert server.requests == [("file.bin", None), ("file.bin", "bytes=300000-")]


def test_transient_errors_are_retried(server, tmp_path):
    server.fail_times["file.bin"] = 2
    assert fetch(remote(server), tmp_path / "dl", backoff=0, progress=False).read_bytes() == PAYLOAD
    assert server.hits["file.bin"] == 3


def test_corrupt_download_raises_and_writes_nothing(server, tmp_path):
    bad = remote(server, sha256="0" * 64)
    with pytest.raises(ChecksumError, match="sha256"):
        fetch(bad, tmp_path / "dl", progress=False)
    assert list((tmp_path / "dl").iterdir()) == []


def test_md5_is_accepted(server, tmp_path):
    r = RemoteFile(server.url("file.bin"), "file.bin", md5=hashlib.md5(PAYLOAD).hexdigest())
    assert fetch(r, tmp_path / "dl", progress=False).exists()


def test_file_placed_by_hand_is_used_without_a_download(server, tmp_path):
    folder = tmp_path / "dl"
    folder.mkdir()
    (folder / "file.bin").write_bytes(PAYLOAD)
    fetch(remote(server), folder, progress=False)
    assert server.requests == []


def test_wrong_file_placed_by_hand_is_reported(server, tmp_path):
    folder = tmp_path / "dl"
    folder.mkdir()
    (folder / "file.bin").write_bytes(PAYLOAD[:-1] + b"x")
    with pytest.raises(ChecksumError, match="delete it"):
        fetch(remote(server, size=None), folder, progress=False)


def test_offline_error_names_the_url_and_the_folder(tmp_path):
    r = RemoteFile("http://127.0.0.1:9/file.bin", "file.bin", sha256="0" * 64)
    with pytest.raises(DownloadError) as err:
        fetch(r, tmp_path / "dl", retries=1, backoff=0, timeout=2, progress=False)
    msg = str(err.value)
    assert "http://127.0.0.1:9/file.bin" in msg and str(tmp_path / "dl" / "file.bin") in msg


def test_missing_file_is_not_retried(server, tmp_path):
    r = RemoteFile(server.url("nope.bin"), "nope.bin", sha256="0" * 64)
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(r, tmp_path / "dl", backoff=0, progress=False)
    assert server.hits["nope.bin"] == 1


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_zip_extracts_inside_the_folder(tmp_path):
    (tmp_path / "a.zip").write_bytes(_zip({"d/x.txt": b"1", "y.txt": b"2"}))
    files = extract_archive(tmp_path / "a.zip", tmp_path / "out")
    assert sorted(p.name for p in files) == ["x.txt", "y.txt"]
    assert (tmp_path / "out" / "d" / "x.txt").read_bytes() == b"1"


@pytest.mark.parametrize("evil", ["../evil.txt", "d/../../evil.txt", "/tmp/evil.txt"])
def test_zip_member_escaping_the_folder_is_refused(tmp_path, evil):
    (tmp_path / "a.zip").write_bytes(_zip({"ok.txt": b"1", evil: b"2"}))
    with pytest.raises(UnsafeArchiveError, match="outside"):
        extract_archive(tmp_path / "a.zip", tmp_path / "out")
    assert not (tmp_path / "out" / "ok.txt").exists()  # nothing extracted at all
    assert not (tmp_path / "evil.txt").exists()


def test_tar_member_escaping_the_folder_is_refused(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name in ("ok.txt", "../evil.txt"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tf.addfile(info, io.BytesIO(b"1"))
    (tmp_path / "a.tgz").write_bytes(buf.getvalue())
    with pytest.raises(UnsafeArchiveError):
        extract_archive(tmp_path / "a.tgz", tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


def test_tar_symlink_out_of_the_folder_is_refused(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("link")
        info.type = tarfile.SYMTYPE
        info.linkname = "../../etc/passwd"
        tf.addfile(info)
    (tmp_path / "a.tar").write_bytes(buf.getvalue())
    with pytest.raises(UnsafeArchiveError):
        extract_archive(tmp_path / "a.tar", tmp_path / "out")


def test_first_download_without_a_checksum_is_recorded_then_enforced(server, tmp_path, caplog):
    (server.root / "a.zip").write_bytes(_zip({"d/x.txt": b"1" * 1000}))
    r = RemoteFile.unpublished(server.url("a.zip"), "a.zip")
    with caplog.at_level("WARNING"):
        path = fetch(r, tmp_path / "dl", progress=False)
    digest = hashlib.sha256((server.root / "a.zip").read_bytes()).hexdigest()
    assert (tmp_path / "dl" / "a.zip.sha256").read_text() == f"{digest}  a.zip\n"
    assert "no published checksum" in caplog.text and digest in caplog.text
    path.write_bytes(path.read_bytes()[:-1] + b"!")  # the file changes afterwards
    with pytest.raises(ChecksumError, match="recorded at its first download"):
        fetch(r, tmp_path / "dl", progress=False)
    assert server.hits["a.zip"] == 1


def test_damaged_archive_is_not_recorded_on_first_download(server, tmp_path):
    data = bytearray(_zip({"x.txt": b"abc" * 100}))
    data[40] ^= 0xFF  # inside the member's data
    (server.root / "a.zip").write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="CRC|damaged"):
        fetch(RemoteFile.unpublished(server.url("a.zip"), "a.zip"), tmp_path / "dl", progress=False)
    assert list((tmp_path / "dl").iterdir()) == []


def test_unpublished_file_placed_by_hand_is_recorded_without_a_download(server, tmp_path):
    folder = tmp_path / "dl"
    folder.mkdir()
    (folder / "file.bin").write_bytes(PAYLOAD)
    fetch(RemoteFile.unpublished(server.url("file.bin"), "file.bin"), folder, progress=False)
    assert server.requests == []
    assert (folder / "file.bin.sha256").read_text().split()[0] == hashlib.sha256(
        PAYLOAD
    ).hexdigest()


def test_refusing_unverifiable_files_makes_no_request(server, tmp_path):
    r = RemoteFile.unpublished(server.url("file.bin"), "file.bin")
    with pytest.raises(DownloadError, match="checksums"):
        fetch(r, tmp_path / "dl", progress=False, first_download="refuse")
    assert server.requests == []


def test_a_checksum_is_required_unless_declared_unpublished():
    with pytest.raises(ValueError, match="checksum"):
        RemoteFile("http://x/y", "y")
