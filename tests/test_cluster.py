"""Batches under a cluster executor: one submission per batch, the per-run jobs on the host.

One small demo table (16 runs in 3 batches) built by two executors, each compared with the
same table built locally:

* Snakemake's generic cluster executor, whose submit command here is a stand-in for sbatch that
  notes the job's rule and runs the job script in the background (runs everywhere);
* profiles/slurm on a real SLURM scheduler (marker `slurm`: only where `sinfo` answers; CI
  starts a single-node SLURM with .ci/slurm-up), its partitions and account given on the
  command line, one of its batch jobs cancelled with scancel while it runs.
"""

from __future__ import annotations

import getpass
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO

DEMO = REPO / "workflow" / "config" / "demo.yaml"
PROFILE = REPO / "profiles" / "slurm" / "config.yaml"

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

RECORDS = "results/runs/*/*/*/f*_s*.json"


def snakemake_cmd(workdir: Path, *args: str) -> list[str]:
    """Snakemake building the small table in ``workdir`` (the standalone demo config and the
    overlay ``small.yaml`` beside ``workdir``)."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir)]
    cmd += ["results/tables/small.md", *args]
    return cmd + ["--configfile", str(DEMO), str(workdir.parent / "small.yaml")]


def snakemake_env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def run(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = snakemake_cmd(workdir, *args)
    return subprocess.run(cmd, capture_output=True, text=True, env=snakemake_env(), timeout=900)


@pytest.fixture(scope="module")
def local_table(tmp_path_factory) -> pd.DataFrame:
    """The small table built on this machine, without a cluster."""
    base = tmp_path_factory.mktemp("local")
    (base / "small.yaml").write_text(SMALL)
    res = run(base / "local", "--cores", "2")
    assert res.returncode == 0, res.stderr[-4000:]
    return pd.read_csv(base / "local/results/tables/small.csv", index_col=0)


@pytest.mark.slow
def test_a_batch_is_one_cluster_submission_and_the_table_equals_the_local_one(
    tmp_path, local_table
):
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
    assert len(list(cluster.glob(RECORDS))) == 16
    assert not list((cluster / "results/runs").rglob(".staged/*.json"))  # all put in place
    assert "training the run in this process" not in "".join(
        p.read_text() for p in (cluster / "logs/train").rglob("*.log")
    )
    table = pd.read_csv(cluster / "results/tables/small.csv", index_col=0)
    pd.testing.assert_frame_equal(table, local_table)


# --- profiles/slurm ----------------------------------------------------------------------------

PLAN = """
methods:
  cpu_probe: {head: linear_probe, features: sam_vit_h}
tables:
  plan:
    blocks: [{dataset: retinamnist, task: grade}]
    rows: [resnet152, resnet152_samaug_c, resnet152_sam, cpu_probe]
    fractions: [100]
    seeds: [0]
    metrics: [acc]
"""


def test_profiles_slurm_sends_the_gpu_rules_to_the_gpu_partition(tmp_path):
    """The plan of a paper table under profiles/slurm: the feature cache, SAMAug-C's prior maps
    and the batches that train on CUDA go to the GPU partition, every other job to the CPU
    partition; downloads, checkpoints, record moves and the table stay on the submitting host.
    No job asks for a gres (the plugin refuses one next to `gpu`, which it maps to --gpus)."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    from test_workflow import PAPER, place_checkpoints, snakemake

    (tmp_path / "plan.yaml").write_text(PLAN)
    place_checkpoints(tmp_path)
    res = snakemake(
        tmp_path,
        "--workflow-profile",
        str(PROFILE.parent),
        "--dry-run",
        "results/tables/plan.md",
        config=(PAPER, tmp_path / "plan.yaml"),
    )
    assert res.returncode == 0, res.stderr[-4000:]
    profile = yaml.safe_load(PROFILE.read_text())
    cpu = profile["default-resources"]["slurm_partition"]
    gpu = profile["set-resources"]["features"]["slurm_partition"]
    assert cpu != gpu
    partitions = {}
    for rule, block in re.findall(r"^(?:local)?rule (\w+):\n((?:    .*\n)+)", res.stdout, re.M):
        resources = dict(re.findall(r"(\w+)=([^,\n]+)", block.split("resources: ")[1]))
        assert "gres" not in resources, block
        partitions.setdefault(rule, set()).add(resources["slurm_partition"])
    # (a dry run shows local rules as any other; which they are, the rules say)
    sources = "".join(p.read_text() for p in (REPO / "workflow/rules").glob("*.smk"))
    local = set(re.findall(r"^rule (\w+):\n(?:(?:    .*)?\n)*?    localrule: ", sources, re.M))
    assert {"download", "sam_checkpoint", "train", "table", "gallery"} <= local
    assert {rule: p for rule, p in partitions.items() if rule not in local} == {
        "dataset": {cpu},
        "features": {gpu},
        "sam_prior": {gpu},
        "train_batch_cuda": {gpu},
        "train_batch": {cpu},
    }


