"""Shared fixtures: a small synthetic dataset store and a vit_tiny feature cache built from it;
for the head tests, one torch thread and the input shapes of a batch."""

from __future__ import annotations

import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@cache
def slurm_missing() -> str | None:
    """Why the `slurm` tests cannot run here, or None where `sinfo` answers."""
    if shutil.which("sinfo") is None:
        return "no SLURM here: sinfo is not installed (CI starts one with .ci/slurm-up)"
    try:
        res = subprocess.run(
            ["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=20
        )
    except subprocess.TimeoutExpired:
        return "no SLURM here: sinfo did not answer within 20 s"
    if res.returncode != 0 or not res.stdout.strip():
        why = (res.stderr.strip().splitlines() or ["no partitions"])[-1]
        return f"no SLURM here: sinfo does not answer ({why}); CI starts one with .ci/slurm-up"
    return None


def pytest_collection_modifyitems(config, items):
    """Tests marked `slurm` run only where a SLURM controller answers `sinfo`."""
    slurm_tests = [item for item in items if item.get_closest_marker("slurm")]
    if slurm_tests and (why := slurm_missing()):
        for item in slurm_tests:
            item.add_marker(pytest.mark.skip(reason=why))


TAPS = ["patch_embed", "block:1", "block:2", "block:4", "neck"]


def tiny_feature_config(**overrides):
    cfg = {"encoder": "vit_tiny", "weights": "random", "taps": TAPS, "batch_size": 8}
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="session")
def small_store(tmp_path_factory):
    from samcache.data.synthetic import write_synthetic_store

    path = tmp_path_factory.mktemp("stores") / "small.zarr"
    return write_synthetic_store(path, name="small", n_images=60, image_size=64, seed=3)


@pytest.fixture(scope="session")
def small_features(tmp_path_factory, small_store):
    from samcache.features.extract import extract_features
    from samcache.features.specs import feature_set_from_config

    fset = feature_set_from_config(tiny_feature_config(), "small:test")
    out = tmp_path_factory.mktemp("features") / "features.zarr"
    return extract_features(small_store.path, out, fset, batch_size=8, device="cpu", progress=False)


@pytest.fixture
def one_thread():
    """One torch thread, as training runs use (train.threads): tiny models only lose time to
    thread hand-offs."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def shapes_of(batch: dict) -> dict:
    """``input_shapes`` of a head: each input's shape without the batch axis, taps by name."""
    return {
        k: ({t: tuple(x.shape[1:]) for t, x in v.items()} if k == "taps" else tuple(v.shape[1:]))
        for k, v in batch.items()
        if k != "label"
    }
