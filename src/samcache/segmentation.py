"""Segmentation metrics: predicted masks against a store's masks, per image and per run.

Seeds 002-004 score binary masks. Every metric here starts from the per-image confusion counts
(true/false positives/negatives over the pixels of one image and mask channel), as the ISIC
challenge's own scorer does (``isic-challenge-scoring``, task 1, which the tests use as the
reference):

* ``jaccard``: the mean over images of ``TP / (TP + FP + FN)`` (AER-Net's eq. 2 and 4 per
  image, "JSI médio"); 1 for an image whose mask and prediction are both empty;
* ``dice``: the mean over images of ``2 TP / (2 TP + FP + FN)`` (AER-Net's eq. 3 and 5); 1 when
  both are empty;
* ``isic_jaccard``: the ISIC 2018 task 1 score, the mean of the per-image Jaccard index with
  every value below 0.65 counted as 0;
* ``pixel_acc``: the mean over images of ``(TP + TN) / pixels`` (Thwin & Park's "accuracy";
  stores hold images of one size, so this is also the share of all test pixels right);
* ``fg_iou``: foreground intersection over union of the whole test split,
  ``ΣTP / Σ(TP + FP + FN)`` over all images (Thwin & Park's "IoU": one confusion matrix for the
  split, as Keras' IoU metrics accumulate it).

A task with several mask channels (seed 003's attributes) averages each per-image value over
the channels and sums the counts over them. Values are fractions in [0, 1]; tables print them
in percent. A prediction is a probability map binarised at ``> 0.5``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

#: Test metrics of a segmentation run, in the order tables list them by default.
SEGMENTATION_METRICS = ("jaccard", "dice", "isic_jaccard", "pixel_acc", "fg_iou")
#: The metrics that are means over images of a per-image value (paired tests compare those
#: image by image); ``fg_iou`` is a ratio of sums over the split.
PER_IMAGE_METRICS = ("jaccard", "dice", "isic_jaccard", "pixel_acc")
#: Per-image confusion counts kept in a record (``fg_iou`` and its resampling tests use them).
COUNTS = ("tp", "fp", "fn", "tn")
#: ISIC 2018 task 1: a per-image Jaccard index below this counts as 0.
ISIC_THRESHOLD = 0.65


def _channels(x: np.ndarray) -> np.ndarray:
    """(N, H, W) or (N, K, H, W) masks as boolean (N, K, H*W)."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise ValueError(f"masks must be (N, H, W) or (N, K, H, W), got shape {x.shape}")
    return x.reshape(*x.shape[:2], -1).astype(bool)


def confusion_counts(pred: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """Per image and channel, (N, K) int64 counts ``tp``, ``fp``, ``fn``, ``tn``."""
    p, t = _channels(pred), _channels(truth)
    if p.shape != t.shape:
        raise ValueError(f"predicted masks {p.shape} and true masks {t.shape} differ in shape")
    tp = (p & t).sum(-1)
    fp = (p & ~t).sum(-1)
    fn = (~p & t).sum(-1)
    tn = p.shape[-1] - tp - fp - fn
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn}


def per_image_metrics(counts: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """(N,) per-image ``jaccard``, ``dice``, ``isic_jaccard``, ``pixel_acc`` (each the mean over
    channels) and the counts summed over channels, from (N, K) or (N,) counts."""
    tp, fp, fn, tn = (np.asarray(counts[k], dtype=np.float64) for k in COUNTS)
    if tp.ndim == 1:
        tp, fp, fn, tn = tp[:, None], fp[:, None], fn[:, None], tn[:, None]
    wrong = fp + fn
    union = tp + wrong
    safe = np.where(union > 0, union, 1.0)
    jaccard = np.where(union > 0, tp / safe, 1.0)
    dice = np.where(union > 0, 2 * tp / np.where(union > 0, 2 * tp + wrong, 1.0), 1.0)
    return {
        "jaccard": jaccard.mean(1),
        "dice": dice.mean(1),
        "isic_jaccard": np.where(jaccard >= ISIC_THRESHOLD, jaccard, 0.0).mean(1),
        "pixel_acc": ((tp + tn) / (tp + tn + wrong)).mean(1),
        **{k: v.sum(1) for k, v in zip(COUNTS, (tp, fp, fn, tn), strict=True)},
    }


def foreground_iou(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """``Σ tp / Σ (tp + fp + fn)`` over the last axis (images); 1 where nothing is foreground."""
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))
    inter, union = tp.sum(-1), (tp + fp + fn).sum(-1)
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 1.0)


def batch_foreground_iou(labels: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``fg_iou`` of resampled test sets for ``samcache.paired``: ``counts`` (..., N, 3) holds
    each image's (tp, fp, fn); ``labels`` is unused (the counts already compare with them)."""
    counts = np.asarray(counts, dtype=np.float64)
    return foreground_iou(counts[..., 0], counts[..., 1], counts[..., 2])


def summarise(per_image: Mapping[str, np.ndarray]) -> dict[str, float]:
    """A run's segmentation metrics from its per-image values (``per_image_metrics``)."""
    out = {k: float(np.mean(per_image[k])) for k in PER_IMAGE_METRICS}
    out["fg_iou"] = float(foreground_iou(per_image["tp"], per_image["fp"], per_image["fn"]))
    return {k: out[k] for k in SEGMENTATION_METRICS}


def segmentation_metrics(
    pred: np.ndarray, truth: np.ndarray
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """The run's metrics and the per-image values behind them, from boolean masks."""
    values = per_image_metrics(confusion_counts(pred, truth))
    return summarise(values), values
