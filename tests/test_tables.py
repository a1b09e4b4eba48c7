from __future__ import annotations

import json
import re
import statistics

import pandas as pd
import pytest

from samcache.sweep import RECORD_SCHEMA
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


def record(dataset, method, fraction, seed, test, task="y", **extra):
    """A valid run record (samcache.records) with the given test metrics."""
    return {
        "schema": RECORD_SCHEMA,
        "dataset": dataset,
        "task": task,
        "method": method,
        "fraction": fraction,
        "seed": seed,
        "n_train": 10,
        "best_epoch": 1,
        "metrics": {"test": test, "val": {"acc": 0.5, "auc": 0.5}},
        "cache_key": "abc",
        "code_version": "v",
        "predictions": {"items": []},
        **extra,
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
                    test = {"acc": acc, "auc": auc, "ap": 0.0}
                    p.write_text(json.dumps(record(ds, method, f, s, test)))
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


def test_latex_has_the_papers_header_levels_and_cells(tmp_path):
    paths, values = _records(tmp_path)
    spec = {**SPEC, "title": "Results on D1 & D2"}
    tex = tmp_path / "t1.tex"
    write_table(spec, paths, tmp_path / "t1.md", tmp_path / "t1.csv", tex=tex)
    lines = tex.read_text().splitlines()
    assert lines[0] == r"\begin{table}[t]" and lines[-1] == r"\end{table}"
    assert r"\caption{Results on D1 \& D2. Mean $\pm$ standard deviation" in tex.read_text()
    assert r"\begin{tabular}{lcccccccc}" in lines
    i = lines.index(r"\toprule")
    assert lines[i + 1] == r" & \multicolumn{4}{c}{D1} & \multicolumn{4}{c}{D2} \\"
    assert lines[i + 2] == r"\cmidrule(lr){2-5} \cmidrule(lr){6-9}"
    assert lines[i + 3] == (
        r" & \multicolumn{2}{c}{10\%} & \multicolumn{2}{c}{100\%}"
        r" & \multicolumn{2}{c}{10\%} & \multicolumn{2}{c}{100\%} \\"
    )
    assert lines[i + 5] == r"Method & ACC & AUC & ACC & AUC & ACC & AUC & ACC & AUC \\"
    assert lines[i + 6] == r"\midrule"
    row = next(line for line in lines if line.startswith("m\\_b & "))
    cells = row.removesuffix(r" \\").split(" & ")[1:]
    assert len(cells) == 8
    accs = [100 * values[("d2", "m_b", 100, s)][0] for s in (0, 1, 2)]
    assert cells[6] == f"${statistics.mean(accs):.2f} \\pm {statistics.stdev(accs):.2f}$"
    assert lines[lines.index(row) + 1] == r"\bottomrule"


def test_a_single_fraction_table_has_no_fraction_level(tmp_path):
    paths, values = _records(tmp_path)
    spec = {**SPEC, "blocks": [SPEC["blocks"][0]], "fractions": [100], "metrics": ["acc"]}
    md, tex = tmp_path / "a.md", tmp_path / "a.tex"
    write_table(spec, paths, md, tmp_path / "a.csv", tex=tex)
    header = next(line for line in md.read_text().splitlines() if line.startswith("| Method"))
    assert header == "| Method | ACC |"
    text = tex.read_text()
    assert r"\multicolumn" not in text and "(D1)" in text  # the block moves to the caption
    accs = [100 * values[("d1", "m_a", 100, s)][0] for s in (0, 1, 2)]
    assert (
        f"Method A & ${statistics.mean(accs):.2f} \\pm {statistics.stdev(accs):.2f}$ \\\\" in text
    )
    frame = pd.read_csv(tmp_path / "a.csv", index_col=0)
    assert list(frame.columns) == ["D1/100%/ACC/mean", "D1/100%/ACC/std"]


TABLE3 = {
    "name": "t3",
    "title": "Jaccard of attention maps",
    "layout": "methods_as_columns",
    "blocks": [{"dataset": "d1", "task": "y", "label": "D1 test"}],
    "rows": [
        {"method": "attn", "label": "Attn"},
        {"method": "gap", "label": "GAP", "metrics": ["jaccard_cam"]},
    ],
    "metrics": ["jaccard_pool3", "jaccard_pool4"],
    "metric_labels": {"jaccard_pool3": "pool3", "jaccard_pool4": "pool4", "jaccard_cam": "CAM"},
    "fractions": [100],
    "seeds": [0, 1],
}


def _attention_records(tmp_path):
    paths, values = [], {}
    for method, metrics in (
        ("attn", ("jaccard_pool3", "jaccard_pool4")),
        ("gap", ("jaccard_cam",)),
    ):
        for s in (0, 1):
            test = {"acc": 0.9, "auc": 0.9, "ap": 0.9}
            for i, m in enumerate(metrics):
                test[m] = values[(method, m, s)] = 0.2 + 0.1 * i + 0.05 * s
            p = tmp_path / f"{method}_{s}.json"
            p.write_text(json.dumps(record("d1", method, 100, s, test)))
            paths.append(p)
    return paths, values


def test_methods_as_column_groups_each_with_its_own_metrics(tmp_path):
    paths, values = _attention_records(tmp_path)
    md, csv, tex = tmp_path / "t3.md", tmp_path / "t3.csv", tmp_path / "t3.tex"
    write_table(TABLE3, paths, md, csv, tmp_path / "t3.runs.csv", tmp_path / "t3.png", tex=tex)
    frame = pd.read_csv(csv, index_col=0)
    assert list(frame.index) == ["D1 test"]
    assert [c for c in frame.columns if c.endswith("/mean")] == [
        "Attn/pool3/mean",
        "Attn/pool4/mean",
        "GAP/CAM/mean",
    ]
    for col, key in (
        ("Attn/pool4", ("attn", "jaccard_pool4")),
        ("GAP/CAM", ("gap", "jaccard_cam")),
    ):
        xs = [100 * values[(*key, s)] for s in (0, 1)]
        assert frame.loc["D1 test", f"{col}/mean"] == pytest.approx(statistics.mean(xs), abs=1e-4)
        assert frame.loc["D1 test", f"{col}/std"] == pytest.approx(statistics.stdev(xs), abs=1e-4)
    lines = md.read_text().splitlines()
    assert lines[2] == "| Dataset | Attn pool3 | Attn pool4 | GAP CAM |"
    assert lines[4] == "| D1 test | 22.50 ± 3.54 | 32.50 ± 3.54 | 22.50 ± 3.54 |"
    assert (tmp_path / "t3.png").stat().st_size > 1000
    lines = tex.read_text().splitlines()
    i = lines.index(r"\toprule")
    assert lines[i + 1] == r" & \multicolumn{2}{c}{Attn} & \multicolumn{1}{c}{GAP} \\"
    assert lines[i + 3] == r"Dataset & pool3 & pool4 & CAM \\"
    assert lines[i + 5] == (r"D1 test & $22.50 \pm 3.54$ & $32.50 \pm 3.54$ & $22.50 \pm 3.54$ \\")


def test_rows_with_their_own_metrics_in_the_method_rows_layout(tmp_path):
    paths, _ = _attention_records(tmp_path)
    spec = {**TABLE3, "layout": "rows_are_methods", "name": "t3b"}
    write_table(spec, paths, tmp_path / "b.md", tmp_path / "b.csv")
    text = (tmp_path / "b.md").read_text()
    assert "| Method | pool3 | pool4 | CAM |" in text  # one fraction: no fraction level
    assert "| GAP | – | – | 22.50 ± 3.54 |" in text


def test_a_metric_the_run_did_not_report_is_an_error_that_names_the_record(tmp_path):
    paths, _ = _attention_records(tmp_path)
    spec = {**TABLE3, "rows": [{"method": "gap", "label": "GAP"}]}  # gap has no pool3 map
    with pytest.raises(ValueError, match=r"gap_0.json has no test metric \['jaccard_pool3'"):
        write_table(spec, paths, tmp_path / "x.md", tmp_path / "x.csv")


def test_caption_and_runs_csv_say_each_rows_initialisation_and_each_blocks_images(tmp_path):
    paths, _ = _records(tmp_path)
    for p in paths:  # m_a from a checkpoint, m_b from random weights
        rec = json.loads(p.read_text())
        rec["head_info"] = (
            {"backbone_init": "checkpoint r152.safetensors", "checkpoint_sha256": "ab" * 32}
            if rec["method"] == "m_a"
            else {"backbone_init": "random"}
        )
        p.write_text(json.dumps(rec))
    spec = {
        **SPEC,
        "datasets": {
            "d1": {"source": "retinamnist", "size": 28, "image_size": 224},
            "d2": {"source": "breastmnist", "size": 224, "image_size": 224},
        },
    }
    md, tex = tmp_path / "t1.md", tmp_path / "t1.tex"
    write_table(spec, paths, md, tmp_path / "t1.csv", tmp_path / "t1.runs.csv", tex=tex)
    text = md.read_text()
    assert "D1: MedMNIST v2 28 px files (retinamnist.npz), resized to 224 px" in text
    assert "D2: MedMNIST+ 224 px files (breastmnist_224.npz)" in text
    assert "checkpoint r152.safetensors (SHA-256 abababababab…): Method A" in text
    assert "random weights (init: random): m_b" in text
    assert "MedMNIST v2 28 px" in tex.read_text()
    runs = pd.read_csv(tmp_path / "t1.runs.csv")
    assert set(runs[runs.method == "m_a"].init) == {"checkpoint r152.safetensors"}
    assert set(runs[runs.method == "m_b"].init) == {"random"}


def _one_run_table(tmp_path, rec, name="d1/y/m_a/f100_s0.json"):
    path = tmp_path / "runs" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(rec if isinstance(rec, str) else json.dumps(rec))
    spec = {**SPEC, "blocks": [SPEC["blocks"][0]], "rows": ["m_a"], "fractions": [100]}
    spec["seeds"] = [0]
    md = tmp_path / "one.md"
    return lambda: write_table(spec, [path], md, tmp_path / "one.csv"), path, md


GOOD = record("d1", "m_a", 100, 0, {"acc": 0.5, "auc": 0.6})


@pytest.mark.parametrize(
    "rec, message",
    [
        (json.dumps(GOOD)[:-20], "is not valid JSON"),
        ({**GOOD, "schema": 1}, "written in record schema 1; this samcache reads schema 2"),
        ({k: v for k, v in GOOD.items() if k != "seed"}, "'seed' is a required property"),
        (
            {**GOOD, "metrics": {"test": {"acc": float("nan")}, "val": {"acc": 0.5}}},
            "'metrics.test.acc' is nan",
        ),
        ({**GOOD, "fraction": "100"}, "'fraction': '100' is not of type 'number'"),
        (
            {**GOOD, "seed": 3},
            "holds the run dataset=d1 task=y method=m_a fraction=100 seed=3, not",
        ),
        ([GOOD], "not a JSON object"),
    ],
    ids=["truncated", "other-schema", "no-seed", "nan", "fraction-text", "other-run", "list"],
)
def test_a_bad_record_is_an_error_naming_its_path_and_no_table_is_written(tmp_path, rec, message):
    build, path, md = _one_run_table(tmp_path, rec)
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        build()
    assert f"run record {path}" in str(err.value)
    assert not md.exists() and not list(tmp_path.glob(".one*"))


def test_two_records_of_one_run_are_refused(tmp_path):
    build, path, _ = _one_run_table(tmp_path, GOOD)
    copy = tmp_path / "copy.json"
    copy.write_text(path.read_text())
    with pytest.raises(ValueError, match="both hold the run"):
        write_table({**SPEC, "seeds": [0]}, [path, copy], tmp_path / "x.md", tmp_path / "x.csv")


@pytest.mark.parametrize(
    "key, value", [("seeds", [0, 0]), ("fractions", []), ("rows", ["m_a", "m_a"])]
)
def test_repeated_or_empty_table_lists_are_refused(tmp_path, key, value):
    paths, _ = _records(tmp_path)
    with pytest.raises(ValueError, match=rf"tables\.t1\.{key}: "):
        write_table({**SPEC, key: value}, paths, tmp_path / "x.md", tmp_path / "x.csv")
