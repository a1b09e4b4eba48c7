"""ISIC 2018 task 2 scores of a task with several mask channels (seed 003): against the
challenge's own scorer, SANet's averages, rescoring, and paired tests."""

from __future__ import annotations

import json

import numpy as np
import pytest

from samcache.predictions import Predictions
from samcache.segmentation import (
    COUNTS,
    PER_IMAGE_METRICS,
    TASK2_METRICS,
    paper_average,
    segmentation_metrics,
    stacked_class_counts,
    task2_names,
    task2_scores,
)

ATTRIBUTES = ("pigment_network", "negative_network", "streaks", "milia_like_cyst", "globules")


def attribute_masks(n: int = 10, side: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(truth, prediction), (N, 5, H, W) boolean, with what the scorer treats specially: blank
    channels in some images, ``streaks`` in no true mask but predicted in some images,
    ``globules`` neither true nor predicted anywhere (a union of zero), a perfect channel."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    truth = np.zeros((n, len(ATTRIBUTES), side, side), dtype=bool)
    pred = np.zeros_like(truth)
    for i in range(n):
        for k in range(4):
            if rng.random() < 0.3:  # a blank channel of this image
                continue
            cy, cx = rng.uniform(5, side - 5, 2)
            r = rng.uniform(2, 7)
            truth[i, k] = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
            dy, dx = rng.uniform(-3, 3, 2)
            pred[i, k] = (yy - cy - dy) ** 2 + (xx - cx - dx) ** 2 < (
                r * rng.uniform(0.5, 1.4)
            ) ** 2
            pred[i, k] ^= rng.random((side, side)) < 0.02
    truth[:, 2] = False  # streaks: absent from every image ...
    pred[: n // 2, 2] = rng.random((n // 2, side, side)) < 0.05  # ... but predicted in some
    pred[:, 4] = False  # globules: neither
    pred[1, 0] = truth[1, 0]  # one perfect channel
    return truth, pred


def official_task2(tmp_path, truth: np.ndarray, pred: np.ndarray) -> dict:
    """``isic_challenge_scoring.task2.score`` on the masks written as the challenge's PNGs."""
    from isic_challenge_scoring.task2 import score
    from PIL import Image

    tdir, pdir = tmp_path / "truth", tmp_path / "pred"
    tdir.mkdir()
    pdir.mkdir()
    for i in range(len(truth)):
        for k, name in enumerate(ATTRIBUTES):
            file = f"ISIC_{i + 12:07d}_attribute_{name}.png"
            Image.fromarray(truth[i, k].astype(np.uint8) * 255).save(tdir / file)
            Image.fromarray(pred[i, k].astype(np.uint8) * 255).save(pdir / file)
    return score(tdir, pdir)


def test_task2_metrics_equal_the_isic_challenge_scorer(tmp_path):
    truth, pred = attribute_masks()
    ours, values = segmentation_metrics(pred, truth, ATTRIBUTES)
    official = official_task2(tmp_path, truth, pred)
    for name in ATTRIBUTES:
        for kind in ("jaccard", "dice"):
            assert ours[f"task2_{kind}_{name}"] == pytest.approx(official[name][kind], abs=1e-12)
    for kind in ("jaccard", "dice"):
        micro = official["micro_average"][kind]
        per_class = [official[name][kind] for name in ATTRIBUTES]
        assert ours[f"task2_{kind}_micro"] == pytest.approx(micro, abs=1e-12)
        assert ours[f"task2_{kind}_macro"] == pytest.approx(np.mean(per_class), abs=1e-12)
        assert ours[f"task2_{kind}"] == pytest.approx((sum(per_class) + micro) / 6, abs=1e-12)
    assert ours["task2_jaccard_micro"] == pytest.approx(official["overall"], abs=1e-12)
    # the cases were there: a union of zero scores 1 (the scorer's rule), false positives only 0
    assert ours["task2_jaccard_globules"] == ours["task2_dice_globules"] == 1.0
    assert ours["task2_jaccard_streaks"] == 0.0
    assert (values["tp_pigment_network"] + values["fn_pigment_network"] == 0).any()
    assert ours["task2_jaccard_pigment_network"] not in (0.0, 1.0)


def test_task2_metrics_leave_the_other_metrics_and_a_single_channel_unchanged():
    truth, pred = attribute_masks(seed=1)
    ours, values = segmentation_metrics(pred, truth, ATTRIBUTES)
    plain, plain_values = segmentation_metrics(pred[:, :1], truth[:, :1], ATTRIBUTES[:1])
    assert not any(k.startswith("task2_") for k in plain)
    assert set(plain_values) == {*PER_IMAGE_METRICS, *COUNTS}
    assert list(ours) == [*plain, *task2_names(ATTRIBUTES)]
    for c in COUNTS:  # per class (N,), and the summed counts still there
        per_class = np.stack([values[f"{c}_{name}"] for name in ATTRIBUTES], axis=1)
        assert per_class.shape == (len(truth), 5)
        np.testing.assert_array_equal(per_class.sum(1), values[c])
    unnamed, _ = segmentation_metrics(pred, truth)
    assert unnamed["task2_jaccard_c2"] == ours["task2_jaccard_streaks"]
    with pytest.raises(ValueError, match="3 class names"):
        segmentation_metrics(pred, truth, ATTRIBUTES[:3])
    with pytest.raises(ValueError, match="'macro' or 'micro'"):
        segmentation_metrics(pred, truth, [*ATTRIBUTES[:4], "micro"])


def test_the_average_is_sanets_avg_ja_and_avg_dice():
    """SANet's Table 4 (its five attribute scores and micro average) gives its Table 3 row
    (37.4 Avg JA, 53.1 Avg Dice) and its Table 4 Macro Avg (34.14)."""
    jaccard = np.array([57.6, 34.6, 25.1, 28.6, 24.8])
    dice = np.array([73.5, 51.5, 40.2, 45.2, 39.8])
    assert round(float(paper_average(jaccard, 53.7)), 1) == 37.4
    assert round(float(paper_average(dice, 68.4)), 1) == 53.1
    assert jaccard.mean() == pytest.approx(34.14, abs=1e-9)
    # the averages of the scores from counts are these: the mean of K + 1 values, and of K
    truth, pred = attribute_masks(seed=2)
    _, values = segmentation_metrics(pred, truth, ATTRIBUTES)
    scores = task2_scores(stacked_class_counts(values, ATTRIBUTES), ATTRIBUTES)
    per_class = np.array([scores[f"task2_jaccard_{name}"] for name in ATTRIBUTES])
    assert scores["task2_jaccard"] == pytest.approx(
        (per_class.sum() + scores["task2_jaccard_micro"]) / 6, abs=1e-15
    )
    assert scores["task2_jaccard_macro"] == pytest.approx(per_class.mean(), abs=1e-15)


def predictions(tmp_path, name: str, pred: np.ndarray, truth: np.ndarray) -> Predictions:
    _, values = segmentation_metrics(pred, truth, ATTRIBUTES)
    n = len(truth)
    return Predictions(
        record=tmp_path / f"{name}.json",
        task_type="segmentation",
        items=np.arange(n),
        labels=np.zeros(n),
        probabilities=np.zeros((n, 0)),
        per_image={k: np.asarray(v, dtype=np.float64) for k, v in values.items()},
    )


def test_task2_metrics_have_a_paired_resampling_test(tmp_path):
    from samcache.compare import image_test

    truth, pred = attribute_masks(n=30, seed=3)
    a = predictions(tmp_path, "a", pred, truth)
    same = image_test("task2_jaccard", a, a, confidence=0.95, resamples=199)
    assert same.estimate == same.low == same.high == 0.0 and same.p_value == 1.0
    # a clearly better prediction: nearly the truth in every image
    rng = np.random.default_rng(4)
    better = predictions(tmp_path, "b", truth ^ (rng.random(truth.shape) < 0.003), truth)
    for metric in ("task2_jaccard", "task2_dice_micro", "task2_jaccard_pigment_network"):
        res = image_test(metric, better, a, confidence=0.95, resamples=199)
        assert res.estimate > 0.1 and res.low > 0 and res.p_value < 0.05, metric
    one_channel = Predictions(**{**a.__dict__, "per_image": {"jaccard": a.per_image["jaccard"]}})
    with pytest.raises(ValueError, match="tp_<class>"):
        image_test("task2_jaccard", one_channel, a, confidence=0.95, resamples=99)
    with pytest.raises(ValueError, match="not a task-2 metric"):
        image_test("task2_jaccard_lesion", a, a, confidence=0.95, resamples=99)


def test_task2_labels_in_tables():
    from samcache.tables import metric_label

    assert metric_label({}, "task2_jaccard") == "Avg JA"
    assert metric_label({}, "task2_dice") == "Avg Dice"
    assert metric_label({}, "task2_jaccard_macro") == "Macro Jaccard"
    assert metric_label({}, "task2_dice_milia_like_cyst") == "Milia like cyst Dice"
    assert metric_label({"metric_labels": {"task2_jaccard_streaks": "ST"}}, "task2_jaccard_streaks")
    assert all(metric_label({}, m) != m for m in TASK2_METRICS)


@pytest.fixture(scope="module")
def attribute_store(tmp_path_factory, small_store):
    """The small synthetic store with its attribute masks as a 5-channel segmentation task."""
    from samcache.data.store import write_dataset_store

    g = small_store.group
    return write_dataset_store(
        tmp_path_factory.mktemp("stores") / "attributes.zarr",
        name="small_attributes",
        source="synthetic",
        images=np.asarray(g["images"][:]),
        split=np.asarray(g["split"][:]),
        labels={"melanoma": np.asarray(g["labels/melanoma"][:])},
        tasks={
            "melanoma": {"type": "binary", "classes": ["benign", "melanoma"]},
            "attributes": {
                "type": "segmentation",
                "classes": list(ATTRIBUTES),
                "mask": "masks/attributes",
            },
        },
        attributes=np.asarray(g["masks/attributes"][:]),
        attribute_names=ATTRIBUTES,
    )


@pytest.mark.usefixtures("one_thread")
def test_a_five_channel_run_records_and_rescores_its_task2_metrics(tmp_path, attribute_store):
    from samcache.predictions import load_predictions
    from samcache.rescore import rescore_record
    from samcache.train import train_run

    method = {
        "head": "aer_unet",
        "image_size": 32,
        "head_args": {"width": 0.125},
        "train": {"epochs": 1, "lr": 1e-3, "batch_size": 8, "threads": 1, "select_metric": "dice"},
    }
    out = tmp_path / "r.json"
    rec = train_run(
        dataset=attribute_store.path,
        features=None,
        task="attributes",
        method_name="aer",
        method=method,
        fraction=100.0,
        seed=0,
        out=out,
    )
    test = rec["metrics"]["test"]
    assert set(task2_names(ATTRIBUTES)) <= set(test)
    assert all(0 <= test[m] <= 1 for m in task2_names(ATTRIBUTES))
    pred = load_predictions(rec, out)
    assert all(f"tn_{name}" in pred.per_image for name in ATTRIBUTES)
    truth = np.asarray(attribute_store.group["masks/attributes"][:])[pred.items] > 0
    masks = np.stack([pred.open_store()["masks"][name][:] for name in ATTRIBUTES], axis=1) > 0
    from_masks, _ = segmentation_metrics(masks, truth, ATTRIBUTES)
    assert from_masks == pytest.approx(test, abs=1e-12)
    again = rescore_record(json.loads(out.read_text()), out)
    assert {k: again[k] for k in test} == pytest.approx(test, abs=1e-12)
