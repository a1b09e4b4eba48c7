from __future__ import annotations

import numpy as np
import pytest

from samcache.data.fractions import fraction_subsample, strata, subsample_digest


@pytest.fixture
def labels():
    rng = np.random.default_rng(0)
    return rng.choice(5, size=400, p=[0.4, 0.25, 0.15, 0.12, 0.08])


@pytest.mark.parametrize("fraction", [10, 25, 50])
def test_subsample_is_stratified(labels, fraction):
    idx = np.arange(1000, 1400)  # arbitrary training indices
    keep = fraction_subsample(idx, labels, fraction, seed=1)
    assert len(keep) == round(400 * fraction / 100)
    kept_labels = labels[np.searchsorted(idx, keep)]
    for c in range(5):
        expected = (labels == c).sum() * fraction / 100
        assert abs((kept_labels == c).sum() - expected) <= 1


def test_subsample_is_stable_per_seed_and_varies_across_seeds(labels):
    idx = np.arange(400)
    a = fraction_subsample(idx, labels, 10, seed=3)
    assert np.array_equal(a, fraction_subsample(idx, labels, 10, seed=3))
    assert subsample_digest(a) == subsample_digest(fraction_subsample(idx, labels, 10, seed=3))
    assert not np.array_equal(a, fraction_subsample(idx, labels, 10, seed=4))


def test_full_fraction_is_the_whole_training_split(labels):
    idx = np.arange(400)[::-1]
    assert np.array_equal(fraction_subsample(idx, labels, 100, seed=0), np.arange(400))


def test_every_class_survives_a_tiny_fraction():
    labels = np.array([0] * 95 + [1] * 5)
    keep = fraction_subsample(np.arange(100), labels, 2, seed=0)
    assert set(labels[keep]) == {0, 1}


def test_multilabel_strata_use_label_presence():
    y = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [1, 1], [1, 1], [0, 0], [0, 0]])
    s = strata(y)
    assert len(set(s)) == 4 and s[0] == s[1] and s[2] == s[3] and s[0] != s[2]


def test_bad_fraction():
    with pytest.raises(ValueError):
        fraction_subsample(np.arange(10), np.zeros(10), 0, seed=0)


def test_mask_presence_strata_keep_a_rare_attribute_at_ten_percent():
    # Segmentation tasks stratify on per-channel mask presence (DatasetStore.stratify_on).
    rng = np.random.default_rng(1)
    presence = np.zeros((300, 3), np.uint8)
    presence[:, 0] = rng.uniform(size=300) < 0.6
    presence[:, 1] = rng.uniform(size=300) < 0.3
    presence[rng.choice(300, 6, replace=False), 2] = 1  # a rare attribute
    for seed in range(5):
        keep = fraction_subsample(np.arange(300), presence, 10, seed)
        assert presence[keep, 2].any()
        assert abs(presence[keep, 0].mean() - presence[:, 0].mean()) < 0.1
