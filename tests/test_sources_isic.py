"""ISIC 2016/2017/2018: the real download and conversion code against a loopback server.

The server holds archives built in the official formats (source_fixtures); the dataset's
``mirror`` points at it. Files with a published checksum get a pin (the fixtures are not the
official files); every other file goes through the first-download record.
"""

from __future__ import annotations

import json
import logging
import zipfile

import numpy as np
import pytest

from samcache import cli
from samcache.archives import UnsafeArchiveError
from samcache.data.sources import get_source, remote_files
from samcache.data.sources.isic import PUBLISHED
from samcache.data.store import DatasetStore
from samcache.download import ChecksumError, DownloadError

from loopback import Loopback
from source_fixtures import BUILDERS, block_mean, sha256, write_zip

SIZE = 16


@pytest.fixture
def served(tmp_path):
    """Start a loopback server over fixture files of one edition: served(name) -> (srv, truth)."""
    servers = []

    def start(name: str):
        root = tmp_path / "srv"
        root.mkdir()
        truth = BUILDERS[name](root, SIZE)
        srv = Loopback(root).__enter__()
        servers.append(srv)
        return srv, truth

    yield start
    for srv in servers:
        srv.__exit__(None, None, None)


def spec_for(name, srv, **extra):
    pins = {f: sha256(srv.root / f) for f in PUBLISHED if (srv.root / f).exists()}
    return {
        "source": name,
        "image_size": SIZE,
        "mirror": f"http://127.0.0.1:{srv.port}",
        "checksums": pins,
        **extra,
    }


def build(name, spec, tmp_path):
    return get_source(name).build(name, spec, tmp_path / "raw", tmp_path / f"{name}.zarr")


def check_content(store: DatasetStore, truth, attributes: bool) -> None:
    assert store.attrs["image_ids"] == truth.ids
    np.testing.assert_array_equal(store.split(), truth.split)
    images = store.images[:]
    for k, colour in enumerate(truth.colour):  # each row is the image with that id
        assert np.abs(images[k].reshape(-1, 3).mean(0) - colour).max() < 4, truth.ids[k]
    lesion = store.group["masks/lesion"][:]
    for k, full in enumerate(truth.lesion):
        np.testing.assert_array_equal(lesion[k], block_mean(full, SIZE), err_msg=truth.ids[k])
    if attributes:
        attrs = store.group["masks/attributes"][:]
        for k, masks in enumerate(truth.attributes):
            for j, full in enumerate(masks):
                expected = block_mean(full, SIZE)
                np.testing.assert_array_equal(attrs[k, j], expected, err_msg=f"{truth.ids[k]} {j}")
        presence = np.array([[m.any() for m in masks] for masks in truth.attributes])
        np.testing.assert_array_equal(store.stratify_on("attributes"), presence)
    for task, values in truth.labels.items():
        np.testing.assert_array_equal(store.labels(task), values)


def test_isic2017_store_holds_every_task_of_its_images(served, tmp_path):
    srv, truth = served("isic2017")
    store = build("isic2017", spec_for("isic2017", srv), tmp_path)
    check_content(store, truth, attributes=True)
    assert store.attrs["split_counts"] == {"train": 8, "val": 3, "test": 4}
    tasks = store.tasks
    assert {t: tasks[t].type for t in tasks} == {
        "melanoma": "binary",
        "keratosis": "binary",
        "lesion": "segmentation",
        "attributes": "segmentation",
    }
    assert tasks["melanoma"].classes[1] == "melanoma"  # the positive class is index 1
    assert store.attribute_names == (
        "pigment_network",
        "negative_network",
        "milia_like_cyst",
        "streaks",
    )
    assert store.mask("attributes").shape == (15, 4, SIZE, SIZE)


def test_every_source_file_and_its_checksum_is_recorded(served, tmp_path, caplog):
    srv, _ = served("isic2017")
    with caplog.at_level(logging.WARNING):
        store = build("isic2017", spec_for("isic2017", srv), tmp_path)
    sources = {s["file"]: s for s in store.attrs["sources"]}
    assert sorted(sources) == sorted(p.name for p in srv.root.iterdir())
    for name, s in sources.items():
        assert s["sha256"] == sha256(srv.root / name)  # hashlib on the served bytes
        assert s["origin"] == "recorded"  # ISIC publishes no checksum for 2017
        lock = tmp_path / "raw" / "isic2017" / f"{name}.sha256"
        assert lock.read_text() == f"{s['sha256']}  {name}\n"  # sha256sum -c format
    assert "no published checksum" in caplog.text
    # A second conversion reads the recorded checksums and downloads nothing.
    before = len(srv.requests)
    build("isic2017", spec_for("isic2017", srv), tmp_path)
    assert len(srv.requests) == before


