"""Damaged stores: every open checks what the flags claim, a resume recomputes only the damaged
items, `samcache verify` decodes everything, and a store that changed after its caches were
built is caught. Each damage is done to the files on disk, as a crash, a full disk or a stray
`rm` would leave them."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import zarr

from samcache.cli import main
from samcache.data.store import DatasetStore, write_dataset_store
from samcache.features.extract import extract_features
from samcache.features.specs import SlicParams, feature_set_from_config
from samcache.features.store import FeatureStore
from samcache.features.superpixels import compute_superpixels, open_superpixels
from samcache.integrity import DamagedStoreError, manifest_problem, verify_store
from samcache.zarrio import StoreError

from conftest import tiny_feature_config

DATASET_ID = "small:test"  # as the small_features fixture


def fset():
    return feature_set_from_config(tiny_feature_config(), DATASET_ID)


@pytest.fixture
def cache(tmp_path, small_features):
    """A private copy of the session's feature cache (8 images per shard, 60 images)."""
    out = tmp_path / "features.zarr"
    shutil.copytree(small_features.path, out)
    return out


def values(path) -> dict[str, np.ndarray]:
    g = zarr.open_group(str(path), mode="r")
    return {t["array"]: np.asarray(g[t["array"]][:]) for t in g.attrs["taps"]}


def truncate(path, n_bytes: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:-n_bytes])


def test_a_deleted_shard_is_an_error_naming_tap_file_and_images(cache):
    (cache / "neck/c/1/0/0/0").unlink()
    with pytest.raises(DamagedStoreError) as err:
        FeatureStore(cache)
    msg = str(err.value)
    assert "'neck' items 8..15 (neck/c/1/0/0/0): file missing" in msg
    assert "snakemake again" in msg and "samcache features" in msg


def test_a_truncated_shard_is_an_error_naming_tap_file_and_images(cache):
    truncate(cache / "block_2/c/2/0/0/0", 50)
    with pytest.raises(DamagedStoreError, match=r"'block_2' items 16\.\.23 .*CRC-32C"):
        FeatureStore(cache)


def test_resume_recomputes_exactly_the_damaged_images(cache, small_store, small_features, caplog):
    before = values(small_features.path)
    (cache / "neck/c/1/0/0/0").unlink()
    truncate(cache / "block_2/c/6/0/0/0", 10)
    with caplog.at_level(logging.INFO):
        extract_features(small_store.path, cache, fset(), device="cpu", progress=False)
    assert "44 of 60 images already complete; computing 16 images in 2 batches" in caplog.text
    assert "damaged, recomputing" in caplog.text
    after = values(cache)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])
    assert verify_store(cache).sound


def test_nan_in_a_cache_is_refused_on_read_with_the_tap_and_image(cache):
    g = zarr.open_group(str(cache), mode="r+")
    item = np.asarray(g["block_2"][13])
    item[0, 0, 0] = np.nan
    g["block_2"][13] = item
    fs = FeatureStore(cache)  # the files are sound: only decoding finds it
    with pytest.raises(DamagedStoreError, match=r"'block_2' item 13 .*NaN") as err:
        fs.read("block:2", np.arange(10, 20))
    assert "samcache verify --repair" in str(err.value)
    fs.read("neck", np.arange(10, 20))  # the other tap is fine


def test_verify_finds_undecodable_and_nan_items_and_repair_lets_a_resume_fix_them(
    cache, small_store, small_features, capsys
):
    g = zarr.open_group(str(cache), mode="r+")
    item = np.asarray(g["neck"][40])
    item[:] = np.inf
    g["neck"][40] = item
    shard = cache / "block_2/c/3/0/0/0"  # items 24..31: overwrite the data, keep the index
    data = bytearray(shard.read_bytes())
    data[:64] = bytes(64)
    shard.write_bytes(bytes(data))
    assert verify_store(cache, full=False).sound  # the files alone look fine
    assert main(["verify", str(cache)]) == 1
    out = capsys.readouterr().out
    assert "'neck' item 40" in out and "NaN or infinity" in out
    assert "'block_2' items 24..31" in out and "cannot be decoded" in out
    assert main(["verify", "--repair", str(cache)]) == 0
    assert "cleared the completion flags of 9 damaged items" in capsys.readouterr().out
    extract_features(small_store.path, cache, fset(), device="cpu", progress=False)
    before, after = values(small_features.path), values(cache)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])
    assert main(["verify", str(cache)]) == 0


