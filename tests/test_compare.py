"""Paired comparisons in tables: which test runs on which metric, intervals over seeds, the
correction, the marks, and the errors that name what is wrong."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from samcache.metrics import accuracy_per_image, compute_metrics
from samcache.predictions import record_predictions
from samcache.tables import write_table

N = 160
SEEDS = (0, 1, 2)


def _scores(y, strength, rng):
    logit = strength * (2 * y - 1) + rng.normal(0, 1.0, len(y))
    p = 1 / (1 + np.exp(-logit))
    return np.c_[1 - p, p].astype(np.float32)


def write_records(tmp_path, methods, *, per_image=None, twins=None, task_type="binary"):
    """One record per (method, seed); ``methods`` maps a method to a probability function;
    ``twins`` maps a method to another whose predictions it repeats."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, N)
    items = np.arange(1000, 1000 + N)
    paths = []
    for method, make in methods.items():
        for seed in SEEDS:
            key = (twins or {}).get(method, method)
            probs = make(y, np.random.default_rng([*map(ord, key), seed]))
            test = compute_metrics(y, probs.astype(np.float64), task_type)
            extra = (per_image or {}).get(method, {})
            pi = {k: f(seed) for k, f in extra.items()}
            test |= {k: float(v.mean()) for k, v in pi.items()}
            rec = {
                "schema": 2,
                "dataset": "d",
                "task": "y",
                "task_type": task_type,
                "method": method,
                "fraction": 100,
                "seed": seed,
                "n_train": 100,
                "best_epoch": 1,
                "metrics": {"test": test, "val": {"acc": 0.5}},
                "cache_key": None,
                "code_version": "test",
                "predictions": record_predictions(items, y, probs, pi),
            }
            p = tmp_path / f"{method}_{seed}.json"
            p.write_text(json.dumps(rec))
            paths.append(p)
    return paths, y


SPEC = {
    "name": "cmp",
    "title": "Comparison table",
    "blocks": [{"dataset": "d", "task": "y", "label": "D"}],
    "rows": [
        {"method": "base", "label": "Base"},
        {"method": "better", "label": "Better", "baseline": "base"},
        {"method": "same", "label": "Same", "baseline": "base"},
    ],
    "fractions": [100],
    "seeds": list(SEEDS),
    "metrics": ["acc", "auc", "ap"],
    "comparisons": {"resamples": 1999},
}


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    base = lambda y, r: _scores(y, 0.3, r)  # noqa: E731
    paths, y = write_records(
        tmp,
        {"base": base, "better": lambda y, r: _scores(y, 2.5, r), "same": base},
        twins={"same": "base"},
    )
    out = {k: tmp / f"cmp.{k}" for k in ("md", "csv", "runs.csv", "compare.csv", "html", "png")}
    write_table(
        SPEC,
        paths,
        out["md"],
        out["csv"],
        out["runs.csv"],
        out["png"],
        compare_csv=out["compare.csv"],
        html=out["html"],
    )
    recs = {(r["method"], r["seed"]): r for r in (json.loads(p.read_text()) for p in paths)}
    return out, recs, y


def test_each_metric_gets_its_paired_test(compared):
    out, recs, y = compared
    comp = pd.read_csv(out["compare.csv"])
    assert len(comp) == 2 * 3 * 3  # 2 pairs x 3 metrics x 3 seeds
    assert set(comp[comp.metric == "auc"].test) == {"DeLong"}
    assert set(comp[comp.metric != "auc"].test) == {"permutation"}
    # accuracy: the sign-flip permutation test is the exact McNemar test of the discordant images
    for seed in SEEDS:
        a, b = (recs[(m, seed)]["predictions"] for m in ("better", "base"))
        ca = accuracy_per_image(y, np.asarray(a["probabilities"]), "binary")
        cb = accuracy_per_image(y, np.asarray(b["probabilities"]), "binary")
        n10, n01 = int(((ca == 1) & (cb == 0)).sum()), int(((ca == 0) & (cb == 1)).sum())
        row = comp[(comp.method == "better") & (comp.metric == "acc") & (comp.seed == seed)]
        assert row.p.iloc[0] == pytest.approx(stats.binomtest(n10, n10 + n01, 0.5).pvalue, abs=0.02)


