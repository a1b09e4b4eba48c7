"""A real `samcache features` process killed with SIGKILL at several points, then resumed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from samcache.features.extract import extract_features
from samcache.features.specs import feature_set_from_config
from samcache.features.store import FeatureStore
from samcache.zarrio import open_group

from conftest import REPO

SPEC = {"encoder": "vit_tiny", "weights": "random", "taps": ["block:2", "neck"], "batch_size": 4}
DATASET_ID = "small:crash"


def start(store: Path, out: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "samcache", "features", "--dataset", str(store)]
    cmd += ["--dataset-id", DATASET_ID, "--spec", json.dumps(SPEC), "--out", str(out)]
    cmd += ["--no-progress", "--threads", "1"]
    with open(log, "w") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)


def flagged_batches(out: Path) -> int:
    """Completed batches, counted from the flag chunk files (one per batch here)."""
    chunks = out / "complete" / "c"
    return (
        sum(1 for p in chunks.iterdir() if not p.name.endswith(".partial"))
        if chunks.is_dir()
        else 0
    )


def kill_when(proc: subprocess.Popen, ready, timeout: float = 120.0) -> bool:
    """SIGKILL ``proc`` as soon as ``ready()`` holds; False if it finished first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.002)
    proc.kill()
    proc.wait()
    raise AssertionError("extraction made no progress")


def shard_files(out: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(out)): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in out.rglob("*")
        if p.is_file() and "c" in p.relative_to(out).parts and "complete" not in p.parts
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory, small_store):
    """The same settings, never interrupted (in this process, with the command's one thread)."""
    out = tmp_path_factory.mktemp("ref") / "features.zarr"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fset = feature_set_from_config(SPEC, DATASET_ID)
        return extract_features(small_store.path, out, fset, batch_size=4, progress=False)
    finally:
        torch.set_num_threads(threads)


def test_killed_extraction_resumes_to_the_uninterrupted_result(tmp_path, small_store, reference):
    out = tmp_path / "features.zarr"
    kill_points = {
        "while the empty store is being created": lambda: any(
            tmp_path.glob(".features.zarr.tmp-*")
        ),
        "after 2 batches": lambda: flagged_batches(out) >= 2,
        "after 7 batches": lambda: flagged_batches(out) >= 7,
    }
    taps = [t["name"] for t in reference.attrs["taps"]]
    done_before, attempts = 0, []
    for attempt, (point, ready) in enumerate(kill_points.items()):
        log = tmp_path / f"log{attempt}"
        killed = kill_when(start(small_store.path, out, log), ready)
        attempts.append((point, killed, log))
        if not (out / "zarr.json").exists():
            assert not list(out.parent.glob("features.zarr/*")), "a half-created store is visible"
            continue
        # Never an item that reads as complete when it is not: flagged items hold final values.
        fs = FeatureStore(out, allow_incomplete=True)
        done = np.asarray(fs.group["complete"][:])
        assert done.sum() >= done_before  # complete batches were never undone
        for tap in taps:
            idx = np.flatnonzero(done)
            np.testing.assert_array_equal(fs.read(tap, idx), reference.read(tap, idx), err_msg=tap)
        started = re.search(
            r"(\d+) of 60 images already complete; computing (\d+)", log.read_text()
        )
        if started:  # it got as far as reading the flags: it planned only the missing images
            assert int(started.group(1)) == done_before
            assert int(started.group(2)) == 60 - done_before
        done_before = int(done.sum())
    assert any(killed for _, killed, _ in attempts), "no kill landed: the test proved nothing"
    assert 0 < done_before < 60, attempts

    # Shard files of the batches complete now: a resume must not rewrite them.
    done = np.asarray(open_group(out, "r")["complete"][:])
    kept = {k: v for k, v in shard_files(out).items() if done[int(k.split("/")[2]) * 4]}
    assert len(kept) == len(taps) * done_before // 4
    final_log = tmp_path / "final"
    assert start(small_store.path, out, final_log).wait(timeout=300) == 0, final_log.read_text()
    assert f"{done_before} of 60 images already complete; computing {60 - done_before}" in (
        final_log.read_text()
    )
    result = FeatureStore(out, expect_key=feature_set_from_config(SPEC, DATASET_ID).key())
    for tap in taps:
        everything = np.arange(60)
        np.testing.assert_array_equal(result.read(tap, everything), reference.read(tap, everything))
    after = shard_files(out)
    assert all(after[k] == v for k, v in kept.items())  # same inode and mtime: not rewritten
    assert not list(out.rglob("*.partial"))
    assert not list(tmp_path.glob(".features.zarr.tmp-*"))