def test_isic2018_tasks_1_and_2_with_official_splits(served, tmp_path):
    srv, truth = served("isic2018")
    store = build("isic2018", spec_for("isic2018", srv), tmp_path)
    check_content(store, truth, attributes=True)
    assert store.attrs["split_counts"] == {"train": 7, "val": 2, "test": 3}
    assert store.attribute_names == (
        "pigment_network",
        "negative_network",
        "streaks",
        "milia_like_cyst",
        "globules",
    )
    assert set(store.tasks) == {"lesion", "attributes"}
    origins = {s["file"]: s["origin"] for s in store.attrs["sources"]}
    assert origins["ISIC2018_Task1_Training_GroundTruth.zip"] == "pinned"
    assert origins["ISIC2018_Task2_Training_GroundTruth_v3.zip"] == "recorded"


def test_isic2018_test_split_carved_from_training_drops_the_official_test_images(served, tmp_path):
    """Seed 004's 80/20 split: a seeded share of the official training images is the test
    split, the official validation images stay, the official test images are left out."""
    srv, truth = served("isic2018")
    store = build("isic2018", spec_for("isic2018", srv, test_from_training=0.3), tmp_path)
    official = dict(zip(truth.ids, truth.split, strict=True))
    ids, split = store.attrs["image_ids"], store.split()
    assert {official[i] for i in ids} == {0, 1} and len(ids) == 9  # 7 training + 2 validation
    assert store.attrs["split_counts"] == {"train": 5, "val": 2, "test": 2}  # 0.3 of 7
    assert all(official[i] == 0 for i, s in zip(ids, split, strict=True) if s == 2)
    lesion = store.group["masks/lesion"][:]
    for k, i in enumerate(ids):  # each kept image keeps its own mask
        full = truth.lesion[truth.ids.index(i)]
        np.testing.assert_array_equal(lesion[k], block_mean(full, SIZE), err_msg=i)
    again = build("isic2018", spec_for("isic2018", srv, test_from_training=0.3), tmp_path)
    np.testing.assert_array_equal(again.split(), split)
    assert "seed 0" in store.attrs["split_origin"]


def test_isic2016_labels_masks_and_a_seeded_stratified_validation_split(served, tmp_path):
    srv, truth = served("isic2016")
    store = build("isic2016", spec_for("isic2016", srv, val_fraction=0.3), tmp_path)
    truth.split = store.split().tolist()  # validation is carved below
    check_content(store, truth, attributes=False)
    split, mel = store.split(), store.labels("melanoma")
    assert (split == 2).sum() == 4 and (split == 1).sum() == 3  # 0.3 of 10 training images
    assert set(mel[split == 1]) == {0, 1}  # stratified: both classes held out
    again = build("isic2016", spec_for("isic2016", srv, val_fraction=0.3), tmp_path)
    np.testing.assert_array_equal(again.split(), split)
    other = build("isic2016", spec_for("isic2016", srv, val_fraction=0.3, split_seed=5), tmp_path)
    assert not np.array_equal(other.split(), split)
    assert "seed 5" in other.attrs["split_origin"]


def test_centre_crop_crops_image_and_masks_alike(tmp_path):
    from PIL import Image

    from samcache.data.sources.imaging import load_image, load_mask

    # 64 x 48 image: the centred square of 0.75 x 48 = 36 px starts at (14, 6); at 12 px each
    # output pixel is a 3 x 3 block of it.
    img = np.zeros((48, 64, 3), np.uint8)
    img[6:42, 14:50] = (200, 40, 90)
    Image.fromarray(img).save(tmp_path / "i.png")
    mask = np.zeros((48, 64), np.uint8)
    mask[6 + 3 : 6 + 18, 14 + 6 : 14 + 30] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    out = load_image(tmp_path / "i.png", 12, 0.75)
    assert (out == (200, 40, 90)).all()  # nothing outside the crop
    got = load_mask(tmp_path / "m.png", 12, 0.75, expect=(64, 48))
    expected = np.zeros((12, 12), np.uint8)
    expected[1:6, 2:10] = 1
    np.testing.assert_array_equal(got, expected)


