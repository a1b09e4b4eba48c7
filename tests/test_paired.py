"""Paired statistics against published worked examples, textbook identities and scipy/sklearn."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import average_precision_score, roc_auc_score

from samcache.paired import (
    batch_auc,
    batch_average_precision,
    batch_metric,
    delong_covariance,
    delong_difference,
    delong_placements,
    delong_test,
    holm,
    paired_mean_test,
    paired_resampling_test,
    seed_interval,
)

# Hanley & McNeil (1982), Table 1: radiologists' ratings (1 = definitely normal ...
# 5 = definitely abnormal) of 109 CT images, 58 normal and 51 abnormal.
HANLEY_NORMAL = [33, 6, 6, 11, 2]
HANLEY_ABNORMAL = [3, 2, 2, 11, 33]

# pROC's aSAH example (Turck et al. 2010: outcome of 113 patients after aneurysmal subarachnoid
# haemorrhage, 41 poor, 72 good): DeLong placements of the WFNS score and of S100B as pROC's
# test suite lists them, in patient order; the positive placements are multiples of 1/144, the
# negative ones of 1/82.
WFNS_V10 = [117, 94, 128, 140, 140, 140, 140, 94, 140, 94, 37, 94, 140, 128, 128, 94, 140, 140,
            140, 94, 140, 94, 140, 94, 128, 140, 128, 128, 37, 128, 128, 94, 94, 140, 140, 94, 94,
            140, 140, 140, 140]  # fmt: skip
WFNS_V01 = [80, 80, 80, 80, 18, 80, 66, 66, 80, 66, 66, 80, 80, 80, 66, 80, 66, 80, 80, 53, 44, 80,
            44, 80, 18, 18, 80, 80, 66, 44, 80, 80, 66, 66, 80, 66, 80, 66, 66, 80, 80, 80, 80, 66,
            80, 66, 80, 80, 53, 66, 44, 66, 80, 44, 80, 80, 18, 44, 66, 66, 80, 80, 80, 53, 80, 66,
            66, 44, 44, 80, 80, 80]  # fmt: skip
S100B_V10 = [81, 63, 103, 78, 130, 144, 140, 26, 123, 50, 26, 128, 126, 139, 144, 118, 144, 144,
             144, 26, 144, 120, 0, 50, 116, 144, 118, 144, 38, 118, 81, 63, 74, 116, 144, 88, 144,
             121, 144, 144, 130]  # fmt: skip
S100B_V01 = [58, 55, 66, 80, 28, 52, 66, 66, 80, 73, 80, 70, 63, 77, 52, 77, 63, 58, 52, 80, 53,
             55, 36, 70, 24, 28, 53, 77, 32, 28, 63, 73, 70, 73, 80, 58, 66, 55, 54, 80, 80, 70, 80,
             70, 73, 53, 70, 73, 37, 63, 42, 77, 66, 39, 77, 80, 48, 34, 66, 54, 73, 55, 66, 77, 80,
             52, 54, 28, 52, 54, 24, 27]  # fmt: skip


def test_delong_reproduces_procs_published_asah_comparison():
    """pROC's roc.test(wfns, s100b): Z = 2.20898359144091, p = 0.0271757822291882,
    95 % CI of the AUC difference [0.0104061769564846, 0.174214419249478]."""
    v10 = np.array([WFNS_V10, S100B_V10]) / 144
    v01 = np.array([WFNS_V01, S100B_V01]) / 82
    aucs, cov = delong_covariance(v10, v01)
    np.testing.assert_allclose(aucs, [0.823678861788618, 0.731368563685637], rtol=1e-12)
    res = delong_difference(aucs, cov)
    se = (res.high - res.estimate) / stats.norm.ppf(0.975)
    assert res.estimate / se == pytest.approx(2.20898359144091, rel=1e-10)
    assert res.p_value == pytest.approx(0.0271757822291882, rel=1e-10)
    assert res.low == pytest.approx(0.0104061769564846, rel=1e-9)
    assert res.high == pytest.approx(0.174214419249478, rel=1e-10)
    swapped = delong_difference(aucs[::-1], cov[::-1, ::-1])
    assert swapped.p_value == pytest.approx(res.p_value) and swapped.estimate == -res.estimate


def test_delong_standard_error_of_hanley_and_mcneils_ct_ratings():
    """Stata's roctab on these data (its manual's example; DeLong standard error by default):
    area 0.8932, standard error 0.0307, asymptotic 95 % interval 0.83295 to 0.95339."""
    y = np.r_[np.zeros(sum(HANLEY_NORMAL)), np.ones(sum(HANLEY_ABNORMAL))]
    rating = np.r_[
        np.repeat(np.arange(1, 6), HANLEY_NORMAL), np.repeat(np.arange(1, 6), HANLEY_ABNORMAL)
    ]
    v10, v01 = delong_placements(y, rating)
    aucs, cov = delong_covariance(v10, v01)
    se = float(np.sqrt(cov[0, 0]))
    assert aucs[0] == pytest.approx(roc_auc_score(y, rating), abs=1e-12)
    assert round(aucs[0], 4) == 0.8932 and round(se, 4) == 0.0307
    z = stats.norm.ppf(0.975)
    assert (round(aucs[0] - z * se, 5), round(aucs[0] + z * se, 5)) == (0.83295, 0.95339)


def test_placements_follow_their_definition_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    s = rng.integers(0, 6, 80).astype(float)  # many ties
    v10, v01 = delong_placements(y, s)
    pos, neg = s[y == 1], s[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    np.testing.assert_allclose(v10, psi.mean(axis=1))
    np.testing.assert_allclose(v01, psi.mean(axis=0))
    with pytest.raises(ValueError, match="positive and negative"):
        delong_placements(np.ones(5), s[:5])


def test_delong_test_calibrated_under_the_null():
    """Two scores that are exchangeable given the label: about 5 % of p-values below 0.05."""
    rng = np.random.default_rng(1)
    p = []
    for _ in range(400):
        y = rng.integers(0, 2, 120)
        shared = y + rng.normal(0, 1.2, 120)
        p.append(
            delong_test(
                y, shared + rng.normal(0, 0.7, 120), shared + rng.normal(0, 0.7, 120)
            ).p_value
        )
    assert 0.02 <= np.mean(np.array(p) < 0.05) <= 0.09
    identical = delong_test(y, shared, shared)
    assert identical.p_value == 1.0 and identical.estimate == 0.0


@pytest.mark.parametrize("ties", [False, True])
def test_batch_auc_and_ap_equal_sklearn_row_by_row(ties):
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, (30, 50))
    s = rng.random((30, 50))
    if ties:
        s = np.round(s * 4) / 4
    auc = batch_auc(y, s)
    ap = batch_average_precision(y, s)
    for r in range(30):
        assert auc[r] == pytest.approx(roc_auc_score(y[r], s[r]), abs=1e-12)
        assert ap[r] == pytest.approx(average_precision_score(y[r], s[r]), abs=1e-12)
    assert np.isnan(batch_auc(np.ones((1, 5)), s[:1, :5]))[0]
    assert np.isnan(batch_average_precision(np.zeros((1, 5)), s[:1, :5]))[0]


@pytest.mark.parametrize("task_type, k", [("binary", 2), ("multiclass", 4), ("multilabel", 3)])
@pytest.mark.parametrize("name", ["auc", "ap"])
def test_batch_metric_equals_samcache_metrics(task_type, k, name):
    from samcache.metrics import compute_metrics

    rng = np.random.default_rng(3)
    n = 60
    scores = rng.random((n, k))
    if task_type == "multilabel":
        y = rng.integers(0, 2, (n, k))
    else:
        scores /= scores.sum(1, keepdims=True)
        y = rng.integers(0, k, n)
    f = batch_metric(name, task_type)
    assert f(y[None], scores[None])[0] == pytest.approx(compute_metrics(y, scores, task_type)[name])


def test_accuracy_permutation_test_is_the_exact_mcnemar_test():
    """Sign flips of paired 0/1 outcomes: only the discordant pairs vary, so the p-value is the
    exact binomial (McNemar) test of b successes in b + c discordant pairs."""
    a = np.r_[np.ones(9), np.zeros(2), np.ones(20), np.zeros(5)]
    b = np.r_[np.zeros(9), np.ones(2), np.ones(20), np.zeros(5)]  # b = 9, c = 2 discordant
    res = paired_mean_test(a, b, resamples=20000)
    assert res.estimate == pytest.approx((9 - 2) / 36)
    exact = stats.binomtest(9, 11, 0.5).pvalue
    assert res.p_value == pytest.approx(exact, abs=0.01)


def test_paired_bootstrap_interval_is_scipys_paired_bootstrap():
    rng = np.random.default_rng(4)
    a = rng.random(40)
    b = a - 0.1 + rng.normal(0, 0.05, 40)
    res = paired_mean_test(a, b, resamples=2000, seed=7)
    ref = stats.bootstrap(
        (a - b,), np.mean, n_resamples=2000, method="percentile", rng=np.random.default_rng(7)
    ).confidence_interval
    assert (res.low, res.high) == pytest.approx((ref.low, ref.high), abs=1e-12)
    assert res.low < 0.1 < res.high and res.p_value < 0.001


def test_resampling_test_of_a_set_metric_detects_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(5)
    n = 150
    y = rng.integers(0, 2, n)
    good = np.c_[1 - (p := np.clip(y * 0.6 + rng.random(n) * 0.5, 0, 1)), p]
    noise = rng.random(n)
    bad = np.c_[1 - noise, noise]
    ap = batch_metric("ap", "binary")
    better = paired_resampling_test(y, good, bad, ap, resamples=999)
    assert better.estimate == pytest.approx(
        average_precision_score(y, good[:, 1]) - average_precision_score(y, bad[:, 1])
    )
    assert better.p_value < 0.01 and better.low > 0
    noise2 = rng.random(n)
    null = paired_resampling_test(y, bad, np.c_[1 - noise2, noise2], ap, resamples=999)
    assert null.p_value > 0.05 and null.low < 0 < null.high


def test_seed_interval_is_the_textbook_t_interval():
    d = np.array([1.2, 0.4, 2.0, 1.1, 0.8])  # t(0.975, 4) = 2.776445 (tables)
    res = seed_interval(d)
    half = 2.776445 * d.std(ddof=1) / np.sqrt(5)
    assert (res.low, res.high) == pytest.approx((d.mean() - half, d.mean() + half), abs=1e-5)
    one = seed_interval(np.array([0.3]))
    assert one.estimate == 0.3 and np.isnan(one.low) and np.isnan(one.p_value)


def test_holm_adjusts_like_the_textbook_example():
    # p = 0.01, 0.04, 0.03, 0.005 with m = 4: sorted 0.005 x 4 = 0.02, 0.01 x 3 = 0.03,
    # 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> 0.06 (monotone)
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    out = holm([0.5, np.nan, 0.01])
    assert np.isnan(out[1]) and out[2] == pytest.approx(0.02) and out[0] == pytest.approx(0.5)
    np.testing.assert_allclose(holm([0.9, 0.8]), [1.0, 1.0])  # capped at 1


def test_delong_without_two_images_of_each_class_has_no_p_value():
    y = np.array([1, 0, 0, 0])
    res = delong_test(y, np.array([0.9, 0.1, 0.2, 0.3]), np.array([0.2, 0.1, 0.4, 0.3]))
    assert res.estimate == pytest.approx(1 - 1 / 3) and np.isnan(res.p_value)
