"""The feature cache against segment-anything's own forward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from segment_anything import SamPredictor

from samcache.data.store import write_dataset_store
from samcache.features.encoders import build_encoder, encoder_spec, sam_around
from samcache.features.extract import extract_features
from samcache.features.specs import feature_set_from_config, parse_taps
from samcache.features.store import FeatureStore, read_items
from samcache.heads.slca import slap
from samcache.zarrio import StoreError

from conftest import TAPS, tiny_feature_config


@pytest.fixture(scope="module")
def fp32_features(tmp_path_factory, small_store):
    fset = feature_set_from_config(tiny_feature_config(dtype="float32"), "small:fp32")
    out = tmp_path_factory.mktemp("f32") / "features.zarr"
    return extract_features(small_store.path, out, fset, batch_size=8, device="cpu", progress=False)


def test_neck_equals_sam_predictor_set_image(small_store, fp32_features):
    predictor = SamPredictor(sam_around(build_encoder("vit_tiny", seed=0), "vit_tiny"))
    for i in (0, 9, 59):
        predictor.set_image(np.asarray(small_store.images[i]))
        expected = predictor.features[0].numpy()
        got = fp32_features.read("neck", np.array([i]))[0]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(48, 80), (80, 48), (37, 128)])
def test_neck_equals_sam_predictor_on_non_square_images(tmp_path, shape):
    """Longest side resized to 128, the other side rounded as SAM rounds it, then padded."""
    images = np.random.default_rng(sum(shape)).integers(0, 256, (3, *shape, 3), dtype=np.uint8)
    store = write_dataset_store(
        tmp_path / "ns.zarr",
        name="ns",
        source="test",
        images=images,
        split=np.zeros(3),
        labels={"t": np.zeros(3, dtype=np.int64)},
        tasks={"t": {"type": "binary", "classes": ["a", "b"]}},
    )
    fset = feature_set_from_config(tiny_feature_config(dtype="float32", taps=["neck"]), "ns")
    fs = extract_features(store.path, tmp_path / "f.zarr", fset, batch_size=2, progress=False)
    predictor = SamPredictor(sam_around(build_encoder("vit_tiny", seed=0), "vit_tiny"))
    for i in range(3):
        predictor.set_image(images[i])
        expected = predictor.features[0].numpy()
        np.testing.assert_allclose(
            fs.read("neck", np.array([i]))[0], expected, rtol=1e-4, atol=1e-4
        )


def test_taps_equal_the_blocks_run_by_hand(small_store, fp32_features):
    enc = build_encoder("vit_tiny", seed=0)
    sam = sam_around(enc, "vit_tiny")
    predictor = SamPredictor(sam)
    img = np.asarray(small_store.images[5])
    x = predictor.transform.apply_image(img)
    x = torch.as_tensor(x).permute(2, 0, 1)[None].float()
    x = sam.preprocess(x)
    with torch.no_grad():
        h = enc.patch_embed(x)
        by_hand = {"patch_embed": h}
        h = h + enc.pos_embed
        for i, blk in enumerate(enc.blocks, start=1):
            h = blk(h)
            by_hand[f"block:{i}"] = h
        neck = enc.neck(h.permute(0, 3, 1, 2))
    for tap in TAPS:
        ref = neck if tap == "neck" else by_hand[tap].permute(0, 3, 1, 2)
        got = fp32_features.read(tap, np.array([5]))[0]
        np.testing.assert_allclose(got, ref[0].numpy(), rtol=1e-4, atol=1e-4, err_msg=tap)


def test_float16_cache_is_the_rounded_float32_cache(small_features, fp32_features):
    idx = np.arange(10)
    for tap in TAPS:
        np.testing.assert_array_equal(
            small_features.read(tap, idx), fp32_features.read(tap, idx).astype(np.float16)
        )


def test_pooled_grid_is_the_average_of_the_native_grid(tmp_path, small_store, fp32_features):
    cfg = tiny_feature_config(dtype="float32", taps=[{"name": "block:2", "grid": 2}, "neck"])
    fset = feature_set_from_config(cfg, "small:pooled")
    fs = extract_features(small_store.path, tmp_path / "p.zarr", fset, device="cpu", progress=False)
    native = fp32_features.read("block:2", np.arange(4))
    expected = native.reshape(4, -1, 2, 4, 2, 4).mean(axis=(3, 5))
    np.testing.assert_allclose(fs.read("block:2", np.arange(4)), expected, rtol=1e-5, atol=1e-5)
    assert fs.array("neck").shape[-1] == 8


def test_one_tap_at_several_grids_is_stored_once_per_grid_as_its_head_pools_it(
    tmp_path, small_store, fp32_features
):
    """block:2 natively, pooled exactly to 4 and adaptively to 3 (the grid a stage asks for)."""
    taps = ["block:2", "block:2@4", {"name": "block:2", "grid": 3}, "neck"]
    fset = feature_set_from_config(tiny_feature_config(dtype="float32", taps=taps), "small:m")
    fs = extract_features(small_store.path, tmp_path / "m.zarr", fset, device="cpu", progress=False)
    assert list(fs.taps) == ["block:2", "block:2@4", "block:2@3", "neck"]
    idx = np.arange(6)
    native = torch.from_numpy(fp32_features.read("block:2", idx))
    np.testing.assert_array_equal(fs.read("block:2", idx), native.numpy())
    torch.testing.assert_close(
        torch.from_numpy(fs.read("block:2@4", idx)), F.avg_pool2d(native, 2), rtol=1e-6, atol=1e-6
    )
    # what SLCA's pooling onto a 3 x 3 stage computes from the native map (samcache.heads.slca)
    torch.testing.assert_close(
        torch.from_numpy(fs.read("block:2@3", idx)), slap(native, (3, 3)), rtol=1e-6, atol=1e-6
    )
    assert fs.array("block:2@3").shape[1:] == (128, 3, 3)
    with pytest.raises(StoreError, match="no tap 'block:2@5'"):
        fs.array("block:2@5")
    assert fs.array("neck").shape[-1] == 8  # a name stored at one grid needs no suffix


def test_store_records_its_cache_key(small_features):
    attrs = small_features.attrs
    assert attrs["cache_key"] == small_features.key
    assert attrs["key_fields"]["encoder"]["name"] == "vit_tiny"
    assert attrs["key_fields"]["weights"] == "random:seed=0"
    assert [t["name"] for t in attrs["key_fields"]["taps"]] == TAPS
    assert attrs["key_fields"]["preprocess"]["img_size"] == 128


def test_read_returns_rows_in_the_requested_order(small_features):
    a = small_features.read("neck", np.array([7, 2, 30]))
    b = np.stack([small_features.read("neck", np.array([i]))[0] for i in (7, 2, 30)])
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "indices", [[7, 2, 30], [0, 1, 2, 3], [59, 5, 6, 7, 5, 59, 0], [], list(range(60))[::-1]]
)
@pytest.mark.parametrize("merge_gap_bytes", [0, 1 << 20])  # exact runs; runs merged over gaps
def test_read_items_equals_numpy_indexing(small_features, indices, merge_gap_bytes, monkeypatch):
    monkeypatch.setattr("samcache.features.store.MERGE_GAP_BYTES", merge_gap_bytes)
    every = small_features.array("neck")[:]
    got = read_items(small_features.array("neck"), np.array(indices, dtype=int))
    np.testing.assert_array_equal(got, every[np.array(indices, dtype=int)])


def test_read_items_refuses_indices_out_of_range(small_features):
    with pytest.raises(IndexError, match="0..59"):
        read_items(small_features.array("neck"), np.array([3, 60]))


def test_resume_recomputes_only_missing_batches(tmp_path, small_store, small_features):
    import shutil

    from samcache.zarrio import open_group

    out = tmp_path / "r.zarr"
    shutil.copytree(small_features.path, out)
    g = open_group(out, "r+")
    g["complete"][16:24] = False
    g["neck"][16:24] = 0  # the interrupted batch's data is garbage
    g["patch_embed"][:8] = 0  # a complete batch is not touched
    fset = feature_set_from_config(tiny_feature_config(), "small:test")
    fs = extract_features(small_store.path, out, fset, device="cpu", progress=False)
    np.testing.assert_array_equal(
        fs.read("neck", np.arange(60)), small_features.read("neck", np.arange(60))
    )
    assert not fs.read("patch_embed", np.arange(8)).any()


def test_other_settings_never_mix_into_an_existing_cache(tmp_path, small_store, small_features):
    import shutil

    out = tmp_path / "c.zarr"
    shutil.copytree(small_features.path, out)
    fset = feature_set_from_config(tiny_feature_config(taps=["neck"]), "small:test")
    with pytest.raises(StoreError, match="taps"):
        extract_features(small_store.path, out, fset, device="cpu", progress=False)
    with pytest.raises(StoreError, match="cache key"):
        FeatureStore(out, expect_key=fset.key())


def test_cache_key_tracks_what_changes_values_and_ignores_speed_settings():
    base = feature_set_from_config(tiny_feature_config(), "d:1").key()
    assert (
        feature_set_from_config(tiny_feature_config(batch_size=32, device="cuda"), "d:1").key()
        == base
    )
    for change in (
        {"taps": TAPS[:2]},
        {"grid": 4},
        {"dtype": "float32"},
        {"seed": 1},
        {"compute_dtype": "bfloat16"},
    ):
        assert feature_set_from_config(tiny_feature_config(**change), "d:1").key() != base, change
    assert feature_set_from_config(tiny_feature_config(), "d:2").key() != base


def test_cache_key_tracks_encoder_and_checkpoint():
    def key(**cfg):
        return feature_set_from_config({"taps": ["neck"], **cfg}, "d:1").key()

    assert key(encoder="vit_b") != key(encoder="vit_l")  # official weights of each
    ckpt = {"encoder": "vit_b", "weights": "/ckpt/finetuned.pth"}
    assert key(**ckpt, checkpoint_sha256="a" * 64) != key(**ckpt, checkpoint_sha256="b" * 64)
    assert key(**ckpt, checkpoint_sha256="a" * 64) != key(encoder="vit_b")


def test_bad_taps_are_refused():
    with pytest.raises(ValueError, match="blocks 1..4"):
        feature_set_from_config(tiny_feature_config(taps=["block:5"]), "d")
    with pytest.raises(ValueError, match="must lie in 1..8"):
        parse_taps([{"name": "neck", "grid": 9}])[0].validate(encoder_spec("vit_tiny"))
    with pytest.raises(ValueError, match="same grid"):
        parse_taps(["neck@4", {"name": "neck", "grid": 4}])
