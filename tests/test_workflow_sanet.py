"""Seed 003 through the workflow: the paper's plan of Tables 1-4, and a demo table built from
its superpixel cache."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import yaml

from samcache.data.store import DatasetStore
from samcache.features.superpixels import open_superpixels
from samcache.rescore import rescore_record

from test_workflow import (
    DEMO,
    PAPER,
    job_counts,
    place_checkpoints,
    planned_specs,
    snakemake,
    table_records,
)

TABLES = ["sanet_table1", "sanet_table2", "sanet_table3", "sanet_table4"]


def test_seed003_paper_tables_plan_the_papers_runs_on_one_superpixel_and_one_feature_cache(
    tmp_path,
):
    """Table 2: 5 loss rows; Table 3: 10 rows, its ResUNet the γ = 1 run of Table 2; Table 4
    the runs of Table 3; Table 1 no run: 42 runs of 3 seeds on ISIC 2018 task 2, with AMSGrad
    and the polynomial decay, the best epoch by validation Avg JA."""
    paper = yaml.safe_load(PAPER.read_text())
    place_checkpoints(tmp_path)
    res = snakemake(
        tmp_path, "--dry-run", *[f"results/tables/{t}.md" for t in TABLES], config=(PAPER,)
    )
    assert res.returncode == 0, res.stderr
    counts = job_counts(res.stdout)
    assert counts["train"] == len(table_records(paper, TABLES)) == 42
    assert counts["table"] == 4 and counts["dataset"] == 1
    # SANet's SLIC-zero labels and the ViT-H pyramid of seed 002, once each
    assert counts["superpixels"] == 1 and counts["features"] == 1
    slic = json.loads(re.search(r"samcache superpixels .*?--spec '(\{.*?\})'", res.stdout)[1])
    assert slic["slic_zero"] is True
    specs = planned_specs(res.stdout)
    assert {d for d, _ in specs} == {"isic2018"}
    schedules = {
        tuple(s["train"][k] for k in ("optimizer", "lr", "weight_decay", "epochs", "batch_size"))
        + (s["train"]["poly_power"], s["train"]["select_metric"])
        for _, s in specs
    }
    assert schedules == {("amsgrad", 0.0001, 0.0001, 100, 5, 0.9, "task2_jaccard")}
    heads = {s["head"] for _, s in specs}
    assert heads == {
        "sanet_resunet",
        "sanet",
        "sanet_unet",
        "sanet_deeplab",
        "sanet_danet",
        "sam_sanet",
        "sam_superpixel_probe",
    }
    assert "--superpixels" in res.stdout


def test_seed003_table1_needs_the_dataset_store_alone(tmp_path):
    res = snakemake(tmp_path, "--dry-run", "results/tables/sanet_table1.md", config=(PAPER,))
    assert res.returncode == 0, res.stderr
    counts = job_counts(res.stdout)
    assert set(counts) == {"download", "dataset", "table"} and counts["table"] == 1


@pytest.mark.slow
def test_a_demo_sanet_table_trains_on_its_superpixel_cache(tmp_path, monkeypatch):
    """Table 4's three rows (SANet, the SAM pyramid with the token shuffle, the superpixel
    probe) for one seed: each record names the SLIC cache it read, holds ISIC task 2's
    per-attribute scores, and its stored masks give the same scores again."""
    overlay = tmp_path / "one_seed.yaml"
    overlay.write_text(yaml.safe_dump({"tables": {"demo_sanet_table4": {"seeds": [0]}}}))
    res = snakemake(
        tmp_path,
        "--cores",
        "2",
        "results/tables/demo_sanet_table4.md",
        config=(DEMO, overlay),
    )
    assert res.returncode == 0, res.stderr[-5000:]
    counts = job_counts(res.stdout + res.stderr)
    assert counts.get("superpixels", 0) <= 1
    sp = next((tmp_path / "cache/superpixels/demo").glob("*/superpixels.zarr"))
    store = DatasetStore(tmp_path / "data/stores/demo.zarr")
    assert open_superpixels(sp).shape == (store.n_items, 128, 128)
    runs = pd.read_csv(tmp_path / "results/tables/demo_sanet_table4.runs.csv")
    assert len(runs) == 3
    classes = store.task("attributes").classes
    monkeypatch.chdir(tmp_path)  # records name the workflow's relative paths
    records = sorted((tmp_path / "results/runs/demo/attributes").glob("*/f*_s*.json"))
    assert len(records) == 3
    for path in records:
        rec = json.loads(path.read_text())
        assert rec["superpixels_path"].endswith(f"{sp.parent.name}/superpixels.zarr")
        test = rec["metrics"]["test"]
        scores = [test[f"task2_jaccard_{c}"] for c in classes]
        assert test["task2_jaccard"] == pytest.approx(
            np.mean([*scores, test["task2_jaccard_micro"]])
        )
        again = rescore_record(rec, path)
        assert again["task2_jaccard"] == pytest.approx(test["task2_jaccard"], abs=1e-12)
    md = (tmp_path / "results/tables/demo_sanet_table4.md").read_text()
    assert "Pigment network Jaccard" in md and "Micro Dice" in md