def test_truncated_transfer_resumes_through_the_download_command(served, tmp_path):
    srv, _ = served("isic2016")
    name = "ISBI2016_ISIC_Part3_Training_Data.zip"
    srv.truncate_once[name] = 1000
    spec = spec_for("isic2016", srv)
    argv = ["download", "--spec", json.dumps(spec), "--raw-dir", str(tmp_path / "raw")]
    assert cli.main([*argv, "--backoff", "0", "--no-progress"]) == 0
    assert [r for n, r in srv.requests if n == name] == [None, "bytes=1000-"]
    assert sha256(tmp_path / "raw" / "isic2016" / name) == sha256(srv.root / name)
    build("isic2016", spec, tmp_path)  # the conversion verifies and uses what is there
    assert len(srv.requests) == 7


def test_corrupt_file_stops_the_conversion_and_writes_nothing(served, tmp_path):
    srv, _ = served("isic2016")
    spec = spec_for("isic2016", srv)
    name = "ISBI2016_ISIC_Part3_Training_Data.zip"
    data = bytearray((srv.root / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (srv.root / name).write_bytes(bytes(data))  # the pin still names the good file
    with pytest.raises(ChecksumError, match=name):
        build("isic2016", spec, tmp_path)
    assert not (tmp_path / "isic2016.zarr").exists()
    assert not (tmp_path / "raw" / "isic2016" / name).exists()
    assert not list((tmp_path / "raw" / "isic2016").glob("*.part"))


def test_damaged_archive_without_a_checksum_is_not_recorded(served, tmp_path):
    srv, _ = served("isic2016")
    name = "ISBI2016_ISIC_Part1_Training_GroundTruth.zip"  # no published checksum
    data = bytearray((srv.root / name).read_bytes())
    data[60] ^= 0xFF  # inside the first member's data: its CRC no longer matches
    (srv.root / name).write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="CRC|damaged"):
        build("isic2016", spec_for("isic2016", srv), tmp_path)
    assert not (tmp_path / "raw" / "isic2016" / f"{name}.sha256").exists()
    assert not (tmp_path / "isic2016.zarr").exists()


def test_archive_member_escaping_the_folder_is_refused(served, tmp_path):
    srv, _ = served("isic2016")
    name = "ISBI2016_ISIC_Part1_Test_GroundTruth.zip"
    with zipfile.ZipFile(srv.root / name) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    members["../../evil.png"] = b"x"
    write_zip(srv.root / name, members)
    with pytest.raises(UnsafeArchiveError, match="outside"):
        build("isic2016", spec_for("isic2016", srv), tmp_path)
    assert not (tmp_path / "isic2016.zarr").exists()
    assert not list(tmp_path.rglob("evil.png"))
    assert not list((tmp_path / "raw" / "isic2016").glob(".extract-*"))  # scratch removed


def test_refusing_unverifiable_files_downloads_nothing(served, tmp_path):
    srv, _ = served("isic2017")
    with pytest.raises(DownloadError, match="checksums"):
        build("isic2017", spec_for("isic2017", srv, first_download="refuse"), tmp_path)
    assert srv.requests == []


def test_pinned_checksums_let_refuse_mode_download(served, tmp_path):
    srv, truth = served("isic2018")
    spec = spec_for("isic2018", srv, first_download="refuse")
    spec["checksums"] = {p.name: sha256(p) for p in srv.root.iterdir()}
    store = build("isic2018", spec, tmp_path)
    assert {s["origin"] for s in store.attrs["sources"]} == {"pinned"}
    assert store.n_items == len(truth.ids)


def test_a_missing_ground_truth_file_is_named(served, tmp_path):
    srv, truth = served("isic2018")
    name = "ISIC2018_Task1_Validation_GroundTruth.zip"
    with zipfile.ZipFile(srv.root / name) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    dropped = sorted(members)[0]
    del members[dropped]
    write_zip(srv.root / name, members)
    with pytest.raises(
        ValueError, match=f"{name}: no lesion mask for {dropped.split('/')[1][:12]}"
    ):
        build("isic2018", spec_for("isic2018", srv), tmp_path)


def test_unknown_pinned_file_names_the_config_key():
    with pytest.raises(ValueError, match="checksums.nope.zip"):
        remote_files({"source": "isic2017", "checksums": {"nope.zip": "0" * 64}})


def test_official_file_names_and_urls():
    names = [f.filename for f in remote_files({"source": "isic2017"})]
    assert len(names) == 12 and "ISIC-2017_Test_v2_Part2_GroundTruth.zip" in names
    files = remote_files({"source": "isic2018"})
    assert all(
        f.url.startswith("https://isic-challenge-data.s3.amazonaws.com/2018/") for f in files
    )
    assert {f.filename: f.origin for f in files}["ISIC2018_Task1-2_Test_Input.zip"] == "published"