def test_chunks_of_zeros_are_written_so_a_missing_file_always_means_damage(tmp_path):
    n = 6
    store = write_dataset_store(
        tmp_path / "zeros.zarr",
        name="zeros",
        source="test",
        images=np.zeros((n, 8, 8, 3), np.uint8),
        split=np.array([0, 0, 1, 1, 2, 2]),
        labels={"y": np.array([0, 1, 0, 1, 0, 1])},
        tasks={"y": {"type": "binary", "classes": ["a", "b"]}},
        lesion_mask=np.zeros((n, 8, 8), np.uint8),
        items_per_shard=2,
    )
    assert verify_store(store.path).sound
    (store.path / "masks/lesion/c/1/0/0").unlink()
    with pytest.raises(DamagedStoreError, match=r"'masks/lesion' items 2\.\.3 .*file missing"):
        DatasetStore(store.path)


def test_a_damaged_dataset_store_names_the_array_and_how_to_rebuild_it(tmp_path, small_store):
    copy = tmp_path / "small.zarr"
    shutil.copytree(small_store.path, copy)
    truncate(copy / "images/c/0/0/0/0", 30)
    with pytest.raises(DamagedStoreError, match=r"'images' items 0\.\.59 .*delete the store"):
        DatasetStore(copy)
    assert main(["verify", str(copy)]) == 1


def test_pixels_changed_after_the_cache_was_built_are_caught(tmp_path, small_store, cache):
    copy = tmp_path / "small.zarr"
    shutil.copytree(small_store.path, copy)
    g = zarr.open_group(str(copy), mode="r+")
    image = np.asarray(g["images"][5])
    image[0, 0] ^= 1
    g["images"][5] = image
    ds = DatasetStore(copy)  # opening stays cheap: shapes and files only
    with pytest.raises(StoreError, match="not to its recorded fingerprint"):
        ds.verify_fingerprint()
    report = verify_store(copy)
    assert report.fingerprint_error and not report.sound
    (cache / "neck/c/0/0/0/0").unlink()  # a resume would now encode the changed pixels
    with pytest.raises(StoreError, match="not to its recorded fingerprint"):
        extract_features(copy, cache, fset(), device="cpu", progress=False)


def test_superpixel_cache_damage_is_named_and_a_resume_recomputes_it(tmp_path, small_store):
    params = SlicParams(n_segments=16)
    out = compute_superpixels(
        small_store.path, tmp_path / "sp.zarr", params, key="k", progress=False
    )
    before = np.asarray(open_superpixels(out)[:])
    (out / "labels/c/2/0/0").unlink()  # units of 16 images: items 32..47
    with pytest.raises(DamagedStoreError, match=r"'labels' items 32\.\.47 .*samcache superpixels"):
        open_superpixels(out)
    compute_superpixels(small_store.path, out, params, key="k", progress=False)
    np.testing.assert_array_equal(open_superpixels(out)[:], before)


def test_the_workflow_sees_through_a_manifest_whose_cache_is_gone_or_damaged(cache, tmp_path):
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"kind": "features", "path": str(cache)}))
    assert manifest_problem(manifest) is None
    g = zarr.open_group(str(cache), mode="r+")
    g["complete"][8:16] = False  # flags cleared
    assert manifest_problem(manifest).endswith("8 of 60 items are not flagged complete")
    g["complete"][8:16] = True
    (cache / "neck/c/4/0/0/0").unlink()
    assert "'neck' items 32..39 (neck/c/4/0/0/0): file missing" in manifest_problem(manifest)
    shutil.rmtree(cache)
    assert manifest_problem(manifest) == f"{cache} is missing"
    manifest.write_text('{"kind": "feat')
    assert "is unreadable" in manifest_problem(manifest)


def test_a_read_that_fails_to_decode_names_the_tap_and_images(cache):
    fs = FeatureStore(cache)
    shard = cache / "block_2/c/3/0/0/0"  # items 24..31: data overwritten after the open
    data = bytearray(shard.read_bytes())
    data[:64] = bytes(64)
    shard.write_bytes(bytes(data))
    with pytest.raises(DamagedStoreError, match=r"'block_2' items 2[0-9]\.\.[23][0-9] .*decoded"):
        fs.read("block:2", np.arange(20, 30))
