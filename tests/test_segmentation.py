"""Segmentation metrics against the ISIC challenge's own scorer and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import jaccard_score

from samcache.segmentation import (
    batch_foreground_iou,
    confusion_counts,
    per_image_metrics,
    segmentation_metrics,
)


def random_masks(n: int = 12, side: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of (truth, prediction) masks with the cases the scorer treats specially: both
    empty, an empty prediction, a perfect one, a poor one (Jaccard below 0.65), good ones."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    truth, pred = [], []
    for _ in range(n):
        cy, cx, r = rng.uniform(6, side - 6, 2).tolist() + [rng.uniform(3, 8)]
        t = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        shift = rng.uniform(-4, 4, 2)
        p = (yy - cy - shift[0]) ** 2 + (xx - cx - shift[1]) ** 2 < (r * rng.uniform(0.6, 1.3)) ** 2
        p ^= rng.random((side, side)) < 0.03
        truth.append(t)
        pred.append(p)
    truth[0][:] = False  # both empty: a perfect answer
    pred[0][:] = False
    pred[1][:] = False  # nothing predicted on a lesion
    pred[2] = truth[2].copy()  # perfect
    return np.stack(truth), np.stack(pred)


def isic_scores(tmp_path, truth: np.ndarray, pred: np.ndarray):
    """The ISIC challenge scorer (isic-challenge-scoring, task 1) on masks written as its PNGs."""
    from isic_challenge_scoring.segmentation import SegmentationScore
    from PIL import Image

    tdir, pdir = tmp_path / "truth", tmp_path / "pred"
    tdir.mkdir()
    pdir.mkdir()
    for i, (t, p) in enumerate(zip(truth, pred, strict=True)):
        Image.fromarray(t.astype(np.uint8) * 255).save(tdir / f"ISIC_{i:07d}_segmentation.png")
        Image.fromarray(p.astype(np.uint8) * 255).save(pdir / f"ISIC_{i:07d}.png")
    return SegmentationScore.from_dir(tdir, pdir)


def test_per_image_metrics_equal_the_isic_challenge_scorer(tmp_path):
    truth, pred = random_masks()
    ours, values = segmentation_metrics(pred, truth)
    score = isic_scores(tmp_path, truth, pred)
    macro = score.macro_average
    assert ours["jaccard"] == pytest.approx(macro["jaccard"], abs=1e-12)
    assert ours["dice"] == pytest.approx(macro["dice"], abs=1e-12)
    assert ours["isic_jaccard"] == pytest.approx(macro["threshold_jaccard"], abs=1e-12)
    assert ours["isic_jaccard"] == pytest.approx(score.overall, abs=1e-12)
    assert ours["pixel_acc"] == pytest.approx(macro["accuracy"], abs=1e-12)
    # the cases were there: a perfect empty image, a zero, a value under the threshold
    assert values["jaccard"][0] == 1.0 and values["jaccard"][1] == 0.0
    assert ((values["jaccard"] > 0) & (values["jaccard"] < 0.65)).any()
    assert ((values["isic_jaccard"] == 0) & (values["jaccard"] > 0)).any()


def test_foreground_iou_is_the_jaccard_index_of_all_test_pixels():
    truth, pred = random_masks(seed=1)
    ours, values = segmentation_metrics(pred, truth)
    assert ours["fg_iou"] == pytest.approx(jaccard_score(truth.ravel(), pred.ravel()), abs=1e-12)
    counts = np.stack([values[k] for k in ("tp", "fp", "fn")], axis=1)
    # the form the paired resampling tests evaluate, on two resamples of the images at once
    idx = np.array([np.arange(len(truth)), np.r_[1 : len(truth), 0]])
    assert batch_foreground_iou(None, counts[idx]) == pytest.approx([ours["fg_iou"]] * 2)


def test_several_channels_average_per_image_values_and_sum_counts():
    truth, pred = random_masks(n=6, seed=2)
    two_t = np.stack([truth, ~truth], axis=1)
    two_p = np.stack([pred, ~pred], axis=1)
    counts = confusion_counts(two_p, two_t)
    assert counts["tp"].shape == (6, 2)
    values = per_image_metrics(counts)
    one = per_image_metrics(confusion_counts(pred, truth))
    inv = per_image_metrics(confusion_counts(~pred, ~truth))
    np.testing.assert_allclose(values["jaccard"], (one["jaccard"] + inv["jaccard"]) / 2)
    np.testing.assert_array_equal(values["tp"], one["tp"] + inv["tp"])
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_counts(pred[:, :10], truth)
