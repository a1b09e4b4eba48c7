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
the channels and sums the counts over them. It is also scored as ISIC 2018 task 2 is, by the
challenge's scorer (``isic_challenge_scoring.task2.score``, the tests' reference): each image's
counts of one channel (class) are divided by the image's pixel count, and summed over the images;

* ``task2_jaccard_<class>``, ``task2_dice_<class>``: ``TP / (TP + FP + FN)`` and
  ``2 TP / (2 TP + FP + FN)`` of one class's sums (a score of the whole test split, not a mean
  over images);
* ``task2_jaccard_micro``, ``task2_dice_micro``: the same of the sums over the classes too (the
  challenge's "micro average", its overall score being the micro Jaccard);
* ``task2_jaccard_macro``, ``task2_dice_macro``: the mean of the K class scores (SANet's Table 4
  "Macro Avg");
* ``task2_jaccard``, ``task2_dice``: SANet's "Avg JA" and "Avg Dice" (its Tables 2-3), the mean
  of the K class scores and the micro score, K + 1 values.

A class whose sums hold no positive pixel, true or predicted (``TP + FP + FN = 0``), scores 1
in Jaccard and Dice, as the scorer's ``binary_jaccard`` and ``binary_dice`` score a perfect empty
answer. The per-image values keep each class's counts (``tp_<class>`` ...) so that these
metrics can be recomputed and resampled. Values are fractions in [0, 1]; tables print them in
percent. A prediction is a probability map binarised at ``> 0.5``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

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
#: ISIC 2018 task 2 metrics of a task with several mask channels, before the classes' own
#: ``task2_jaccard_<class>`` and ``task2_dice_<class>``.
TASK2_METRICS = (
    "task2_jaccard",
    "task2_dice",
    "task2_jaccard_macro",
    "task2_dice_macro",
    "task2_jaccard_micro",
    "task2_dice_micro",
)


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


def jaccard_dice(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Jaccard and Dice of counts; both 1 where ``tp + fp + fn`` is 0, as the ISIC scorer's
    ``binary_jaccard`` and ``binary_dice`` have it."""
    union = tp + fp + fn
    safe = np.where(union > 0, union, 1.0)
    jaccard = np.where(union > 0, tp / safe, 1.0)
    dice = np.where(union > 0, 2 * tp / np.where(union > 0, 2 * tp + fp + fn, 1.0), 1.0)
    return jaccard, dice


def per_image_metrics(counts: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """(N,) per-image ``jaccard``, ``dice``, ``isic_jaccard``, ``pixel_acc`` (each the mean over
    channels) and the counts summed over channels, from (N, K) or (N,) counts."""
    tp, fp, fn, tn = (np.asarray(counts[k], dtype=np.float64) for k in COUNTS)
    if tp.ndim == 1:
        tp, fp, fn, tn = tp[:, None], fp[:, None], fn[:, None], tn[:, None]
    jaccard, dice = jaccard_dice(tp, fp, fn)
    wrong = fp + fn
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


def paper_average(per_class: np.ndarray, micro: np.ndarray) -> np.ndarray:
    """SANet's "Avg JA" / "Avg Dice": the mean of the K class scores (last axis) and the micro
    score."""
    per_class = np.asarray(per_class, dtype=np.float64)
    return (per_class.sum(-1) + micro) / (per_class.shape[-1] + 1)


def channel_names(k: int, classes: Sequence[str] | None = None) -> tuple[str, ...]:
    """The names of ``k`` mask channels: ``classes``, or ``c0`` ... when not given."""
    if classes is None:
        return tuple(f"c{j}" for j in range(k))
    names = tuple(classes)
    if len(names) != k:
        raise ValueError(f"{len(names)} class names {list(names)} for {k} mask channels")
    clash = sorted(set(names) & {"macro", "micro"})
    if clash or len(set(names)) != k:
        raise ValueError(
            f"class names {list(names)}: each must be distinct and none 'macro' or 'micro', "
            "which name the task-2 averages"
        )
    return names


def class_counts(counts: Mapping[str, np.ndarray], classes: Sequence[str]) -> dict[str, np.ndarray]:
    """(N,) ``tp_<class>``, ``fp_<class>``, ``fn_<class>``, ``tn_<class>`` from (N, K) counts."""
    return {
        f"{c}_{name}": np.asarray(counts[c])[:, j] for j, name in enumerate(classes) for c in COUNTS
    }


def count_classes(per_image: Mapping[str, np.ndarray]) -> list[str]:
    """The classes whose counts ``per_image`` keeps (``tp_<class>`` ...), in order."""
    return [k[3:] for k in per_image if k.startswith("tp_")]


def stacked_class_counts(per_image: Mapping[str, np.ndarray], classes: Sequence[str]) -> np.ndarray:
    """(N, K, 4) counts (tp, fp, fn, tn) of every image and class, from ``class_counts``."""
    return np.stack(
        [
            np.stack([np.asarray(per_image[f"{c}_{name}"], np.float64) for c in COUNTS], -1)
            for name in classes
        ],
        axis=1,
    )


def task2_names(classes: Sequence[str]) -> list[str]:
    """Every task-2 metric of a task with these classes, in the order records list them."""
    per_class = [f"task2_{kind}_{c}" for c in classes for kind in ("jaccard", "dice")]
    return [*TASK2_METRICS, *per_class]


def task2_scores(counts: np.ndarray, classes: Sequence[str]) -> dict[str, np.ndarray]:
    """Every task-2 metric, (...,) each, from (..., N, K, 4) per-image counts (tp, fp, fn, tn)."""
    counts = np.asarray(counts, dtype=np.float64)
    # each image's counts over its pixel count, as the scorer's normalize_confusion_matrix
    norm = counts / counts.sum(-1, keepdims=True)
    tp, fp, fn = (norm[..., i].sum(-2) for i in range(3))  # (..., K): sums over the images
    out = {}
    per_class = jaccard_dice(tp, fp, fn)
    micro = jaccard_dice(tp.sum(-1), fp.sum(-1), fn.sum(-1))
    for kind, scores, pooled in zip(("jaccard", "dice"), per_class, micro, strict=True):
        out[f"task2_{kind}"] = paper_average(scores, pooled)
        out[f"task2_{kind}_macro"] = scores.mean(-1)
        out[f"task2_{kind}_micro"] = pooled
        out |= {f"task2_{kind}_{c}": scores[..., j] for j, c in enumerate(classes)}
    return out


def task2_metrics(per_image: Mapping[str, np.ndarray], classes: Sequence[str]) -> dict[str, float]:
    """A run's task-2 metrics from the per-image counts of its classes (``class_counts``)."""
    scores = task2_scores(stacked_class_counts(per_image, classes), classes)
    return {k: float(scores[k]) for k in task2_names(classes)}


def batch_task2(
    metric: str, classes: Sequence[str]
) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """One task-2 metric of resampled test sets for ``samcache.paired``: ``counts``
    (..., N, K, 4) holds each image's per-class (tp, fp, fn, tn); ``labels`` is unused."""
    if metric not in task2_names(classes):
        raise ValueError(
            f"'{metric}' is not a task-2 metric of classes {list(classes)} "
            f"({', '.join(task2_names(classes))})"
        )

    def f(labels: np.ndarray, counts: np.ndarray) -> np.ndarray:
        return task2_scores(counts, classes)[metric]

    return f


def summarise(per_image: Mapping[str, np.ndarray]) -> dict[str, float]:
    """A run's segmentation metrics from its per-image values (``per_image_metrics``)."""
    out = {k: float(np.mean(per_image[k])) for k in PER_IMAGE_METRICS}
    out["fg_iou"] = float(foreground_iou(per_image["tp"], per_image["fp"], per_image["fn"]))
    return {k: out[k] for k in SEGMENTATION_METRICS}


def segmentation_metrics(
    pred: np.ndarray, truth: np.ndarray, classes: Sequence[str] | None = None
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """The run's metrics and the per-image values behind them, from boolean masks. With K > 1
    mask channels, named by ``classes`` (``c0`` ... when not given), also the task-2 metrics,
    and each class's counts among the per-image values."""
    counts = confusion_counts(pred, truth)
    values = per_image_metrics(counts)
    metrics = summarise(values)
    k = counts["tp"].shape[1]
    if k > 1:
        names = channel_names(k, classes)
        values |= class_counts(counts, names)
        metrics |= task2_metrics(values, names)
    return metrics, values