def test_a_run_on_cuda_that_would_not_train_in_a_batch_stops_a_cluster_run(tmp_path):
    """With one process per run (sweep.runs_per_job: 1) a run is a `train` job, which no
    cluster profile sends to a GPU partition: a run that trains on CUDA stops the workflow
    before any job is submitted, naming the setting."""
    pytest.importorskip("snakemake_executor_plugin_cluster_generic")
    from test_workflow import PAPER, place_checkpoints, snakemake

    (tmp_path / "plan.yaml").write_text(PLAN + "sweep: {runs_per_job: 1}\n")
    place_checkpoints(tmp_path)
    submitted = tmp_path / "submitted"
    res = snakemake(
        tmp_path,
        "--executor",
        "cluster-generic",
        "--cluster-generic-submit-cmd",
        f"touch {submitted}; false",
        "--jobs",
        "1",
        "results/tables/plan.md",
        config=(PAPER, tmp_path / "plan.yaml"),
    )
    assert res.returncode != 0
    assert "trains on CUDA in its own `train` job" in res.stderr, res.stderr[-3000:]
    assert "sweep.runs_per_job" in res.stderr
    assert not submitted.exists()


# --- profiles/slurm on a real scheduler --------------------------------------------------------


def slurm_site() -> dict[str, str]:
    """Where the slurm tests submit: $SAMCACHE_SLURM_PARTITION (else the default partition),
    $SAMCACHE_SLURM_GPU_PARTITION (else the first other partition with a `gpu` gres) and
    $SAMCACHE_SLURM_ACCOUNT (else `samcache_test`, which a cluster without accounting takes)."""
    lines = subprocess.run(
        ["sinfo", "-h", "-o", "%P %G"], capture_output=True, text=True, check=True
    ).stdout.split()
    parts = list(zip(lines[::2], lines[1::2], strict=True))
    default = next((p.rstrip("*") for p, _ in parts if p.endswith("*")), None)
    gpu = next((p for p, g in parts if "gpu" in g and not p.endswith("*")), None)
    site = {
        "partition": os.environ.get("SAMCACHE_SLURM_PARTITION", default or ""),
        "gpu_partition": os.environ.get("SAMCACHE_SLURM_GPU_PARTITION", gpu or ""),
        "account": os.environ.get("SAMCACHE_SLURM_ACCOUNT", "samcache_test"),
    }
    if not site["partition"] or not site["gpu_partition"]:
        pytest.skip(
            "no default partition or none with a gpu gres: set SAMCACHE_SLURM_PARTITION and "
            "SAMCACHE_SLURM_GPU_PARTITION"
        )
    return site


def node_cpus(partition: str) -> int:
    out = subprocess.run(
        ["sinfo", "-h", "-p", partition, "-o", "%c"], capture_output=True, text=True
    )
    return min(int(c.rstrip("+")) for c in out.stdout.split())


def site_overrides(site: dict[str, str], cpus: int) -> list[str]:
    """profiles/slurm fitted to this cluster on the command line, as a user would: its
    partitions and account replaced, threads capped at a node's CPUs, memory at 2 GB; the
    rest of each entry as the profile has it (a key given on the command line replaces the
    profile's whole key, so every entry is repeated)."""
    profile = yaml.safe_load(PROFILE.read_text())
    partitions = {
        profile["default-resources"]["slurm_partition"]: site["partition"],
        profile["set-resources"]["features"]["slurm_partition"]: site["gpu_partition"],
    }

    def fit(resources: dict) -> dict:
        out = dict(resources)
        if "slurm_partition" in out:
            out["slurm_partition"] = partitions[out["slurm_partition"]]
        if "mem_mb" in out:
            out["mem_mb"] = min(int(out["mem_mb"]), 2000)
        return out

    default = fit(profile["default-resources"]) | {"slurm_account": site["account"]}
    args = ["--default-resources", *(f"{k}={v!r}" for k, v in default.items())]
    args += ["--set-resources"]
    for rule, resources in profile["set-resources"].items():
        args += [f"{rule}:{k}={v!r}" for k, v in fit(resources).items()]
    args += ["--set-threads"]
    args += [f"{rule}={min(n, cpus)}" for rule, n in profile["set-threads"].items()]
    return args


