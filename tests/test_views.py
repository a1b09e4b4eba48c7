"""Cached views: SAM's taps of transformed training images, and exact augmentation from them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from samcache.augment import AugmentSpec, augment
from samcache.features.encoders import build_encoder, sam_around
from samcache.features.extract import extract_features
from samcache.features.specs import feature_set_from_config
from samcache.views import (
    VIEWS,
    ViewTaps,
    apply_view,
    augmentation_for_run,
    tap_under_views,
    view_of,
)

from conftest import tiny_feature_config

VIEWS_USED = ["identity", "hflip", "rot90"]


@pytest.fixture(scope="module")
def view_features(tmp_path_factory, small_store):
    cfg = tiny_feature_config(dtype="float32", taps=["block:2", "neck"], views=VIEWS_USED)
    fset = feature_set_from_config(cfg, "small:views")
    out = tmp_path_factory.mktemp("views") / "features.zarr"
    return extract_features(small_store.path, out, fset, batch_size=8, device="cpu", progress=False)


def test_the_eight_views_are_the_eight_symmetries_of_the_square():
    x = np.arange(9).reshape(3, 3)
    images = {v: apply_view(x, v).tobytes() for v in VIEWS}
    assert len(set(images.values())) == 8
    for fx in (False, True):
        for fy in (False, True):
            for k in range(4):
                y = torch.rot90(
                    torch.flip(
                        torch.flip(torch.from_numpy(x), [-1] if fx else []), [-2] if fy else []
                    ),
                    k,
                    dims=(-2, -1),
                )
                assert apply_view(x, view_of(fx, fy, k)).tolist() == y.tolist()


def test_view_taps_are_sams_features_of_the_transformed_image(small_store, view_features):
    """Against segment-anything's own SamPredictor.set_image on the flipped / turned image."""
    predictor = SamPredictor(sam_around(build_encoder("vit_tiny", seed=0), "vit_tiny"))
    train = small_store.indices("test" if False else "train")
    for i in train[:2]:
        image = np.asarray(small_store.images[int(i)])
        for view in VIEWS_USED:
            predictor.set_image(np.ascontiguousarray(apply_view(image, view, axes=(0, 1))))
            got = view_features.array("neck", view)[int(i)]
            np.testing.assert_allclose(got, predictor.features[0].numpy(), rtol=1e-4, atol=1e-4)
        # ... and they are not the transformed identity taps: warping is only an approximation
        flipped = apply_view(view_features.array("neck")[int(i)], "hflip")
        assert not np.allclose(view_features.array("neck", "hflip")[int(i)], flipped, atol=1e-3)
    test_item = int(small_store.indices("test")[0])  # evaluation images keep the identity only
    assert not np.any(view_features.array("neck", "hflip")[test_item])


def test_views_are_part_of_the_cache_key_and_absent_views_keep_old_keys():
    plain = feature_set_from_config(tiny_feature_config(), "d")
    same = feature_set_from_config(tiny_feature_config(views=["identity"]), "d")
    flipped = feature_set_from_config(tiny_feature_config(views=["identity", "hflip"]), "d")
    assert plain.key() == same.key() != flipped.key()
    assert "views" not in plain.key_fields()
    with pytest.raises(ValueError, match="start with 'identity'"):
        feature_set_from_config(tiny_feature_config(views=["hflip"]), "d")


def test_tap_under_views_takes_each_row_from_its_view():
    arrays = {
        v: np.full((5, 2), k, dtype=np.float32) + np.arange(5)[:, None] * 10
        for k, v in enumerate(VIEWS_USED)
    }
    got = tap_under_views(arrays, np.array([4, 0, 2]), ["rot90", "identity", "hflip"])
    np.testing.assert_array_equal(got[:, 0], [42, 0, 21])
    with pytest.raises(ValueError, match="vflip"):
        tap_under_views(arrays, np.array([1]), ["vflip"])


