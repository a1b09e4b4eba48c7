"""Batches of runs: the plan, one process against one process per run, resuming, the budget."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from samcache import __version__
from samcache.sweep import RECORD_SCHEMA, RunRef, place_staged, plan_batches, staged_path

from conftest import REPO

TRAIN = {"epochs": 2, "lr": 0.003, "batch_size": 8, "threads": 1}
METHODS = {
    "lin": {"head": "linear_probe", "train": TRAIN},
    "fused": {
        "head": "sam_slca_projector",
        "init": "random",
        "image_size": 32,
        "head_args": {"backbone": "test_resnet"},
        "train": TRAIN,
    },
    "attn": {
        "head": "attnmel_cnn_lesion",
        "init": "random",
        "image_size": 32,
        "head_args": {"width": 0.0625},
        "train": {**TRAIN, "oversample": True},
    },
}
RUNS = [  # task, method, fraction, seed: three heads, two tasks, two fractions
    ("melanoma", "fused", 100.0, 1),
    ("grade", "lin", 100.0, 0),
    ("grade", "lin", 50.0, 2),
    ("melanoma", "attn", 50.0, 0),
]


def plan(store, features, out: Path, runs=RUNS, methods=METHODS) -> dict:
    uses_features = {"lin", "fused"}
    return {
        "batch": "small/000000000000",
        "dataset": str(store.path),
        "methods": {
            name: {
                "spec": spec,
                "features": str(features.path) if name in uses_features else None,
                "expect_key": features.key if name in uses_features else None,
                "sam_prior": None,
            }
            for name, spec in methods.items()
        },
        "runs": [
            [task, m, f, s, str(out / task / m / f"f{f:g}_s{s}.json")] for task, m, f, s in runs
        ],
    }


def samcache(*args: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run(
        [sys.executable, "-m", "samcache", *args], capture_output=True, text=True, env=env, **kw
    )


def comparable(path: Path) -> dict:
    rec = json.loads(Path(path).read_text())
    for key in ("started", "wall_time_s"):  # the only fields that may differ
        rec.pop(key)
    return rec


# --- the plan -------------------------------------------------------------------------------


def test_batches_hold_only_runs_the_same_tables_need_and_split_evenly():
    table_a = {RunRef("d", "t", m, f, s) for m in "ab" for f in (10.0, 100.0) for s in range(5)}
    table_b = {RunRef("d", "t", "a", f, s) for f in (10.0, 100.0) for s in range(3)}
    cuda = {RunRef("d", "t", "c", 100.0, s) for s in range(3)}
    tables = {r: frozenset({"A"}) for r in table_a}
    tables |= {r: tables.get(r, frozenset()) | {"B"} for r in table_b}
    tables |= {r: frozenset({"A"}) for r in cuda}
    plan = plan_batches(
        tables,
        tables_of=tables.__getitem__,
        execution_of=lambda r: "cuda" if r.method == "c" else "cpu",
        inputs_of=lambda r: [r.method],
        runs_per_job=4,
    )
    planned = [r for runs in plan.values() for r in runs]
    assert sorted(planned) == sorted(tables) and len(set(planned)) == len(planned)
    for runs in plan.values():
        assert len({tables[r] for r in runs}) == 1  # building B never trains a run only A needs
        assert len({r.method == "c" for r in runs}) == 1  # one device per batch
        assert len(runs) <= 4
    # 14 runs needed by A alone (a: 4, b: 10) cut into 4 batches of 3-4, B's 6 into 2 of 3
    sizes = sorted(len(runs) for runs in plan.values() if {"c"} != {r.method for r in runs})
    assert sizes == [3, 3, 3, 3, 4, 4]
    assert all(b.startswith("d/a-") and len(b) == 16 for b in plan)
    again = plan_batches(
        reversed(list(tables)),
        tables_of=tables.__getitem__,
        execution_of=lambda r: "cuda" if r.method == "c" else "cpu",
        inputs_of=lambda r: [r.method],
        runs_per_job=4,
    )
    assert again == plan  # the same on every parse, whatever the order runs come in
    for runs in plan.values():  # the largest subsample of each method first
        fractions = [r.fraction for r in runs if r.method == runs[0].method]
        assert fractions == sorted(fractions, reverse=True)


# --- one process for many runs --------------------------------------------------------------


def test_a_batch_writes_the_records_one_process_per_run_writes(
    tmp_path, small_store, small_features
):
    p = plan(small_store, small_features, tmp_path / "runs")
    res = samcache("train-batch", "--plan", json.dumps(p), "--report", str(tmp_path / "r.json"))
    assert res.returncode == 0, res.stderr[-3000:]
    methods = p["methods"]
    for task, name, fraction, seed, record in p["runs"]:
        single = tmp_path / "single" / Path(record).name
        m = methods[name]
        args = (
            ["--features", m["features"], "--expect-key", m["expect_key"]] if m["features"] else []
        )
        res = samcache(
            "train",
            "--dataset",
            str(small_store.path),
            *args,
            "--task",
            task,
            "--method-name",
            name,
            "--spec",
            json.dumps(m["spec"]),
            "--fraction",
            str(fraction),
            "--seed",
            str(seed),
            "--out",
            str(single),
        )
        assert res.returncode == 0, res.stderr[-3000:]
        batched = staged_path(record)
        assert comparable(batched) == comparable(single), record
        assert "trained in" not in batched.with_suffix(".log").read_text()  # the run's own log
    report = json.loads((tmp_path / "r.json").read_text())
    assert [r["status"] for r in report["runs"]] == ["trained"] * len(p["runs"])


def test_inputs_are_read_once_per_process_and_the_budget_streams_the_same_values(
    tmp_path, small_store, small_features
):
    from samcache.batch import run_batch
    from samcache.resident import ResidentCache

    runs = [
        ("grade", "fused", 100.0, 0),
        ("grade", "fused", 50.0, 1),
        ("grade", "lin", 100.0, 3),
        ("grade", "lin", 50.0, 4),
    ]
    resident = plan(small_store, small_features, tmp_path / "resident", runs)
    streamed = plan(small_store, small_features, tmp_path / "streamed", runs)
    reads = {}
    original = ResidentCache.__init__

    def spy(self, *a, **k):
        original(self, *a, **k)
        reads[k.get("device_memory_gb", 0), a[0] if a else k["memory_gb"]] = self.stats

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ResidentCache, "__init__", spy)
        assert run_batch(resident, memory_gb=8) == []
        assert run_batch(streamed, memory_gb=0) == []
    for (_, _, _, _, a), (_, _, _, _, b) in zip(resident["runs"], streamed["runs"], strict=True):
        assert comparable(staged_path(a)) == comparable(staged_path(b))
    once, per_batch = reads[0, 8], reads[0, 0]
    n_items = small_store.n_items  # fraction 100 reads every train, val and test item
    assert once.rows["tap"] == 5 * n_items and once.rows["image"] == n_items
    assert once.rows["pooled"] == 5 * n_items
    # streaming reads the taps and images again in every batch of every epoch
    assert per_batch.rows["tap"] > 2 * once.rows["tap"]
    assert per_batch.rows["image"] > 2 * once.rows["image"]


def test_a_failed_run_keeps_the_others_and_the_rerun_trains_only_what_is_missing(
    tmp_path, small_store, small_features
):
    from samcache.batch import run_batch

    broken = {**METHODS, "lin": {**METHODS["lin"], "head_args": {"hiden": 3}}}
    runs = RUNS[:3]
    p = plan(small_store, small_features, tmp_path, runs, broken)
    report = tmp_path / "report.json"
    failed = run_batch(p, report=report)
    records = [r[-1] for r in p["runs"]]
    assert failed == records[1:3]
    assert not report.exists()  # Snakemake reruns a batch without a report
    assert staged_path(records[0]).is_file()
    assert not staged_path(records[1]).exists() and not staged_path(records[2]).exists()
    first = staged_path(records[0]).stat().st_mtime_ns
    fixed = plan(small_store, small_features, tmp_path, runs)
    assert run_batch(fixed, report=report) == []
    statuses = [r["status"] for r in json.loads(report.read_text())["runs"]]
    assert statuses == ["staged earlier", "trained", "trained"]
    assert staged_path(records[0]).stat().st_mtime_ns == first


def test_a_killed_batch_resumes_with_the_runs_it_had_not_finished(
    tmp_path, small_store, small_features
):
    p = plan(small_store, small_features, tmp_path, RUNS[:3])
    records = [r[-1] for r in p["runs"]]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "samcache", "train-batch", "--plan", json.dumps(p)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not staged_path(records[0]).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert staged_path(records[0]).exists()
    done_before = {r for r in records if staged_path(r).exists()}
    assert len(done_before) < len(records), "the batch finished before it could be killed"
    for r in records:  # nothing half-written reads as a record
        if staged_path(r).exists():
            assert "metrics" in json.loads(staged_path(r).read_text())
    report = tmp_path / "report.json"
    res = samcache("train-batch", "--plan", json.dumps(p), "--report", str(report))
    assert res.returncode == 0, res.stderr[-3000:]
    statuses = {r["record"]: r["status"] for r in json.loads(report.read_text())["runs"]}
    assert statuses == {r: "staged earlier" if r in done_before else "trained" for r in records}


def test_a_current_record_is_staged_as_it_is_and_never_retrained(
    tmp_path, small_store, small_features
):
    from samcache.batch import run_batch

    p = plan(small_store, small_features, tmp_path, RUNS[1:3])
    assert run_batch(p) == []
    records = [r[-1] for r in p["runs"]]
    expect = {"task": "grade", "method": "lin", "samcache_version": __version__}
    for _task, m, f, s, rec in p["runs"]:
        assert place_staged(rec, {**expect, "fraction": f, "seed": s}, METHODS[m])
    before = [Path(r).read_bytes() for r in records]
    report = tmp_path / "again.json"
    assert run_batch(p, report=report) == []
    statuses = [r["status"] for r in json.loads(report.read_text())["runs"]]
    assert statuses == ["current", "current"]
    assert [staged_path(r).read_bytes() for r in records] == before
    # other settings: the record no longer stands for the run, so it is trained again
    changed = plan(small_store, small_features, tmp_path, RUNS[1:2])
    changed["methods"]["lin"]["spec"] = {**METHODS["lin"], "train": {**TRAIN, "epochs": 1}}
    assert run_batch(changed, report=report) == []
    assert [r["status"] for r in json.loads(report.read_text())["runs"]] == ["trained"]


def test_a_staged_record_is_put_in_place_only_if_it_is_the_run_as_configured(tmp_path):
    from samcache.sweep import write_json_atomic

    record = tmp_path / "grade" / "lin" / "f50_s2.json"
    rec = {
        "schema": RECORD_SCHEMA,
        "task": "grade",
        "method": "lin",
        "fraction": 50.0,
        "seed": 2,
        "samcache_version": __version__,
        "config": METHODS["lin"],
        "metrics": {"test": {"acc": np.float64(0.5).item()}},
    }
    write_json_atomic(staged_path(record), rec)
    expect = {k: rec[k] for k in ("task", "method", "fraction", "seed", "samcache_version")}
    other = {**METHODS["lin"], "train": {**TRAIN, "lr": 0.1}}
    assert not place_staged(record, expect, other)  # other settings: not this run's record
    assert not place_staged(record, {**expect, "seed": 3}, METHODS["lin"])
    assert staged_path(record).exists() and not record.exists()
    assert place_staged(record, expect, METHODS["lin"])
    assert json.loads(record.read_text()) == rec and not staged_path(record).exists()


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_inputs_resident_on_the_gpu_give_the_host_values(small_store, small_features):
    import torch

    from samcache.inputs import RunInputs
    from samcache.resident import ResidentCache

    items = small_store.indices("train")
    kw = dict(labels=small_store.labels("grade"), features=small_features, taps=["block:1", "neck"])
    needs = frozenset({"taps", "image"})
    on_gpu = ResidentCache(1, device="cuda", device_memory_gb=1)
    with (
        RunInputs(small_store, needs, items, items, cache=on_gpu, image_size=32, **kw) as gpu,
        RunInputs(small_store, needs, items, items, image_size=32, **kw) as host,
    ):
        a, b = gpu.batch(items[::-1][:8]), host.batch(items[::-1][:8])
        assert a["taps"]["neck"].device.type == "cuda" and a["image"].device.type == "cuda"
        for t in ("block:1", "neck"):
            torch.testing.assert_close(a["taps"][t].cpu(), b["taps"][t], rtol=0, atol=0)
        torch.testing.assert_close(a["image"].cpu(), b["image"])


def test_a_batch_name_says_which_tables_it_serves():
    from samcache.sweep import batch_tag, tables_tag, tag_tables

    tables = ["t_b", "t_a", "t_c", "t_d"]
    for chosen in (["t_a"], ["t_c", "t_a"], tables):
        tag = tables_tag(tables, chosen)
        assert tag.startswith("t") and tag_tables(tables, tag) == sorted(chosen)
    assert batch_tag("demo/t5-0123456789ab") == "t5" and batch_tag("demo/a-0123456789ab") == "a"
