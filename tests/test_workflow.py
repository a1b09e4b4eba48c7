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

from conftest import REPO

DEMO = REPO / "workflow" / "config" / "demo.yaml"


def snakemake(workdir: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
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
        "--configfile",
        str(DEMO),
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


def test_seed001_tables_schedule_their_runs_and_image_heads_need_no_feature_cache(tmp_path):
    res = snakemake(tmp_path, "--dry-run", "results/tables/demo_seed001_table3.md")
    assert res.returncode == 0, res.stderr
    assert job_counts(res.stdout) == {
        "dataset_synthetic": 1,
        "features": 1,
        "train": 18,
        "table": 1,
    }
    overlay = tmp_path / "vgg_only.yaml"
    overlay.write_text(
        "tables:\n  vgg_only:\n    blocks: [{dataset: demo, task: melanoma}]\n"
        "    rows: [demo_attnmel_cnn_lesion]\n    fractions: [100]\n    seeds: [0]\n"
    )
    res = snakemake(
        tmp_path, "--configfile", str(DEMO), str(overlay), "--dry-run", "results/tables/vgg_only.md"
    )
    assert res.returncode == 0, res.stderr
    assert job_counts(res.stdout) == {"dataset_synthetic": 1, "train": 1, "table": 1}
    assert "--features" not in res.stdout.split("rule train")[1].split("rule table")[0]