def test_exact_augmentation_draws_a_cached_view_and_moves_the_image_with_it(
    small_store, view_features
):
    items = small_store.indices("train")[:6]
    source = ViewTaps(view_features, ["neck"], items)
    image = torch.rand(6, 3, 8, 8)
    batch = {
        "label": torch.zeros(6),
        "item": torch.from_numpy(items),
        "image": image,
        "taps": {"neck": torch.zeros(6, 4, 8, 8)},
    }
    spec = AugmentSpec(hflip=True, vflip=False, crop_scale=(1.0, 1.0), rot90=True)
    with pytest.raises(ValueError, match="no taps of views"):  # vflip-like turns are not cached
        augment(batch, spec, torch.Generator().manual_seed(0), view_taps=source)
    spec = AugmentSpec(hflip=True, vflip=False, crop_scale=(1.0, 1.0), rot90=False)
    out = augment(batch, spec, torch.Generator().manual_seed(0), view_taps=source)
    seen = set()
    for j, item in enumerate(items):
        view = next(
            v
            for v in ("identity", "hflip")
            if torch.equal(
                out["image"][j], torch.from_numpy(apply_view(image[j].numpy(), v).copy())
            )
        )
        seen.add(view)
        np.testing.assert_array_equal(
            out["taps"]["neck"][j].numpy(), view_features.array("neck", view)[int(item)]
        )
    assert seen == {"identity", "hflip"}
    with pytest.raises(ValueError, match="crop"):
        augment(batch, AugmentSpec(hflip=True, vflip=False), torch.Generator(), view_taps=source)


def test_a_run_checks_its_views_against_the_cache(small_store, view_features):
    train = small_store.indices("train")
    kw = dict(requires=frozenset({"taps"}), store=view_features, taps=["neck"], train_items=train)
    spec, taps = augmentation_for_run({"vflip": False, "crop_scale": [1, 1]}, "views", **kw)
    assert spec is not None and taps is not None
    with pytest.raises(ValueError, match="vflip"):
        augmentation_for_run({"crop_scale": [1, 1]}, "views", **kw)
    assert augmentation_for_run(True, "none", **kw) == (None, None)
    spec, taps = augmentation_for_run(True, "warp", **kw)
    assert spec == AugmentSpec() and taps is None


def test_a_run_trains_on_cached_views(tmp_path, small_store, view_features):
    from samcache.train import train_run

    method = {
        "head": "sam_attnmel",
        "taps": ["block:2", "neck"],
        "train": {
            "epochs": 1,
            "batch_size": 16,
            "threads": 1,
            "tap_augment": "views",
            "augment": {"vflip": False, "crop_scale": [1.0, 1.0]},
        },
    }
    kw = dict(
        dataset=small_store.path,
        features=view_features.path,
        task="melanoma",
        method_name="v",
        method=method,
        fraction=100,
        seed=0,
    )
    a = train_run(**kw, out=tmp_path / "a.json")
    b = train_run(**kw, out=tmp_path / "b.json")
    assert a["metrics"] == b["metrics"]


def test_a_complete_cache_with_views_is_sound_and_resumes_nothing(
    small_store, view_features, caplog
):
    """Views hold zeros in the rows of non-training images, written like any chunk: every
    flagged item has its chunk on disk, so the integrity checks hold and nothing is redone."""
    import logging

    from samcache.features.specs import feature_set_from_config
    from samcache.integrity import check_store
    from samcache.zarrio import ItemLedger

    assert check_store(view_features.group, ItemLedger.read(view_features.group)) == []
    cfg = tiny_feature_config(dtype="float32", taps=["block:2", "neck"], views=VIEWS_USED)
    fset = feature_set_from_config(cfg, "small:views")
    with caplog.at_level(logging.INFO):
        extract_features(
            small_store.path, view_features.path, fset, batch_size=8, device="cpu", progress=False
        )
    assert "computing 0 images" in caplog.text and "damaged" not in caplog.text
