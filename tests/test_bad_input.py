"""Bad input through the `samcache` commands, as a new user meets it: each case ends in one
error line that names the file or the setting and what to do, with nothing half-written left
behind, or in a correct result. Never in a silently wrong store, record or table."""

from __future__ import annotations

import errno
import io
import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from samcache.cli import main
from samcache.data.sources.isic import PUBLISHED
from samcache.data.store import DatasetStore

from source_fixtures import isic2016, medmnist_npz, png_bytes, sha256, write_zip

SIZE = 16
TRAIN_IMAGES = "ISBI2016_ISIC_Part3_Training_Data.zip"
TRAIN_MASKS = "ISBI2016_ISIC_Part1_Training_GroundTruth.zip"
TRAIN_CSV = "ISBI2016_ISIC_Part3_Training_GroundTruth.csv"


def run(args: list[str], caplog) -> tuple[int, list[str]]:
    """The exit status of `samcache <args>` and its error lines."""
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="samcache"):
        status = main(args)
    return status, [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def one_error(args: list[str], caplog) -> str:
    status, errors = run(args, caplog)
    assert status == 1 and len(errors) == 1, errors
    assert "\n" not in errors[0] and "Traceback" not in errors[0]
    return errors[0]


def leftovers(folder: Path) -> list[str]:
    """Hidden temporary files or stores, and empty files, left under ``folder``."""
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.name.startswith(".")
        and ".tmp-" in p.name
        or p.name.endswith(".partial")
        or (p.is_file() and p.stat().st_size == 0 and not p.name.endswith(".lock"))
    )


# --- ISIC 2016 files placed by hand ------------------------------------------------------


@pytest.fixture
def isic(tmp_path):
    """ISIC 2016 files in data/raw/isic2016 (placed by hand), and `samcache dataset` on them:
    isic(pin=True) -> the command, every file pinned to its checksum when it runs; pin=False
    pins only the files that have a published checksum (the fixtures are not the official
    files), so that the others are recorded at their first use."""
    raw = tmp_path / "raw" / "isic2016"
    raw.mkdir(parents=True)
    isic2016(raw, SIZE)

    def command(pin: bool = True) -> list[str]:
        files = sorted(p for p in raw.iterdir() if not p.name.endswith(".sha256"))
        spec = {"source": "isic2016", "image_size": SIZE}
        spec["checksums"] = {p.name: sha256(p) for p in files if pin or p.name in PUBLISHED}
        return [
            "dataset",
            "--name",
            "isic2016",
            "--spec",
            json.dumps(spec),
            "--raw-dir",
            str(tmp_path / "raw"),
            "--out",
            str(tmp_path / "isic2016.zarr"),
        ]

    command.raw = raw
    return command


def replace_member(archive: Path, stem: str, data: bytes) -> str:
    """Replace the member whose name ends with ``stem``; returns its name."""
    with zipfile.ZipFile(archive) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    name = next(n for n in members if n.endswith(stem))
    members[name] = data
    write_zip(archive, members)
    return name


def jpeg(size: tuple[int, int] = (64, 48)) -> bytes:  # the fixtures' images are 64 x 48
    buf = io.BytesIO()
    Image.new("RGB", size, (120, 80, 60)).save(buf, format="JPEG")
    return buf.getvalue()


