"""The workflow after things go wrong, with real Snakemake runs on a tiny demo: no table stays
up to date while a record behind it is missing, a damaged cache behind an intact manifest is
noticed and resumed, and jobs run with the interpreter Snakemake runs in.
The steps share one working directory and run in order."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO
from test_workflow import DEMO

TABLE = "results/tables/rel.md"
TINY = {
    "datasets": {"demo": {"source": "synthetic", "n_images": 40, "image_size": 32, "seed": 0}},
    "feature_sets": {"sam_tiny": {"taps": ["neck"], "batch_size": 8}},
    "methods": {
        "rel_linear": {
            "head": "linear_probe",
            "features": "sam_tiny",
            "train": {"epochs": 1, "batch_size": 8},
        }
    },
    "tables": {
        "rel": {
            "blocks": [{"dataset": "demo", "task": "melanoma"}],
            "rows": ["rel_linear"],
            "fractions": [100],
            "seeds": [0],
        }
    },
}
RECORD = "results/runs/demo/melanoma/rel_linear/f100_s0.json"
#: The steps below follow one run through Snakemake's own job semantics: one process per run.
#: (With batches, a failed run's batch fails and its record job does not start; see the last
#: test.)
ONE_PER_RUN = {"sweep": {"runs_per_job": 1}}


def snakemake(work: Path, *args: str, overlays: tuple[Path, ...] = ()) -> str:
    """Snakemake on the tiny demo, as a user starts it from a shell where the virtual
    environment is not active: PATH holds only the system's folders."""
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work)]
    cmd += ["--configfile", str(DEMO), str(work / "tiny.yaml"), *map(str, overlays)]
    cmd += ["--replace-workflow-config", "--cores", "2", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    return f"exit {res.returncode}\n{res.stdout}\n{res.stderr}"


def succeeded(output: str) -> bool:
    return output.startswith("exit 0")


def up_to_date(work: Path) -> bool:
    return "Nothing to be done" in snakemake(work, "--dry-run", TABLE)


def cited_records_exist(work: Path) -> bool:
    runs = pd.read_csv(work / "results/tables/rel.runs.csv")
    return list(runs.record) == [RECORD] and (work / RECORD).is_file()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = tmp_path_factory.mktemp("reliability")
    (work / "tiny.yaml").write_text(yaml.safe_dump({**TINY, **ONE_PER_RUN}))
    return work


def test_jobs_run_with_the_interpreter_snakemake_runs_in(work):
    out = snakemake(work, TABLE)
    assert succeeded(out), out[-4000:]
    assert cited_records_exist(work)


def test_a_failed_rerun_leaves_no_table_standing_on_missing_records(work):
    broken = work / "broken.yaml"  # a head setting that fails only when the head is built
    broken.write_text("methods:\n  rel_linear:\n    head_args: {dropout: 2.0}\n")
    out = snakemake(work, TABLE, overlays=(broken,))
    assert not succeeded(out) and "dropout probability" in out
    assert not (work / RECORD).exists()  # Snakemake removed the failed run's record
    # The same command again, as after a crash: the run is tried again, the table is not kept.
    out = snakemake(work, TABLE, overlays=(broken,))
    assert "is stale: 1 of its run records are missing" in out and "rule train:" in out
    assert not succeeded(out) and not (work / TABLE).exists()
    out = snakemake(work, TABLE)  # the setting fixed
    assert succeeded(out), out[-4000:]
    assert cited_records_exist(work)


def test_a_record_with_new_content_rebuilds_its_table(work):
    record = work / RECORD
    record.write_text(record.read_text().replace('"seed": 0', '"seed":  0'))  # as a rerun would
    assert "rule table:" in snakemake(work, "--dry-run", TABLE)


def test_a_record_deleted_by_hand_plans_its_run_and_its_table(work):
    (work / RECORD).unlink()
    out = snakemake(work, "--dry-run", TABLE)  # a dry run removes nothing and plans both
    assert f"table {TABLE} is stale: 1 of its run records are missing" in out
    assert "rule train:" in out and "rule table:" in out
    assert (work / TABLE).exists()


def test_a_cache_damaged_behind_its_manifest_is_resumed(work):
    store = next((work / "cache/features/demo").glob("sam_tiny-*/features.zarr"))
    (store / "neck/c/2/0/0/0").unlink()  # images 16..23 gone; the manifest still claims all
    (work / RECORD).unlink(missing_ok=True)  # a run that must read the cache
    plan = snakemake(work, "--dry-run", TABLE)
    assert "'neck' items 16..23" in plan and "Rule features resumes it" in plan
    assert "rule features:" in plan  # the plan shows the repair
    out = snakemake(work, TABLE)
    assert succeeded(out), out[-4000:]
    log = next((work / "logs/features/demo").glob("sam_tiny-*.log")).read_text()
    assert "32 of 40 images already complete; computing 8 images" in log
    assert cited_records_exist(work) and up_to_date(work)  # and nothing reruns afterwards


def test_a_failed_batch_leaves_its_table_planned_for_a_rebuild(tmp_path):
    """With batches: a run that fails fails its batch, so the record in place (trained with the
    earlier settings) stays until the run succeeds, and every plan until then rebuilds the
    run and its table: the table is never up to date on a record of other settings."""
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    out = snakemake(tmp_path, TABLE)
    assert succeeded(out), out[-4000:]
    broken = tmp_path / "broken.yaml"
    broken.write_text("methods:\n  rel_linear:\n    head_args: {dropout: 2.0}\n")
    out = snakemake(tmp_path, TABLE, overlays=(broken,))
    assert not succeeded(out) and "dropout probability" in out and "rule train_batch:" in out
    plan = snakemake(tmp_path, "--dry-run", TABLE, overlays=(broken,))
    assert "Nothing to be done" not in plan
    for rule in ("train_batch", "train", "table"):
        assert f"rule {rule}:" in plan, rule
    out = snakemake(tmp_path, TABLE)  # the earlier settings again: the run is current
    assert succeeded(out) and cited_records_exist(tmp_path) and up_to_date(tmp_path)