def test_differences_over_seeds_have_the_textbook_t_interval(compared):
    out, recs, _ = compared
    comp = pd.read_csv(out["compare.csv"])
    for metric in ("acc", "auc", "ap"):
        d = np.array(
            [
                recs[("better", s)]["metrics"]["test"][metric]
                - recs[("base", s)]["metrics"]["test"][metric]
                for s in SEEDS
            ]
        )
        half = 4.302653 * d.std(ddof=1) / np.sqrt(3)  # t(0.975, 2), from tables
        row = comp[(comp.method == "better") & (comp.metric == metric)].iloc[0]
        assert row.diff_pp == pytest.approx(100 * d.mean())
        assert (row.ci_low_pp, row.ci_high_pp) == pytest.approx(
            (100 * (d.mean() - half), 100 * (d.mean() + half)), abs=1e-4
        )


def test_marks_follow_the_corrected_tests_in_every_seed(compared):
    out, _, _ = compared
    comp = pd.read_csv(out["compare.csv"])
    assert (comp.p_adjusted >= comp.p - 1e-15).all()
    better = comp[comp.method == "better"]
    same = comp[comp.method == "same"]
    assert better.significant.all() and better.marked.all()
    assert same.p.eq(1.0).all() and not same.marked.any()  # identical predictions
    md = out["md"].read_text()
    better_row = next(line for line in md.splitlines() if line.startswith("| Better |"))
    assert better_row.count("▲") == 3
    same_row = next(line for line in md.splitlines() if line.startswith("| Same |"))
    assert "▲" not in same_row and "▼" not in same_row
    assert "#### Paired comparisons" in md and "Holm's correction" in md and "DeLong" in md
    html = out["html"].read_text()
    assert html.count('class="mark"') >= 3 and "Provenance" in html and "better_0.json" in html
    runs = pd.read_csv(out["runs.csv"])
    assert set(runs.predictions) == {N} and runs.prediction_store.isna().all()


def test_methods_as_columns_compare_per_image_jaccard(tmp_path):
    rng = np.random.default_rng(3)
    good = {"jaccard_pool3": lambda s: np.clip(rng.normal(0.6, 0.1, N), 0, 1)}
    poor = {"jaccard_pool3": lambda s: np.clip(rng.normal(0.3, 0.1, N), 0, 1)}
    flat = lambda y, r: _scores(y, 1.0, r)  # noqa: E731
    paths, _ = write_records(
        tmp_path, {"attn": flat, "roi": flat}, per_image={"attn": poor, "roi": good}
    )
    spec = {
        "name": "t3",
        "layout": "methods_as_columns",
        "blocks": [{"dataset": "d", "task": "y", "label": "D test"}],
        "rows": [
            {"method": "attn", "label": "Attn"},
            {"method": "roi", "label": "ROI", "baseline": "attn"},
        ],
        "metrics": ["jaccard_pool3"],
        "metric_labels": {"jaccard_pool3": "pool3"},
        "fractions": [100],
        "seeds": list(SEEDS),
        "comparisons": {"resamples": 999},
    }
    md = tmp_path / "t3.md"
    write_table(spec, paths, md, tmp_path / "t3.csv", plot=tmp_path / "t3.png")
    lines = md.read_text().splitlines()
    assert lines[2] == "| Dataset | Attn pool3 | ROI pool3 |"
    cells = lines[4].split(" | ")
    assert "▲" not in cells[1] and cells[2].endswith("▲ |")
    assert (tmp_path / "t3.png").stat().st_size > 1000


def test_comparison_errors_name_what_is_wrong(tmp_path):
    f = lambda y, r: _scores(y, 1.0, r)  # noqa: E731
    paths, _ = write_records(tmp_path, {"base": f, "better": f, "same": f})
    bad = {**SPEC, "rows": [*SPEC["rows"][:2], {"method": "same", "baseline": "nope"}]}
    with pytest.raises(ValueError, match="baseline 'nope', which is not another row"):
        write_table(bad, paths, tmp_path / "x.md", tmp_path / "x.csv")
    # a run tested on other images cannot be paired
    rec = json.loads(paths[3].read_text())
    rec["predictions"]["items"][0] = 7
    paths[3].write_text(json.dumps(rec))
    with pytest.raises(ValueError, match=r"better_0.json .* not tested on the same images"):
        write_table(SPEC, paths, tmp_path / "x.md", tmp_path / "x.csv")
    # a record written before predictions were kept: refused as any invalid record
    del rec["predictions"]
    paths[3].write_text(json.dumps(rec))
    with pytest.raises(ValueError, match=r"better_0.json: 'predictions' is a required property"):
        write_table(SPEC, paths, tmp_path / "x.md", tmp_path / "x.csv")