def png16() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((48, 64), 40000, np.uint16)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "archive, member, data, message",
    [
        (
            TRAIN_MASKS,
            "ISIC_0000001_Segmentation.png",
            png_bytes(np.eye(48, 64, dtype=np.uint8)),  # a mask saved as 0/1
            "ISIC_0000001_Segmentation.png: mask values 1 besides 0 and 255",
        ),
        (
            TRAIN_IMAGES,
            "ISIC_0000002.jpg",
            png16(),  # a 16-bit image: converting it to 8 bits would clip it
            "ISIC_0000002.jpg: image mode 'I;16', not an 8-bit RGB or grey image",
        ),
        (
            TRAIN_IMAGES,
            "ISIC_0000003.jpg",
            b"<html>Not Found</html>",
            "ISIC_0000003.jpg: not a readable image",
        ),
        (
            TRAIN_IMAGES,
            "ISIC_0000004.jpg",
            jpeg()[:300],  # truncated
            "ISIC_0000004.jpg: not a readable image",
        ),
    ],
    ids=["mask-0-1", "16-bit", "not-an-image", "truncated-image"],
)
def test_image_and_mask_members_that_are_not_what_isic_documents(
    isic, tmp_path, caplog, archive, member, data, message
):
    replace_member(isic.raw / archive, member, data)
    error = one_error(isic(), caplog)
    assert message in error and error.startswith(f"{archive}: member ")
    assert not (tmp_path / "isic2016.zarr").exists() and not leftovers(tmp_path)


def test_a_duplicated_conflicting_label_row_is_refused(isic, tmp_path, caplog):
    csv = isic.raw / TRAIN_CSV
    first = csv.read_text().splitlines()[0]
    image_id, label = first.split(",")
    flipped = "benign" if label == "malignant" else "malignant"
    csv.write_text(csv.read_text() + f"{image_id},{flipped}\n")
    error = one_error(isic(), caplog)
    assert f"{TRAIN_CSV}: image {image_id} appears twice, with other labels" in error
    assert not (tmp_path / "isic2016.zarr").exists()


@pytest.mark.parametrize("damage", ["truncated", "crc"])
def test_a_damaged_archive_is_named_and_nothing_is_extracted_or_written(
    isic, tmp_path, caplog, damage
):
    path = isic.raw / TRAIN_MASKS
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[60] ^= 0xFF  # inside the first member: its CRC fails
    path.write_bytes(bytes(data))
    error = one_error(isic(), caplog)  # pinned to the damaged file: only reading it finds out
    assert f"{path}: damaged archive" in error and "download it again" in error
    assert not (tmp_path / "isic2016.zarr").exists() and not leftovers(tmp_path)
    assert not list(isic.raw.glob(".extract-*"))


def test_a_wrong_file_placed_by_hand_does_not_lock_its_checksum(isic, tmp_path, caplog):
    """The test files have no published checksum: the first use records one. When that first
    use fails, the record goes too, so that the right file placed next is accepted."""
    csv = isic.raw / "ISBI2016_ISIC_Part3_Test_GroundTruth.csv"
    good = csv.read_bytes()
    csv.write_text("ISIC_0000100,0.0\n")  # the wrong file: rows missing
    spec_args = isic(pin=False)
    error = one_error(spec_args, caplog)
    assert "no label row for ISIC_0000101" in error
    assert not (isic.raw / f"{csv.name}.sha256").exists()
    csv.write_bytes(good)  # the right file, as the error asked
    assert main(spec_args) == 0
    assert (isic.raw / f"{csv.name}.sha256").exists()
    assert DatasetStore(tmp_path / "isic2016.zarr").n_items == 14


def test_a_changed_file_after_its_checksum_was_recorded_says_how_to_accept_it(
    isic, tmp_path, caplog
):
    args = isic(pin=False)
    assert main(args) == 0
    csv = isic.raw / "ISBI2016_ISIC_Part3_Test_GroundTruth.csv"
    csv.write_text(csv.read_text() + "\n")
    error = one_error(args, caplog)
    assert f"If you replaced it with the right file, delete {csv}.sha256" in error


