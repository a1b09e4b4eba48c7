"""`samcache rescore`: a table's metrics recomputed from stored predictions, external scorers,
and predictions that do not give their record's metrics."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import brier_score_loss

from samcache.cli import main
from samcache.train import train_run

METHODS = {
    "lin": {"head": "linear_probe", "train": {"epochs": 2, "lr": 0.003, "batch_size": 8}},
    "attn": {
        "head": "attnmel_cnn",
        "init": "random",
        "image_size": 32,
        "head_args": {"width": 1 / 16},
        "train": {"epochs": 1, "batch_size": 8, "threads": 1, "lr": 0.003},
    },
}
SPEC = {
    "name": "r",
    "blocks": [{"dataset": "small", "task": "melanoma"}],
    "rows": [
        {"method": "lin", "label": "Linear"},
        {
            "method": "attn",
            "label": "Attention",
            "baseline": "lin",
            "metrics": ["acc", "auc", "jaccard_pool3"],
        },
    ],
    "fractions": [100],
    "seeds": [0, 1],
    "metrics": ["acc", "auc"],
    "comparisons": {"resamples": 199},
}


@pytest.fixture(scope="module")
def records(tmp_path_factory, small_store, small_features):
    tmp = tmp_path_factory.mktemp("rescore")
    paths = []
    for name, method in METHODS.items():
        for seed in (0, 1):
            out = tmp / name / f"f100_s{seed}.json"
            train_run(
                dataset=small_store.path,
                features=small_features.path if name == "lin" else None,
                task="melanoma",
                method_name=name,
                method=method,
                fraction=100,
                seed=seed,
                out=out,
            )
            paths.append(out)
    return tmp, paths


def outputs(tmp, stem):
    return ["--md", str(tmp / f"{stem}.md"), "--csv", str(tmp / f"{stem}.csv")]


def test_rescored_table_equals_the_table_and_adds_an_external_scorer(records, tmp_path):
    tmp, paths = records
    spec = json.dumps(SPEC)
    assert main(["table", "--spec", spec, *outputs(tmp_path, "t"), *map(str, paths)]) == 0
    assert main(["rescore", "--spec", spec, *outputs(tmp_path, "r"), *map(str, paths)]) == 0
    assert (tmp_path / "r.md").read_text() == (tmp_path / "t.md").read_text()
    with_brier = json.dumps({**SPEC, "metrics": ["acc", "auc", "brier"], "rows": SPEC["rows"][:1]})
    assert (
        main(
            [
                "rescore",
                "--spec",
                with_brier,
                "--metric",
                "brier=sklearn.metrics:brier_score_loss",
                *outputs(tmp_path, "b"),
                *map(str, paths),
            ]
        )
        == 0
    )
    expected = []
    for p in paths[:2]:  # the linear runs
        pred = json.loads(p.read_text())["predictions"]
        probs = np.asarray(pred["probabilities"], dtype=np.float32).astype(np.float64)
        expected.append(100 * brier_score_loss(pred["labels"], probs[:, 1]))
    frame = pd.read_csv(tmp_path / "b.csv", index_col=0)
    assert frame.filter(like="brier/mean").iloc[0, 0] == pytest.approx(np.mean(expected), abs=1e-4)


def test_jaccard_is_recomputed_from_the_stored_maps(records, caplog):
    from samcache.rescore import rescore_record

    tmp, paths = records
    rec = json.loads(paths[2].read_text())
    out = rescore_record(rec, paths[2])
    assert out["jaccard_pool3"] == pytest.approx(rec["metrics"]["test"]["jaccard_pool3"], abs=1e-12)
    # the maps, not the stored per-image values, decide: break the values, the maps still agree
    rec["predictions"]["per_image"]["jaccard_pool3"] = [0.0] * len(rec["predictions"]["items"])
    assert rescore_record(rec, paths[2])["jaccard_pool3"] == pytest.approx(out["jaccard_pool3"])
    rec["dataset_path"] = str(tmp / "elsewhere.zarr")  # no dataset at hand: the stored values
    with pytest.raises(ValueError, match="jaccard_pool3"):
        rescore_record(rec, paths[2])
    assert "not found" in caplog.text


def test_predictions_that_do_not_give_the_recorded_metrics_are_refused(records, tmp_path):
    _, paths = records
    rec = json.loads(paths[0].read_text())
    rec["predictions"]["probabilities"] = [p[::-1] for p in rec["predictions"]["probabilities"]]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(rec))
    from samcache.rescore import rescore_record

    with pytest.raises(ValueError, match=r"bad.json: its stored predictions give acc"):
        rescore_record(rec, bad)
    assert (
        main(["rescore", "--spec", "{}", "--metric", "x=nope:f", *outputs(tmp_path, "x"), str(bad)])
        == 1
    )
