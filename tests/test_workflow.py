"""The Snakemake workflow: config validation, lint, the plan of a single target, the demo DAG."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO

DEMO = REPO / "workflow" / "config" / "demo.yaml"


def snakemake(
    workdir: Path, *args: str, timeout: int = 900, configfiles: tuple = (DEMO,)
) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(workdir),
        *(["--configfile", *map(str, configfiles)] if configfiles else []),
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def job_counts(output: str) -> dict[str, int]:
    table = output.split("Job stats:")[1].split("total")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


@pytest.mark.parametrize(
    "overlay, key",
    [
        ("train:\n  epochs: many\n", "train.epochs"),
        ("trian:\n  epochs: 3\n", "trian"),
        ("datasets:\n  demo:\n    source: synthetic\n    n_imgs: 10\n", "datasets.demo.n_imgs"),
    ],
)
def test_config_errors_stop_before_any_job_and_name_the_key(tmp_path, overlay, key):
    bad = tmp_path / "bad.yaml"
    bad.write_text(overlay)
    res = snakemake(tmp_path, "--configfile", str(DEMO), str(bad), "--cores", "1")
    assert res.returncode != 0
    assert key in res.stderr + res.stdout
    assert not (tmp_path / "data").exists() and not (tmp_path / "results").exists()


def test_lint_reports_nothing(tmp_path):
    res = snakemake(tmp_path, "--lint")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Congratulations" in res.stdout + res.stderr


def test_a_table_target_schedules_only_the_jobs_it_needs(tmp_path):
    res = snakemake(tmp_path, "--dry-run", "results/tables/demo_table1.md")
    assert res.returncode == 0, res.stderr
    counts = job_counts(res.stdout)
    assert counts == {"dataset_synthetic": 1, "features": 1, "train": 36, "table": 1}


def table_records(config: dict, names: list[str]) -> set[tuple]:
    """The distinct runs the named tables need, read from the config file itself."""
    return {
        (b["dataset"], b["task"], r if isinstance(r, str) else r["method"], float(f), int(s))
        for t in (config["tables"][n] for n in names)
        for b in t["blocks"]
        for r in t["rows"]
        for f in t.get("fractions", [10, 50, 100])
        for s in t.get("seeds", [0, 1, 2, 3, 4])
    }


def test_all_tables_builds_every_demo_table_and_only_their_runs(tmp_path):
    demo = yaml.safe_load(DEMO.read_text())
    names = sorted(t for t in demo["tables"] if t.startswith("demo_"))
    assert {"demo_gu_table1", "demo_gu_table2", "demo_gu_table3", "demo_gu_table4"} <= set(names)
    res = snakemake(tmp_path, "--dry-run", "all_tables")
    assert res.returncode == 0, res.stderr
    counts = job_counts(res.stdout)
    assert counts["table"] == len(names)
    assert counts["train"] == len(table_records(demo, names))
    assert counts["sam_prior"] == 1 and counts["features"] == 1
    scheduled = set(re.findall(r"results/tables/(\w+)\.md", res.stdout))
    assert scheduled == set(names)


def test_paper_tables_plan_once_their_datasets_exist(tmp_path):
    paper = yaml.safe_load((REPO / "config.yaml").read_text())
    names = ["gu_table1", "gu_table2", "gu_table3", "gu_table4"]
    waiting = snakemake(tmp_path, "--dry-run", configfiles=())
    assert waiting.returncode == 0, waiting.stderr
    assert "table 'gu_table1' is not a default target until datasets" in waiting.stderr
    datasets = tmp_path / "datasets.yaml"
    datasets.write_text(
        "datasets:\n"
        + "".join(
            f"  {d}: {{source: synthetic}}\n" for d in ("retinamnist", "breastmnist", "isic2017")
        )
    )
    res = snakemake(
        tmp_path, "--dry-run", "all_tables", configfiles=(REPO / "config.yaml", datasets)
    )
    assert res.returncode == 0, res.stderr
    counts = job_counts(res.stdout)
    assert counts["table"] == 4
    assert counts["train"] == len(table_records(paper, names)) == 445
    assert counts["features"] == counts["sam_prior"] == counts["dataset_synthetic"] == 3
    epochs = {  # seed 000: 400 epochs on ISIC 2017, 100 on the MedMNIST sets
        (m.group(1), json.loads(m.group(2))["train"]["epochs"])
        for m in re.finditer(
            r"train --dataset data/stores/(\w+)\.zarr .*?--spec '(\{.*?\})'", res.stdout
        )
    }
    assert epochs == {("isic2017", 400), ("retinamnist", 100), ("breastmnist", 100)}


@pytest.mark.slow
def test_demo_dag_end_to_end(tmp_path):
    res = snakemake(tmp_path, "--cores", "2")
    assert res.returncode == 0, res.stderr[-5000:]
    table = pd.read_csv(tmp_path / "results/tables/demo_table1.csv", index_col=0)
    means = table[[c for c in table.columns if c.endswith("/mean")]]
    assert means.shape == (2, 12)
    assert np.isfinite(means.to_numpy()).all()
    melanoma_auc = means[[c for c in means.columns if "melanoma" in c and "AUC" in c]]
    assert (melanoma_auc.to_numpy() > 80).all(), melanoma_auc  # chance is 50
    md = (tmp_path / "results/tables/demo_table1.md").read_text()
    assert sum(line.count("±") for line in md.splitlines() if line.startswith("| ")) == 24
    assert (tmp_path / "results/tables/demo_table1.png").exists()
    runs = pd.read_csv(tmp_path / "results/tables/demo_table1.runs.csv")
    assert len(runs) == 36 and runs.cache_key.nunique() == 1
    rec = json.loads(next((tmp_path / "results/runs").rglob("*.json")).read_text())
    for key in (
        "config",
        "seed",
        "fraction",
        "code_version",
        "cache_key",
        "metrics",
        "wall_time_s",
    ):
        assert key in rec
    assert list((tmp_path / "cache/superpixels/demo").glob("*/manifest.json"))
    assert (tmp_path / "logs/train").is_dir()
    again = snakemake(tmp_path, "--dry-run")
    assert "Nothing to be done" in again.stdout + again.stderr
