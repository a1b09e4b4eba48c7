"""RetinaMNIST and BreastMNIST: files named by medmnist's metadata, npz files in its format."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from medmnist.info import INFO

from samcache import cli
from samcache.data.sources import get_source, remote_files
from samcache.data.store import DatasetStore
from samcache.download import ChecksumError

from loopback import Loopback
from source_fixtures import medmnist_npz, sha256


@pytest.mark.parametrize("flag", ["retinamnist", "breastmnist"])
@pytest.mark.parametrize("size, suffix", [(28, ""), (224, "_224")])
def test_url_and_md5_come_from_medmnist_info(flag, size, suffix):
    (f,) = remote_files({"source": flag, "size": size})
    assert f.url == INFO[flag][f"url{suffix}"]
    assert f.md5 == INFO[flag][f"MD5{suffix}"]
    assert f.filename == f"{flag}{suffix}.npz" and f.origin == "published"


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "srv"
    root.mkdir()
    medmnist_npz(root / "retinamnist.npz", rgb=True, n_classes=5)
    medmnist_npz(root / "breastmnist_224.npz", rgb=False, n_classes=2, size=32, seed=1)
    with Loopback(root) as srv:
        yield srv


def spec_for(srv, flag, size, **extra):
    name = f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"
    return {
        "source": flag,
        "size": size,
        "mirror": f"http://127.0.0.1:{srv.port}",
        "checksums": {name: sha256(srv.root / name)},
        **extra,
    }


def test_retinamnist_through_the_download_command_and_conversion(server, tmp_path):
    spec = spec_for(server, "retinamnist", 28, image_size=56)
    argv = ["download", "--spec", json.dumps(spec), "--raw-dir", str(tmp_path / "raw")]
    assert cli.main([*argv, "--no-progress"]) == 0
    assert (tmp_path / "raw" / "retinamnist" / "retinamnist.npz").exists()
    store = get_source("retinamnist").build(
        "retina", spec, tmp_path / "raw", tmp_path / "r.zarr", threads=2
    )
    npz = np.load(server.root / "retinamnist.npz")
    labels = np.concatenate([npz[f"{s}_labels"][:, 0] for s in ("train", "val", "test")])
    np.testing.assert_array_equal(store.labels("grade"), labels)
    assert store.attrs["split_counts"] == {"train": 12, "val": 4, "test": 6}
    assert store.task("grade").type == "ordinal" and len(store.task("grade").classes) == 5
    assert store.images.shape == (22, 56, 56, 3)
    # 28 -> 56 agrees with torch's bilinear upsampling (half-pixel centres) away from the border
    x = torch.from_numpy(npz["train_images"][:3]).permute(0, 3, 1, 2).float()
    ref = F.interpolate(x, size=(56, 56), mode="bilinear", align_corners=False)
    got = torch.from_numpy(store.images[:3]).permute(0, 3, 1, 2).float()
    assert (got - ref)[..., 1:-1, 1:-1].abs().max() <= 1.0
    assert store.attrs["sources"][0]["sha256"] == sha256(server.root / "retinamnist.npz")
    assert len(server.requests) == 1  # the conversion verified the file, it did not fetch it


def test_breastmnist_keeps_medmnist_labels_and_normal_benign_is_positive(server, tmp_path):
    spec = spec_for(server, "breastmnist", 224, image_size=32)
    store = get_source("breastmnist").build("breast", spec, tmp_path / "raw", tmp_path / "b.zarr")
    info = store.task("diagnosis")
    assert info.type == "binary"
    # medmnist's own label names, index 1 (the positive class) = normal + benign
    assert info.classes == tuple(INFO["breastmnist"]["label"][str(i)] for i in range(2))
    assert info.classes[1] == "normal, benign"
    npz = np.load(server.root / "breastmnist_224.npz")
    np.testing.assert_array_equal(
        store.labels("diagnosis")[:12], npz["train_labels"][:, 0].astype(np.int64)
    )
    # greyscale becomes RGB by repeating the channel, pixel for pixel at the same size
    np.testing.assert_array_equal(store.images[0][..., 0], npz["train_images"][0])
    np.testing.assert_array_equal(store.images[0][..., 2], npz["train_images"][0])


def test_wrong_npz_is_refused_before_anything_is_written(server, tmp_path):
    spec = spec_for(server, "breastmnist", 224)
    spec["checksums"]["breastmnist_224.npz"] = "1" * 64
    with pytest.raises(ChecksumError, match="pinned"):
        get_source("breastmnist").build("b", spec, tmp_path / "raw", tmp_path / "b.zarr")
    assert not (tmp_path / "b.zarr").exists()


def test_npz_without_a_split_is_named(tmp_path):
    from samcache.data.sources.medmnist import read_npz

    np.savez(tmp_path / "x.npz", train_images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ValueError, match="train_labels"):
        read_npz(tmp_path / "x.npz", 2)


def test_a_size_medmnist_does_not_publish_is_refused():
    with pytest.raises(ValueError, match="config key size"):
        remote_files({"source": "retinamnist", "size": 100})


def test_store_opens_with_the_contract(server, tmp_path):
    spec = spec_for(server, "retinamnist", 28)
    get_source("retinamnist").build("r", spec, tmp_path / "raw", tmp_path / "r.zarr")
    store = DatasetStore(tmp_path / "r.zarr")
    assert store.image_shape == (224, 224)  # the default image_size
    assert store.attrs["medmnist"] == {"flag": "retinamnist", "task": "ordinal-regression"}


def test_offline_download_names_the_url_and_where_to_place_the_file(tmp_path, caplog):
    spec = {"source": "breastmnist", "size": 28, "mirror": "http://127.0.0.1:9"}  # nothing there
    argv = ["download", "--spec", json.dumps(spec), "--raw-dir", str(tmp_path / "raw")]
    assert cli.main([*argv, "--retries", "1", "--backoff", "0", "--timeout", "2"]) == 1
    assert "http://127.0.0.1:9/breastmnist.npz" in caplog.text
    assert str(tmp_path / "raw" / "breastmnist" / "breastmnist.npz") in caplog.text
