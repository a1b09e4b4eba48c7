"""Paired statistics: is one method better than another on the same test images and seeds?

Two methods of a table row and its baseline row are paired twice over: at the same training
fraction and seed they train on the same subsample, and they are tested on the same images.

* **Over seeds** (what the table's cells average): the per-seed differences of the recorded
  metrics, their mean and a Student-t confidence interval (``seed_interval``).
* **On the shared test images, per seed**: binary AUC by DeLong's test (DeLong, DeLong and
  Clarke-Pearson 1988; structural components from midranks as in Sun and Xu 2014); every other
  metric by a paired sign-flip permutation test (each image's two predictions swapped at
  random; ``scipy.stats.permutation_test``), with a paired percentile bootstrap interval over
  the images (``scipy.stats.bootstrap``). For accuracy the permutation test is the exact
  McNemar test.
* **Many comparisons**: Holm's step-down adjustment over every test of a table.

Resampling evaluates a metric thousands of times; scikit-learn's functions cost 1-10 ms a call,
so the resampling statistics below are rank formulations that evaluate all resamples at once
(tests check them against scikit-learn value by value).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats

#: Metrics that are a mean over images of a per-image value (accuracy, Jaccard indices).
PER_IMAGE = "per_image"


@dataclass(frozen=True)
class PairedResult:
    """A difference ``a - b`` with its confidence interval and two-sided p-value."""

    estimate: float
    low: float
    high: float
    p_value: float
    method: str


# --- over seeds --------------------------------------------------------------------------------


def seed_interval(diffs: np.ndarray, confidence: float = 0.95) -> PairedResult:
    """Mean of per-seed differences with a Student-t interval (``scipy.stats.ttest_1samp``).

    One seed has no interval (NaN); identical differences have a zero-width one.
    """
    d = np.asarray(diffs, dtype=np.float64)
    mean = float(d.mean())
    if len(d) < 2:
        return PairedResult(mean, np.nan, np.nan, np.nan, "t over seeds")
    if np.all(d == d[0]):
        return PairedResult(mean, mean, mean, 1.0 if mean == 0 else 0.0, "t over seeds")
    res = stats.ttest_1samp(d, 0.0)
    ci = res.confidence_interval(confidence_level=confidence)
    return PairedResult(mean, float(ci.low), float(ci.high), float(res.pvalue), "t over seeds")


# --- DeLong ----------------------------------------------------------------------------------


def delong_placements(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components (placement values) of one score.

    ``v10[i]``: the share of negatives that positive ``i`` outscores, ties counting one half;
    ``v01[j]``: the share of positives that outscore negative ``j``. Their means are the AUC.
    """
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    m, n = int(y.sum()), int((~y).sum())
    if m == 0 or n == 0:
        raise ValueError("DeLong's test needs positive and negative test images")
    ranks = stats.rankdata(s)
    v10 = (ranks[y] - stats.rankdata(s[y])) / n
    v01 = 1.0 - (ranks[~y] - stats.rankdata(s[~y])) / m
    return v10, v01