class SlurmWatch(threading.Thread):
    """Polls squeue while a run lasts and notes every job of this run (`-t all`: a finished job
    stays listed for the cluster's MinJobAge); once a `train_batch` job runs while some record
    is already in place, cancels it with scancel and notes the records in place then."""

    def __init__(self, workdir: Path, known: set[str]):
        super().__init__(daemon=True)
        self.workdir, self.known = workdir, known
        self.jobs: dict[str, dict] = {}
        self.cancelled: tuple[str, float, dict] | None = None
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.poll()
            self.stopped.wait(0.5)
        self.poll()

    def poll(self) -> None:
        out = subprocess.run(
            ["squeue", "-h", "-t", "all", "-u", getpass.getuser(), "-o", "%i|%P|%T|%k"],
            capture_output=True,
            text=True,
        ).stdout
        for line in out.splitlines():
            job, partition, state, comment = line.split("|", 3)
            m = re.match(r"rule_(\w+?)(?:_wildcards_(.*))?$", comment)
            if job in self.known or not m:
                continue
            info = self.jobs.setdefault(
                job, {"id": job, "rule": m.group(1), "wildcards": m.group(2)}
            )
            info.update(partition=partition, state=state)
            if "tres" not in info:  # what the job asked for, GPUs included
                show = subprocess.run(
                    ["scontrol", "-o", "show", "job", job], capture_output=True, text=True
                ).stdout
                info["tres"] = " ".join(re.findall(r"\b(?:TresPerJob|TresPerNode)=(\S+)", show))
                info["account"] = "".join(re.findall(r"\bAccount=(\S+)", show))
            if self.cancelled is None and info["rule"] == "train_batch" and state == "RUNNING":
                records = list(self.workdir.glob(RECORDS))
                if records:  # each by inode and content (Snakemake touches what its jobs made)
                    placed = {p: (p.stat().st_ino, p.read_bytes()) for p in records}
                    subprocess.run(["scancel", job], check=True)
                    self.cancelled = (job, time.monotonic(), placed)


@pytest.mark.slurm
@pytest.mark.slow
def test_profiles_slurm_builds_the_table_through_sbatch_and_retries_a_cancelled_job(
    tmp_path, local_table
):
    """profiles/slurm as shipped but for what a user fits to the cluster on the command line
    (partitions, account, threads, memory), and shorter waits: every job goes through sbatch
    to its partition, a batch job cancelled while it runs is reported and submitted again, no
    record placed before is touched, and the table equals the local build's."""
    site = slurm_site()
    (tmp_path / "small.yaml").write_text(SMALL)
    work = tmp_path / "slurm"
    known = set(
        subprocess.run(
            ["squeue", "-h", "-t", "all", "-o", "%i"], capture_output=True, text=True
        ).stdout.split()
    )
    cmd = snakemake_cmd(
        work,
        "--workflow-profile",
        str(PROFILE.parent),
        *site_overrides(site, node_cpus(site["partition"])),
        # 2 batches at a time, so that the third starts after a first one's records are placed
        "--jobs",
        "2",
        "--latency-wait",
        "5",
        "--seconds-between-status-checks",
        "3",
        "--slurm-init-seconds-before-status-checks",
        "3",
    )
    watch = SlurmWatch(work, known)
    watch.start()
    lines: list[tuple[float, str]] = []
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=snakemake_env()
    )
    reader = threading.Thread(
        target=lambda: lines.extend((time.monotonic(), line) for line in proc.stdout), daemon=True
    )
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=600)
    except subprocess.TimeoutExpired:  # a hang: Snakemake cancels its jobs on SIGTERM
        timed_out = True
        proc.terminate()
        proc.wait(timeout=120)
    finally:
        watch.stopped.set()
        watch.join()
        reader.join(timeout=10)
    log = "".join(line for _, line in lines)
    assert not timed_out, "Snakemake still ran after 10 minutes:\n" + log[-6000:]
    assert proc.returncode == 0, log[-6000:]

    # every job went through sbatch: one dataset, one feature cache, 3 batches and 1 retry
    jobs = list(watch.jobs.values())
    assert Counter(j["rule"] for j in jobs) == {"dataset": 1, "features": 1, "train_batch": 4}, jobs
    for j in jobs:  # the feature cache on the GPU partition with a GPU, the rest without
        gpu = j["rule"] == "features"
        assert j["partition"] == site["gpu_partition" if gpu else "partition"], j
        assert ("gpu" in j["tres"]) == gpu, j
        assert j["account"] == site["account"], j

    # the cancelled batch: reported within a status check or two, then submitted once more
    assert watch.cancelled, "no train_batch job ran after a record was placed\n" + log[-4000:]
    job, when, placed = watch.cancelled
    reported = [t for t, line in lines if job in line and "CANCELLED" in line]
    assert reported and reported[0] - when < 60, log[-4000:]
    assert [j["state"] for j in jobs if j["id"] != job] == ["COMPLETED"] * 5, jobs
    assert watch.jobs[job]["state"] == "CANCELLED"
    retried = [j for j in jobs if j["wildcards"] == watch.jobs[job]["wildcards"]]
    assert len(retried) == 2, jobs

    # no record placed before the cancel was replaced or changed; all 16 in place, the table the
    # local one
    assert placed and all((p.stat().st_ino, p.read_bytes()) == v for p, v in placed.items())
    assert len(list(work.glob(RECORDS))) == 16
    assert not list((work / "results/runs").rglob(".staged/*.json"))
    table = pd.read_csv(work / "results/tables/small.csv", index_col=0)
    pd.testing.assert_frame_equal(table, local_table)
