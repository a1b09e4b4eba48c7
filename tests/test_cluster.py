"""Batches under a cluster executor: one submission per batch, the per-run jobs on the host.

Snakemake's generic cluster executor hands each job to a submit command, as the SLURM plugin
hands it to sbatch; here the submit command is a script that records the job's rule and runs
the job script in the background. (profiles/slurm is tested against a real scheduler where one
answers; this test runs everywhere.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO

DEMO = REPO / "workflow" / "config" / "demo.yaml"

SMALL = """
datasets:
  demo: {source: synthetic, n_images: 60, image_size: 64, seed: 0}
tables:
  small:
    blocks: [{dataset: demo, task: melanoma}, {dataset: demo, task: grade}]
    rows: [sam_tiny_linear, sam_tiny_mlp]
    fractions: [50, 100]
    seeds: [0, 1]
train: {epochs: 2, lr: 0.001, batch_size: 16}
sweep: {runs_per_job: 6}
"""

SUBMIT = """#!/bin/bash
# a stand-in for sbatch: note the job's rule, run its job script in the background
echo "$1" >> "{log}"
script="${{@: -1}}"
nohup bash "$script" > "$script.out" 2>&1 &
echo "$!"
"""


def run(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir)]
    cmd += ["results/tables/small.md", *args]
    cmd += ["--configfile", str(DEMO), str(workdir.parent / "small.yaml")]  # standalone demo
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.slow
def test_a_batch_is_one_cluster_submission_and_the_table_equals_the_local_one(tmp_path):
    pytest.importorskip("snakemake_executor_plugin_cluster_generic")
    (tmp_path / "small.yaml").write_text(SMALL)
    submissions = tmp_path / "submissions.txt"
    submit = tmp_path / "submit.sh"
    submit.write_text(SUBMIT.format(log=submissions))
    submit.chmod(0o755)
    cluster = tmp_path / "cluster"
    res = run(
        cluster,
        "--executor",
        "cluster-generic",
        "--cluster-generic-submit-cmd",
        f"{submit} {{rule}}",
        "--jobs",
        "4",
        "--latency-wait",
        "30",
        "--seconds-between-status-checks",
        "1",
    )
    assert res.returncode == 0, res.stderr[-4000:]
    rules = submissions.read_text().split()
    # 16 runs in 3 batches of at most 6; the per-run jobs and the table ran on this host
    assert sorted(rules) == ["dataset", "features", "train_batch", "train_batch", "train_batch"]
    assert len(list((cluster / "results/runs").glob("*/*/*/f*_s*.json"))) == 16
    assert not list((cluster / "results/runs").rglob(".staged/*.json"))  # all put in place
    assert "training the run in this process" not in "".join(
        p.read_text() for p in (cluster / "logs/train").rglob("*.log")
    )
    local = tmp_path / "local"
    res = run(local, "--cores", "2")
    assert res.returncode == 0, res.stderr[-4000:]
    a = pd.read_csv(cluster / "results/tables/small.csv", index_col=0)
    b = pd.read_csv(local / "results/tables/small.csv", index_col=0)
    pd.testing.assert_frame_equal(a, b)
