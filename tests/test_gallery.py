"""Galleries: attention maps of real runs, predicted masks from a prediction store, SAM priors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from matplotlib.image import imread

from samcache.gallery import _spread, sam_prior_panels, write_galleries
from samcache.predictions import load_predictions, record_predictions, write_run
from samcache.train import train_run

VGG = {
    "init": "random",
    "image_size": 32,
    "head_args": {"width": 1 / 16},
    "train": {"epochs": 1, "batch_size": 8},
}


def spec(rows, **kw):
    return {
        "name": "g",
        "blocks": [{"dataset": "small", "task": "melanoma", "label": "Small"}],
        "rows": rows,
        "fractions": [100],
        "seeds": [0],
        "metrics": ["acc"],
        **kw,
    }


def test_spread_runs_from_the_first_to_the_last():
    np.testing.assert_array_equal(_spread(np.arange(10), 4), [0, 3, 6, 9])
    np.testing.assert_array_equal(_spread(np.arange(3), 6), [0, 1, 2])


def test_attention_gallery_of_heads_with_maps_and_none_for_heads_without(
    tmp_path, small_store, small_features
):
    paths = []
    for name, method, features in (
        ("attn", {"head": "attnmel_cnn", **VGG}, None),
        ("gap", {"head": "vgg16_gap", **VGG}, None),
        ("lin", {"head": "linear_probe", "train": {"epochs": 1}}, small_features.path),
    ):
        out = tmp_path / "runs" / name / "f100_s0.json"
        train_run(
            dataset=small_store.path,
            features=features,
            task="melanoma",
            method_name=name,
            method=method,
            fraction=100,
            seed=0,
            out=out,
        )
        paths.append(out)
    rows = [{"method": "attn", "label": "Attn"}, {"method": "gap", "label": "GAP"}, "lin"]
    written = write_galleries(spec(rows), paths, tmp_path / "g", n_images=4)
    assert [p.name for p in written] == ["attention_small_melanoma.jpg"]
    image = imread(written[0])
    # four columns of test images; rows: the images, pool3, pool4, CAM
    assert image.shape[1] > image.shape[0] * 0.6 and image.shape[0] > 4 * 1.7 * 100
    none = write_galleries(spec(["lin"]), paths[2:], tmp_path / "none")
    assert none == [] and (tmp_path / "none").is_dir()


def _masks_run(tmp_path, small_store, predicted: np.ndarray, items: np.ndarray, shape=None):
    record = tmp_path / "seg" / "f100_s0.json"
    rec = {
        "schema": 2,
        "dataset": "small",
        "dataset_path": str(small_store.path),
        "task": "melanoma",
        "task_type": "binary",
        "method": "seg",
        "fraction": 100,
        "seed": 0,
        "config": {"head": "seg"},
        "n_train": 10,
        "best_epoch": 1,
        "metrics": {"test": {"acc": 1.0}, "val": {"acc": 1.0}},
        "cache_key": None,
        "code_version": "test",
        "predictions": record_predictions(
            items, np.zeros(len(items)), np.full((len(items), 2), 0.5)
        ),
    }
    write_run(
        record,
        rec,
        masks={"lesion": predicted},
        store_attrs={"mask_targets": {"lesion": "masks/lesion"}},
    )
    return record


def test_segmentation_gallery_from_a_prediction_store(tmp_path, small_store):
    """Segmentation heads store masks beside their records; the gallery ranks them by Jaccard."""
    from samcache.gallery import segmentation_gallery

    items = small_store.indices("test")
    truth = np.asarray(small_store.group["masks/lesion"][:])[items]
    predicted = truth.copy()
    predicted[1::2] = 0  # every other prediction empty
    record = _masks_run(tmp_path, small_store, predicted, items)
    rec = json.loads(record.read_text())
    pred = load_predictions(rec, record)
    assert pred.open_store()["masks/lesion"].shape == truth.shape
    written = write_galleries(spec(["seg"]), [record], tmp_path / "g")
    assert [p.name for p in written] == ["segmentation_seg_small_melanoma.jpg"]
    wrong = _masks_run(tmp_path / "w", small_store, predicted[:, :8, :8], items)
    with pytest.raises(ValueError, match=r"masks/lesion has shape .* dataset's mask size"):
        segmentation_gallery("x", load_predictions(json.loads(wrong.read_text()), wrong),
                             small_store.path, tmp_path / "x.jpg", "x")  # fmt: skip


def test_sam_prior_panels_are_the_image_weighted_by_the_prior(tmp_path, small_store):
    from samcache.zarrio import open_group

    items = small_store.indices("test")
    h, w = small_store.image_shape
    rng = np.random.default_rng(0)
    prior = rng.random((small_store.n_items, h, w)).astype(np.float16)
    prior[items[0]] = 0  # SAM found no mask: the image stays as it is
    g = open_group(tmp_path / "sam_prior.zarr", "w")
    g.create_array("prior", data=prior)
    g.create_array("complete", data=np.ones(small_store.n_items, bool))
    rec = {
        "dataset_path": str(small_store.path),
        "sam_prior_path": str(tmp_path / "sam_prior.zarr"),
        "task_type": "binary",
        "config": {"head": "samaug_c", "head_args": {"floor": 0.25}},
        "predictions": record_predictions(
            items, np.zeros(len(items)), np.full((len(items), 2), 0.5)
        ),
    }
    pred = load_predictions(rec, tmp_path / "r.json")
    got_items, images, got_prior, aug, floor = sam_prior_panels(rec, pred, 3)
    assert floor == 0.25 and got_items[0] == items[0]
    x = images.astype(np.float64) / 255
    weight = 0.25 + 0.75 * prior[got_items].astype(np.float64)
    weight[0] = 1.0
    np.testing.assert_allclose(aug, np.clip(x * weight[..., None], 0, 1), atol=1e-5)
    np.testing.assert_array_equal(got_prior, prior[got_items].astype(np.float32))