def delong_covariance(v10: np.ndarray, v01: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and their covariance matrix from (k, m) and (k, n) placements of k scores."""
    v10, v01 = np.atleast_2d(v10), np.atleast_2d(v01)
    m, n = v10.shape[1], v01.shape[1]
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return v10.mean(axis=1), cov


def delong_difference(aucs: np.ndarray, cov: np.ndarray, confidence: float = 0.95) -> PairedResult:
    """DeLong's test of ``aucs[0] - aucs[1]``: z = difference / its standard error."""
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    if var <= 0.0:  # identical rankings (or both perfect): no variance to test against
        return PairedResult(diff, diff, diff, 1.0 if diff == 0 else 0.0, "DeLong")
    se = np.sqrt(var)
    half = stats.norm.ppf(0.5 + confidence / 2.0) * se
    p = 2.0 * stats.norm.sf(abs(diff) / se)
    return PairedResult(diff, diff - half, diff + half, float(p), "DeLong")


def delong_test(
    labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, confidence: float = 0.95
) -> PairedResult:
    """DeLong's test for two correlated ROC curves: AUC of ``scores_a`` minus that of ``b``."""
    a10, a01 = delong_placements(labels, scores_a)
    b10, b01 = delong_placements(labels, scores_b)
    if len(a10) < 2 or len(a01) < 2:  # no variance estimate from a single placement
        diff = float(a10.mean() - b10.mean())
        return PairedResult(diff, np.nan, np.nan, np.nan, "DeLong")
    aucs, cov = delong_covariance(np.stack([a10, b10]), np.stack([a01, b01]))
    return delong_difference(aucs, cov, confidence)


# --- metrics of many resamples at once ---------------------------------------------------------


def batch_auc(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC AUC of each row: ``labels`` (R, N) in {0, 1}, ``scores`` (R, N); NaN for a row
    with one class only. The Mann-Whitney statistic from midranks (ties count one half)."""
    y = np.asarray(labels, dtype=bool)
    ranks = stats.rankdata(scores, axis=-1)
    m = y.sum(axis=-1)
    n = y.shape[-1] - m
    u = np.where(y, ranks, 0.0).sum(axis=-1) - m * (m + 1) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((m > 0) & (n > 0), u / (m * n), np.nan)


def batch_average_precision(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Average precision of each row as scikit-learn defines it (a step function over the
    distinct score thresholds, tied scores one threshold); NaN for a row without positives."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.broadcast_to(np.asarray(labels, dtype=np.float64), s.shape)
    order = np.argsort(-s, axis=-1, kind="stable")
    s_sorted = np.take_along_axis(s, order, axis=-1)
    tp = np.cumsum(np.take_along_axis(y, order, axis=-1), axis=-1)
    # a threshold ends where the next score differs (and at the last image)
    last = np.ones_like(s_sorted, dtype=bool)
    last[..., :-1] = s_sorted[..., :-1] != s_sorted[..., 1:]
    rank = np.arange(1, s.shape[-1] + 1)
    at_end = np.where(last, tp, 0.0)
    before = np.maximum.accumulate(at_end, axis=-1)
    before = np.concatenate([np.zeros_like(before[..., :1]), before[..., :-1]], axis=-1)
    gained = np.where(last, tp - before, 0.0)
    total = tp[..., -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (gained * tp / rank).sum(axis=-1) / total, np.nan)


def batch_metric(name: str, task_type: str) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """``f(labels, scores) -> (R,)`` for ``auc`` or ``ap`` with samcache.metrics' conventions:
    the positive class of a binary task, else the unweighted mean over the classes (labels)
    present in the resample, one-vs-rest. ``labels`` (R, N) or (R, N, K); ``scores`` (R, N, K)."""
    one = {"auc": batch_auc, "ap": batch_average_precision}[name]

    def f(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if task_type == "binary":
            return one(labels, scores[..., -1])
        per_class = []
        for k in range(scores.shape[-1]):
            target = labels[..., k] if task_type == "multilabel" else labels == k
            t = np.asarray(target, dtype=bool)
            value = one(t, scores[..., k])
            present = t.any(axis=-1) & ~t.all(axis=-1)
            per_class.append(np.where(present, value, np.nan))
        with warnings.catch_warnings():  # a resample may hold no class twice: NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(np.stack(per_class), axis=0)

    return f


# --- on the test images of one seed ------------------------------------------------------------


def paired_mean_test(
    a: np.ndarray,
    b: np.ndarray,
    *,
    resamples: int = 9999,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedResult:
    """Difference of the means of per-image values ``a`` and ``b`` (accuracy, Jaccard index):
    sign-flip permutation test and paired percentile bootstrap interval."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)

    def mean_diff(x, y, axis=-1):
        return np.mean(x - y, axis=axis)

    estimate = float(mean_diff(a, b))
    if np.array_equal(a, b):
        return PairedResult(estimate, 0.0, 0.0, 1.0, "permutation")
    perm = stats.permutation_test(
        (a, b),
        mean_diff,
        permutation_type="samples",
        vectorized=True,
        n_resamples=resamples,
        rng=np.random.default_rng(seed),
    )
    boot = stats.bootstrap(
        (a, b),
        mean_diff,
        paired=True,
        vectorized=True,
        n_resamples=resamples,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    ci = boot.confidence_interval
    return PairedResult(estimate, float(ci.low), float(ci.high), float(perm.pvalue), "permutation")


def paired_resampling_test(
    labels: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    metric: Callable[[np.ndarray, np.ndarray], np.ndarray],
    *,
    resamples: int = 9999,
    confidence: float = 0.95,
    seed: int = 0,
    batch: int = 1000,
) -> PairedResult:
    """``metric(a) - metric(b)`` for a metric of the whole test set (AP, multi-class AUC):
    sign-flip permutation test (each image's two predictions swapped at random) and paired
    percentile bootstrap interval over the images. ``metric`` is a ``batch_metric``."""
    labels = np.asarray(labels)
    sa, sb = np.asarray(scores_a, np.float64), np.asarray(scores_b, np.float64)
    n = len(labels)
    stacked = np.concatenate([sa, sb])  # row i: a's prediction of image i; row n + i: b's

    def swapped(ia, ib, axis=-1):
        return metric(labels, stacked[ia]) - metric(labels, stacked[ib])

    def resampled(idx, axis=-1):
        y = labels[idx]
        return metric(y, sa[idx]) - metric(y, sb[idx])

    own = np.arange(n)
    estimate = float(swapped(own[None], own[None] + n)[0])
    if np.array_equal(sa, sb):
        return PairedResult(estimate, 0.0, 0.0, 1.0, "permutation")
    perm = stats.permutation_test(
        (own, own + n),
        swapped,
        permutation_type="samples",
        vectorized=True,
        n_resamples=resamples,
        batch=batch,
        rng=np.random.default_rng(seed),
    )
    with np.errstate(invalid="ignore"):
        boot = stats.bootstrap(
            (own,),
            resampled,
            vectorized=True,
            n_resamples=resamples,
            batch=batch,
            confidence_level=confidence,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    ci = boot.confidence_interval
    return PairedResult(estimate, float(ci.low), float(ci.high), float(perm.pvalue), "permutation")


# --- many comparisons --------------------------------------------------------------------------


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979); NaN p-values stay NaN and do not count."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    scaled = (m - np.arange(m)) * p[order]
    out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return out