# --- MedMNIST npz --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage", ["truncated", "not-a-zip", "pickled"], ids=["truncated", "not-a-zip", "pickled"]
)
def test_an_unreadable_npz_is_named(tmp_path, caplog, damage):
    raw = tmp_path / "raw" / "breastmnist"
    raw.mkdir(parents=True)
    npz = medmnist_npz(raw / "breastmnist.npz", rgb=False, n_classes=2)
    if damage == "truncated":
        npz.write_bytes(npz.read_bytes()[:-200])
    elif damage == "not-a-zip":
        npz.write_bytes(b"\x93NUMPY not really" * 50)
    else:
        np.savez(npz.with_suffix(""), train_images=np.array([object()], dtype=object))
    spec = {"source": "breastmnist", "size": 28, "image_size": 28}
    spec["checksums"] = {"breastmnist.npz": sha256(npz)}
    args = ["dataset", "--name", "b", "--spec", json.dumps(spec), "--raw-dir"]
    args += [str(tmp_path / "raw"), "--out", str(tmp_path / "b.zarr")]
    error = one_error(args, caplog)
    assert f"{npz}: " in error and "download it again" in error
    assert not (tmp_path / "b.zarr").exists() and not leftovers(tmp_path)


# --- training settings from the command line ---------------------------------------------


@pytest.mark.parametrize(
    "method, key",
    [
        ({"head": "linear_probe", "train": {"epochs": 0}}, "--spec: 'train.epochs'"),
        ({"head": "linear_probe", "train": {"epochs": -1}}, "--spec: 'train.epochs'"),
        ({"head": "linear_probe", "trian": {"epochs": 3}}, "--spec: unknown key 'trian'"),
        ({"head": "mlp_probe", "head_args": {"hiden": 8}}, "--spec.head_args: ['hiden']"),
        ({"head": "linear_prob"}, "--spec.head: 'linear_prob' is not a registered head"),
    ],
    ids=["epochs-0", "epochs-negative", "typo", "head-arg", "head"],
)
def test_train_refuses_settings_the_config_would_refuse(
    tmp_path, caplog, small_store, small_features, method, key
):
    out = tmp_path / "run.json"
    args = ["train", "--dataset", str(small_store.path), "--features", str(small_features.path)]
    args += ["--task", "melanoma", "--method-name", "m", "--spec", json.dumps(method)]
    args += ["--fraction", "100", "--seed", "0", "--out", str(out)]
    assert key in one_error(args, caplog)
    assert not out.exists() and not leftovers(tmp_path)


# --- a full disk ---------------------------------------------------------------------------


@pytest.fixture
def disk_full_after(monkeypatch):
    """Every zarr chunk write after the first ``n`` fails with ENOSPC, as on a full disk."""
    from zarr.storage import _local

    real = _local._put

    def arm(n: int) -> None:
        calls = {"n": 0}

        def put(path, value, exclusive=False):
            calls["n"] += 1
            if calls["n"] > n:
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            return real(path, value, exclusive=exclusive)

        monkeypatch.setattr(_local, "_put", put)

    return arm


def test_a_full_disk_while_writing_a_store_leaves_nothing_behind(tmp_path, caplog, disk_full_after):
    spec = {"source": "synthetic", "n_images": 20, "image_size": 32}
    out = tmp_path / "stores" / "demo.zarr"
    disk_full_after(6)
    error = one_error(
        ["dataset", "--name", "demo", "--spec", json.dumps(spec), "--out", str(out)], caplog
    )
    assert error.startswith("no space left on the device") and "Free space there" in error
    assert not out.exists() and not leftovers(tmp_path)


def test_a_full_disk_while_creating_a_cache_leaves_nothing_behind(
    tmp_path, caplog, small_store, disk_full_after
):
    spec = {"encoder": "vit_tiny", "weights": "random", "taps": ["neck"]}
    out = tmp_path / "features.zarr"
    args = ["features", "--dataset", str(small_store.path), "--dataset-id", "small:x"]
    args += ["--spec", json.dumps(spec), "--out", str(out), "--no-progress", "--device", "cpu"]
    disk_full_after(2)
    assert "no space left on the device" in one_error(args, caplog)
    assert not out.exists() and not leftovers(tmp_path)
