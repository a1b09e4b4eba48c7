"""samcache's metrics against scikit-learn and medmnist's Evaluator functions."""

from __future__ import annotations

import numpy as np
import pytest
from medmnist.evaluator import Evaluator, getACC, getAUC
from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score

from samcache.data.sources import get_source
from samcache.metrics import compute_metrics

from source_fixtures import medmnist_npz, sha256


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


@pytest.mark.parametrize(
    "flag, task, n_classes, rgb",
    [("retinamnist", "grade", 5, True), ("breastmnist", "diagnosis", 2, False)],
)
def test_acc_and_auc_agree_with_medmnist_evaluator_on_a_converted_store(
    tmp_path, rng, flag, task, n_classes, rgb
):
    # The npz medmnist's Evaluator reads, in a temporary root that is also samcache's raw folder
    # (a file placed by hand, verified against its pinned checksum and converted).
    root = tmp_path / "raw" / flag
    root.mkdir(parents=True)
    npz = medmnist_npz(
        root / f"{flag}.npz", rgb=rgb, n_classes=n_classes, size=8, counts=(4, 2, 150)
    )
    spec = {"source": flag, "size": 28, "image_size": 8, "checksums": {npz.name: sha256(npz)}}
    store = get_source(flag).build(flag, spec, tmp_path / "raw", tmp_path / "s.zarr")
    y = store.labels(task)[store.indices("test")]
    p = _softmax(rng.normal(size=(len(y), n_classes)) + 1.2 * np.eye(n_classes)[y])
    ours = compute_metrics(y, p, store.task(task).type)
    theirs = Evaluator(flag, "test", size=28, root=str(root)).evaluate(p)
    assert ours["auc"] == pytest.approx(theirs.AUC)
    assert ours["acc"] == pytest.approx(theirs.ACC)
    assert store.task(task).medmnist_task == Evaluator(flag, "test", root=str(root)).info["task"]


def test_binary_accuracy_follows_medmnist_on_nearly_equal_logits():
    """Two logits 1e-7 apart: float32 softmax gives (0.49999997, 0.5). Arg-max says class 1,
    medmnist's ``p > 0.5`` says class 0; the metrics module documents medmnist's rule."""
    import torch

    z = torch.tensor([[-0.2505785822868347, -0.25057849287986755]] * 2)
    p = torch.softmax(z, dim=1).double().numpy()
    assert p.argmax(1)[0] == 1 and not p[0, 1] > 0.5  # the two rules disagree here
    tie = np.array([[0.5, 0.5], [0.5, 0.5]])
    for scores in (p, tie):
        for y in ([0, 0], [1, 1], [0, 1]):
            y = np.array(y)
            assert compute_metrics(y, scores, "binary")["acc"] == getACC(y, scores, "binary-class")


@pytest.mark.parametrize("task_type, k", [("binary", 2), ("multiclass", 5), ("multilabel", 4)])
def test_per_image_accuracy_averages_to_medmnists_accuracy(rng, task_type, k):
    from samcache.metrics import accuracy_per_image

    if task_type == "multilabel":
        y = rng.integers(0, 2, (120, k))
        p = 1 / (1 + np.exp(-rng.normal(size=(120, k))))
    else:
        y = rng.integers(0, k, 120)
        p = _softmax(rng.normal(size=(120, k)))
    per_image = accuracy_per_image(y, p, task_type)
    assert per_image.shape == (120,)
    medmnist_task = {"binary": "binary-class", "multiclass": "multi-class"}.get(
        task_type, "multi-label, binary-class"
    )
    assert per_image.mean() == pytest.approx(getACC(y, p, medmnist_task))
