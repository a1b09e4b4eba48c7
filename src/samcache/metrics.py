"""Classification metrics with medmnist's conventions, computed with scikit-learn.

* ACC: medmnist's rules. A binary task predicts the positive class when its probability exceeds
  0.5 (``score[:, -1] > 0.5``; a tie at 0.5 is negative); arg-max would differ from it when
  float32 rounding leaves two nearly equal probabilities summing to slightly less or more than
  one. Tasks with more classes use the arg-max, multi-label tasks the mean over labels of the
  0.5-threshold accuracy.
* AUC: binary ROC AUC of the positive class; for several classes the unweighted mean of the
  one-vs-rest AUCs (medmnist's ``getAUC``); for multi-label tasks the mean over labels.
* AP: average precision of the positive class (seed 001's official ISIC 2016 metric); macro
  one-vs-rest for several classes.

Scores are probabilities: softmax outputs for single-label tasks, sigmoid outputs for
multi-label ones. All values are fractions in [0, 1]; tables print them in percent.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score

METRICS = ("acc", "auc", "ap")


def _ovr(fn, y_true: np.ndarray, scores: np.ndarray, multilabel: bool) -> float:
    vals = []
    for k in range(scores.shape[1]):
        target = y_true[:, k] if multilabel else (y_true == k).astype(int)
        if target.min() == target.max():  # a class absent from this split has no AUC
            continue
        vals.append(fn(target, scores[:, k]))
    return float(np.mean(vals)) if vals else float("nan")


def accuracy(y_true: np.ndarray, scores: np.ndarray, task_type: str) -> float:
    if task_type == "multilabel":
        pred = scores > 0.5
        return float(
            np.mean([accuracy_score(y_true[:, k], pred[:, k]) for k in range(y_true.shape[1])])
        )
    if task_type == "binary":
        return float(accuracy_score(y_true, scores[:, -1] > 0.5))
    return float(accuracy_score(y_true, scores.argmax(axis=1)))


def accuracy_per_image(y_true: np.ndarray, scores: np.ndarray, task_type: str) -> np.ndarray:
    """(N,) share of each image's labels predicted right: ``accuracy`` is its mean, and paired
    tests compare two methods image by image. Binary tasks use medmnist's ``p > 0.5`` rule."""
    y_true, scores = np.asarray(y_true), np.asarray(scores)
    if task_type == "multilabel":
        return ((scores > 0.5) == (y_true > 0)).mean(axis=1)
    if task_type == "binary":
        return ((scores[:, -1] > 0.5) == (y_true > 0)).astype(np.float64)
    return (scores.argmax(axis=1) == y_true).astype(np.float64)


def auc(y_true: np.ndarray, scores: np.ndarray, task_type: str) -> float:
    if task_type == "binary":
        return float(roc_auc_score(y_true, scores[:, -1]))
    return _ovr(roc_auc_score, y_true, scores, task_type == "multilabel")


def average_precision(y_true: np.ndarray, scores: np.ndarray, task_type: str) -> float:
    if task_type == "binary":
        return float(average_precision_score(y_true, scores[:, -1]))
    return _ovr(average_precision_score, y_true, scores, task_type == "multilabel")


def compute_metrics(y_true: np.ndarray, scores: np.ndarray, task_type: str) -> dict[str, float]:
    y_true = np.asarray(y_true)
    scores = np.asarray(scores, dtype=np.float64)
    return {
        "acc": accuracy(y_true, scores, task_type),
        "auc": auc(y_true, scores, task_type),
        "ap": average_precision(y_true, scores, task_type),
    }
