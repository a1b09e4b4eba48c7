"""samcache's metrics against scikit-learn and medmnist's Evaluator functions."""

from __future__ import annotations

import numpy as np
import pytest
from medmnist.evaluator import getACC, getAUC
from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score

from samcache.metrics import compute_metrics


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture
def rng():
    return np.random.default_rng(42)


def test_binary_matches_sklearn_and_medmnist(rng):
    y = rng.integers(0, 2, 200)
    p = _softmax(rng.normal(size=(200, 2)) + np.c_[np.zeros(200), y])
    m = compute_metrics(y, p, "binary")
    assert m["auc"] == pytest.approx(roc_auc_score(y, p[:, 1]))
    assert m["acc"] == pytest.approx(accuracy_score(y, p[:, 1] > 0.5))
    assert m["ap"] == pytest.approx(average_precision_score(y, p[:, 1]))
    assert m["auc"] == pytest.approx(getAUC(y, p, "binary-class"))
    assert m["acc"] == pytest.approx(getACC(y, p, "binary-class"))


def test_multiclass_matches_sklearn_ovr_and_medmnist(rng):
    y = rng.integers(0, 5, 300)
    p = _softmax(rng.normal(size=(300, 5)) + 1.5 * np.eye(5)[y])
    m = compute_metrics(y, p, "ordinal")
    assert m["auc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert m["acc"] == pytest.approx(accuracy_score(y, p.argmax(1)))
    assert m["auc"] == pytest.approx(getAUC(y, p, "ordinal-regression"))
    assert m["acc"] == pytest.approx(getACC(y, p, "ordinal-regression"))


def test_multilabel_matches_medmnist(rng):
    y = rng.integers(0, 2, (150, 4))
    p = 1 / (1 + np.exp(-(rng.normal(size=(150, 4)) + 2 * (y - 0.5))))
    m = compute_metrics(y, p, "multilabel")
    assert m["auc"] == pytest.approx(getAUC(y, p, "multi-label, binary-class"))
    assert m["acc"] == pytest.approx(getACC(y, p, "multi-label, binary-class"))
