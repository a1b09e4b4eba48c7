from __future__ import annotations

import json
import statistics

import pandas as pd
import pytest

from samcache.tables import write_table

SPEC = {
    "name": "t1",
    "title": "Test table",
    "blocks": [
        {"dataset": "d1", "task": "y", "label": "D1"},
        {"dataset": "d2", "task": "y", "label": "D2"},
    ],
    "rows": [{"method": "m_a", "label": "Method A"}, "m_b"],
    "fractions": [10, 100],
    "seeds": [0, 1, 2],
    "metrics": ["acc", "auc"],
}


def _records(tmp_path, skip=None):
    paths, values = [], {}
    for b, ds in enumerate(("d1", "d2")):
        for m, method in enumerate(("m_a", "m_b")):
            for f in (10, 100):
                for s in (0, 1, 2):
                    if skip == (ds, method, f, s):
                        continue
                    acc = 0.5 + 0.1 * s + 0.01 * m + 0.001 * b + (0.1 if f == 100 else 0)
                    auc = 0.7 + 0.05 * s
                    values[(ds, method, f, s)] = (acc, auc)
                    p = tmp_path / f"{ds}_{method}_{f}_{s}.json"
                    p.write_text(
                        json.dumps(
                            {
                                "dataset": ds,
                                "task": "y",
                                "method": method,
                                "fraction": f,
                                "seed": s,
                                "metrics": {"test": {"acc": acc, "auc": auc, "ap": 0.0}},
                                "cache_key": "abc",
                                "code_version": "v",
                            }
                        )
                    )
                    paths.append(p)
    return paths, values


def test_layout_and_cells_match_an_independent_computation(tmp_path):
    paths, values = _records(tmp_path)
    md, csv = tmp_path / "t1.md", tmp_path / "t1.csv"
    write_table(SPEC, paths, md, csv, tmp_path / "t1.runs.csv", tmp_path / "t1.png")
    frame = pd.read_csv(csv, index_col=0)
    assert list(frame.index) == ["Method A", "m_b"]
    assert list(frame.columns[:4]) == [
        "D1/10%/ACC/mean",
        "D1/10%/ACC/std",
        "D1/10%/AUC/mean",
        "D1/10%/AUC/std",
    ]
    assert len(frame.columns) == 2 * 2 * 2 * 2
    for label, method in (("Method A", "m_a"), ("m_b", "m_b")):
        accs = [100 * values[("d2", method, 100, s)][0] for s in (0, 1, 2)]
        assert frame.loc[label, "D2/100%/ACC/mean"] == pytest.approx(
            statistics.mean(accs), abs=1e-4
        )
        assert frame.loc[label, "D2/100%/ACC/std"] == pytest.approx(
            statistics.stdev(accs), abs=1e-4
        )
    text = md.read_text()
    assert "| Method A | 60.00 ± 10.00 | 75.00 ± 5.00 |" in text
    assert "D2 100% AUC" in text.splitlines()[2]
    runs = pd.read_csv(tmp_path / "t1.runs.csv")
    assert len(runs) == 24 and set(runs.cache_key) == {"abc"}
    assert (tmp_path / "t1.png").stat().st_size > 1000


def test_a_missing_run_is_an_error_that_names_it(tmp_path):
    paths, _ = _records(tmp_path, skip=("d2", "m_b", 10, 1))
    with pytest.raises(ValueError, match="dataset=d2 task=y method=m_b fraction=10 seed=1"):
        write_table(SPEC, paths, tmp_path / "x.md", tmp_path / "x.csv")
