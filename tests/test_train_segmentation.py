"""Segmentation runs: the same run path, records, prediction stores, fractions and comparisons
as classification runs, scored on the store's masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from samcache.augment import AugmentSpec, augment
from samcache.data.fractions import fraction_subsample
from samcache.predictions import load_predictions
from samcache.segmentation import SEGMENTATION_METRICS, segmentation_metrics

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN = {"epochs": 2, "lr": 1e-3, "batch_size": 8, "threads": 1, "select_metric": "jaccard"}
AER = {
    "head": "aer_unet",
    "image_size": 32,
    "head_args": {"width": 0.125},
    "train": {**TRAIN, "augment": {"hflip": True, "vflip": True, "crop_scale": [1.0, 1.0]}},
}


def run(tmp_path, small_store, name="r", method=AER, fraction=100.0, seed=0, **kw):
    from samcache.train import train_run

    return train_run(
        dataset=small_store.path,
        features=kw.pop("features", None),
        task=kw.pop("task", "lesion"),
        method_name=kw.pop("method_name", "aer"),
        method=method,
        fraction=fraction,
        seed=seed,
        out=tmp_path / f"{name}.json",
        **kw,
    )


def test_a_segmentation_run_records_mask_metrics_and_stores_its_masks(tmp_path, small_store):
    rec = run(tmp_path, small_store)
    test = rec["metrics"]["test"]
    assert list(test) == list(SEGMENTATION_METRICS)
    assert all(0 <= v <= 1 for v in test.values())
    assert (
        rec["task_type"] == "segmentation" and rec["train_settings"]["select_metric"] == "jaccard"
    )
    pred = load_predictions(rec, tmp_path / "r.json")
    n_test = len(small_store.indices("test"))
    assert len(pred.items) == n_test
    for k in ("jaccard", "dice", "isic_jaccard", "pixel_acc", "tp", "fp", "fn", "tn"):
        assert len(pred.per_image[k]) == n_test
        if k in SEGMENTATION_METRICS:
            assert np.mean(pred.per_image[k]) == pytest.approx(test[k])
    g = pred.open_store()
    masks = np.asarray(g["masks"]["lesion"][:])
    assert masks.shape == (n_test, 64, 64)  # the store's mask size, not the head's 32 px
    assert dict(g.attrs["mask_targets"]) == {"lesion": "masks/lesion"}
    truth = np.asarray(small_store.group["masks/lesion"][:])[pred.items] > 0
    ours, _ = segmentation_metrics(masks > 0, truth)
    assert ours == pytest.approx(test)
    # rescored from the stored masks: the same metrics, and an external scorer gets the masks
    from samcache.rescore import rescore_record

    scorer = {"pixels": lambda t, p: float((t == p).mean())}
    again = rescore_record(
        json.loads((tmp_path / "r.json").read_text()), tmp_path / "r.json", scorer
    )
    assert {k: again[k] for k in test} == pytest.approx(test)
    assert again["pixels"] == pytest.approx(test["pixel_acc"])


def test_a_segmentation_run_is_deterministic_on_cpu(tmp_path, small_store):
    a = run(tmp_path, small_store, "a", seed=1, fraction=50)
    b = run(tmp_path, small_store, "b", seed=1, fraction=50)
    assert a["metrics"] == b["metrics"] and a["history"] == b["history"]
    assert a["predictions"] == {**b["predictions"], "store": a["predictions"]["store"]}


@pytest.mark.parametrize("fraction", [10, 50, 100])
def test_segmentation_runs_train_on_the_shared_fraction_subsample(tmp_path, small_store, fraction):
    method = {**AER, "train": {**TRAIN, "epochs": 1}}
    rec = run(tmp_path, small_store, method=method, fraction=fraction)
    train = small_store.indices("train")
    subset = fraction_subsample(train, small_store.stratify_on("lesion")[train], fraction, 0)
    assert rec["n_train"] == len(subset)


def test_sam_pyramid_heads_train_on_cached_taps(tmp_path, small_store, small_features):
    method = {
        "head": "sam_thwin_unet",
        "features": "x",
        "head_args": {"width": 0.125, "spatial_attention": True},
        "train": {**TRAIN, "epochs": 1, "select_metric": "fg_iou"},
    }
    rec = run(tmp_path, small_store, method=method, features=small_features.path)
    assert rec["cache_key"] == small_features.key
    assert rec["head_info"]["levels"] == ["patch_embed", "block:1", "block:2", "block:4", "neck"]


@pytest.mark.parametrize(
    "head, task, train, match",
    [
        ("aer_unet", "melanoma", TRAIN, "predicts masks"),
        ("vgg16", "lesion", TRAIN, "predicts image labels"),
        ("aer_unet", "lesion", {**TRAIN, "select_metric": "auc"}, "train.select_metric"),
        ("aer_unet", "lesion", {**TRAIN, "oversample": True}, "train.oversample"),
        ("aer_unet", "lesion", {**TRAIN, "augment": {"crop_size": 24}}, "crop_size"),
    ],
)
def test_heads_and_settings_that_do_not_fit_a_segmentation_task_are_refused(
    tmp_path, small_store, head, task, train, match
):
    method = {"head": head, "image_size": 32, "init": "random" if head == "vgg16" else None}
    method = {k: v for k, v in method.items() if v is not None}
    method |= {"train": train, "head_args": {"width": 0.125}}
    with pytest.raises(ValueError, match=match):
        run(tmp_path, small_store, method=method, task=task)


@pytest.mark.parametrize("spec", [AugmentSpec(), AugmentSpec(rot90=True, crop_scale=(0.6, 1.0))])
def test_augmentation_moves_the_mask_with_the_image(spec):
    from samcache.augment import random_affine, warp

    gen = torch.Generator().manual_seed(0)
    mask = (torch.rand(6, 1, 16, 16, generator=gen) > 0.5).float()
    image = torch.rand(6, 3, 16, 16, generator=gen)
    batch = {"label": torch.zeros(6), "image": image, "target": mask}
    out = augment(batch, spec, torch.Generator().manual_seed(1))
    assert not torch.equal(out["target"], mask)  # it moved ...
    theta = random_affine(6, spec, torch.Generator().manual_seed(1))  # ... by the image's draw
    torch.testing.assert_close(out["image"], warp(image, theta, "bilinear"))
    torch.testing.assert_close(out["target"], warp(mask, theta, "nearest"))
    assert set(out["target"].unique().tolist()) <= {0.0, 1.0}  # still a mask
    if spec.crop_scale == (1.0, 1.0):  # flips only: exact permutations of both
        flipped = warp(mask.expand(-1, 3, -1, -1), theta, "bilinear")[:, :1]
        torch.testing.assert_close(flipped, out["target"])


def test_views_move_the_mask_as_they_flip_the_image():
    from samcache.views import augment_by_views

    mask = (torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    batch = {
        "label": torch.zeros(8),
        "item": torch.arange(8),
        "image": mask.expand(-1, 3, -1, -1).clone(),
        "target": mask,
        "taps": {"neck": torch.zeros(8, 2, 4, 4)},
    }

    def view_taps(items, names):
        return {"neck": torch.zeros(len(items), 2, 4, 4)}

    spec = AugmentSpec(vflip=False, crop_scale=(1.0, 1.0))
    out = augment_by_views(batch, spec, torch.Generator().manual_seed(0), view_taps)
    torch.testing.assert_close(out["image"][:, :1], out["target"])
    assert not torch.equal(out["target"], mask)


def test_segmentation_rows_compare_image_by_image_and_on_pooled_counts(tmp_path, small_store):
    from samcache.compare import compare_table
    from samcache.tables import load_records

    plain = {**AER, "head_args": {"width": 0.125, "attention": False, "residual": False}}
    a = run(tmp_path, small_store, "a", method_name="a")
    b = run(tmp_path, small_store, "b", method=plain, method_name="b")
    assert a["subsample_digest"] == b["subsample_digest"]
    spec = {
        "name": "t",
        "blocks": [{"dataset": "small", "task": "lesion"}],
        "rows": [{"method": "b"}, {"method": "a", "baseline": "b"}],
        "fractions": [100],
        "seeds": [0],
        "metrics": ["jaccard", "fg_iou"],
        "comparisons": {"resamples": 199},
    }
    comp = compare_table(spec, load_records([tmp_path / "a.json", tmp_path / "b.json"]))
    assert list(comp.metric) == ["jaccard", "fg_iou"]
    assert (comp.test == "permutation").all() and np.isfinite(comp.p).all()
    diff = a["metrics"]["test"]["fg_iou"] - b["metrics"]["test"]["fg_iou"]
    assert comp.set_index("metric").loc["fg_iou", "seed_diff_pp"] == pytest.approx(100 * diff)


def test_the_cli_trains_a_segmentation_run_alone(tmp_path, small_store, caplog):
    """`samcache train`, the path of `sweep.runs_per_job: 1` and of a record asked for alone,
    trains a segmentation run and logs its mask metrics (a classification run logs acc/auc)."""
    from samcache.cli import main

    method = {**AER, "train": {**TRAIN, "epochs": 1}}
    record = tmp_path / "run.json"
    argv = ["train", "--dataset", str(small_store.path), "--task", "lesion"]
    argv += ["--method-name", "aer", "--spec", json.dumps(method), "--fraction", "100"]
    argv += ["--seed", "0", "--out", str(record)]
    with caplog.at_level("INFO", logger="samcache"):
        assert main(argv) == 0
    test = json.loads(record.read_text())["metrics"]["test"]
    assert f"jaccard {test['jaccard']:.4f}" in caplog.text
    assert "acc" not in test
