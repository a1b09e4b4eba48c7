"""Training-data fractions: a stratified subsample of the training split per (fraction, seed).

The subsample depends only on the labels of the training split, the fraction and the seed, so
every method trained at the same (dataset, task, fraction, seed) sees exactly the same images.

Each stratum (a class; for multi-label tasks a pattern of label presence, or the rarest label a
row has when patterns are too rare) receives its share of the subsample by largest remainders,
and every stratum keeps at least one image. scikit-learn's ``train_test_split(stratify=...)``
rounds a rare class at a 10 % fraction down to zero images, which would silently drop the
minority class from the smallest training sets, so the allocation is written out here (a dozen
lines of numpy) and the draw inside each stratum uses numpy's seeded generator.
"""

from __future__ import annotations

import hashlib

import numpy as np


def strata(labels: np.ndarray) -> np.ndarray:
    """One stratum id per item: the class, or for multi-label rows the presence pattern."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        return np.unique(labels, return_inverse=True)[1].ravel()
    present = (labels > 0).astype(np.int64)
    _, ids = np.unique(present, axis=0, return_inverse=True)
    ids = ids.ravel()
    if np.bincount(ids).min() >= 2:
        return ids
    # Too many rare combinations: stratify on the rarest label each row has (or "none").
    freq = present.sum(axis=0)
    rarest = np.full(len(present), len(freq), dtype=np.int64)
    for j in np.argsort(freq, kind="stable")[::-1]:  # the rarest label is assigned last and wins
        rarest[present[:, j] == 1] = j
    return np.unique(rarest, return_inverse=True)[1].ravel()


def allocate(counts: np.ndarray, n_keep: int) -> np.ndarray:
    """Per-stratum sample sizes summing to ``n_keep``: largest remainders, at least one each."""
    quota = n_keep * counts / counts.sum()
    k = np.floor(quota).astype(np.int64)
    for i in np.argsort(-(quota - k), kind="stable")[: n_keep - k.sum()]:
        k[i] += 1
    for i in np.flatnonzero(k == 0):  # give an empty stratum one image from the largest
        k[np.argmax(k)] -= 1
        k[i] = 1
    return np.minimum(k, counts)


def fraction_subsample(
    train_indices: np.ndarray, labels: np.ndarray, fraction: float, seed: int
) -> np.ndarray:
    """Sorted indices of the ``fraction`` (percent, 0 < f <= 100) subsample of ``train_indices``.

    ``labels`` holds the labels of ``train_indices`` in the same order.
    """
    train_indices = np.asarray(train_indices)
    if not 0 < fraction <= 100:
        raise ValueError(f"fraction must be in (0, 100], got {fraction}")
    if len(labels) != len(train_indices):
        raise ValueError("labels and train_indices differ in length")
    groups = strata(labels)
    counts = np.bincount(groups)
    n_keep = max(round(len(train_indices) * fraction / 100.0), len(counts))
    if fraction >= 100 or n_keep >= len(train_indices):
        return np.sort(train_indices)
    rng = np.random.default_rng([seed, 0x5AC])
    keep = [
        rng.choice(train_indices[groups == g], size=k, replace=False)
        for g, k in enumerate(allocate(counts, n_keep))
    ]
    return np.sort(np.concatenate(keep))


def subsample_digest(indices: np.ndarray) -> str:
    """A short hash of an index set, stored in run records to prove methods shared a subsample."""
    return hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()[:16]
