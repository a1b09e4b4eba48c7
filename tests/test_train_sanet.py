"""Seed 003's runs on the attribute task: SANet with its shuffle module reads a SLIC cache,
is deterministic on the CPU, and trains alone through `samcache train --superpixels`."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")

SANET = {
    "head": "sanet",
    "init": "random",
    "image_size": 32,
    "head_args": {"backbone": "test_resnet", "width": 0.125, "shuffle": True},
    "train": {
        "epochs": 2,
        "batch_size": 8,
        "threads": 1,
        "optimizer": "amsgrad",
        "lr": 1e-3,
        "weight_decay": 1e-4,
        "poly_power": 0.9,
        "augment": False,
        "select_metric": "task2_jaccard",
    },
}


@pytest.fixture(scope="module")
def slic(tmp_path_factory, small_store):
    from samcache.features.specs import SlicParams
    from samcache.features.superpixels import compute_superpixels

    out = tmp_path_factory.mktemp("slic") / "superpixels.zarr"
    params = SlicParams(n_segments=16, slic_zero=True)
    return compute_superpixels(small_store.path, out, params, key="k", threads=1, progress=False)


def run(tmp_path, store, superpixels, name: str, seed: int = 0) -> dict:
    from samcache.train import train_run

    return train_run(
        dataset=store.path,
        features=None,
        task="attributes",
        method_name="sanet",
        method=SANET,
        fraction=100.0,
        seed=seed,
        out=tmp_path / f"{name}.json",
        superpixels=superpixels,
    )


def test_sanet_with_the_shuffle_module_is_deterministic_on_cpu(tmp_path, small_store, slic):
    a = run(tmp_path, small_store, slic, "a", seed=2)
    b = run(tmp_path, small_store, slic, "b", seed=2)
    assert a["metrics"] == b["metrics"] and a["history"] == b["history"]
    test = a["metrics"]["test"]
    classes = small_store.task("attributes").classes
    assert {f"task2_jaccard_{c}" for c in classes} <= set(test)
    assert a["superpixels_path"] == str(slic) and a["superpixels_key"] == "k"
    assert a["head_info"]["shuffle"] and a["head_info"]["superpixel_mode"] == "concat"
    assert a["train_settings"]["optimizer"] == "amsgrad"
    assert len(a["history"]) == 2
    c = run(tmp_path, small_store, slic, "c", seed=3)
    assert c["metrics"] != a["metrics"]  # another seed, another draw of shuffles and weights


def test_a_head_that_reads_superpixels_needs_a_superpixel_set(tmp_path, small_store):
    with pytest.raises(ValueError, match="names no superpixel set"):
        run(tmp_path, small_store, None, "none")


def test_the_cli_trains_a_sanet_run_alone_on_its_superpixels(tmp_path, small_store, slic):
    """The path of `sweep.runs_per_job: 1`: `samcache train --superpixels`."""
    from samcache.cli import main

    method = {**SANET, "train": {**SANET["train"], "epochs": 1}}
    record = tmp_path / "run.json"
    argv = ["train", "--dataset", str(small_store.path), "--task", "attributes"]
    argv += ["--method-name", "sanet", "--spec", json.dumps(method), "--fraction", "100"]
    argv += ["--seed", "0", "--out", str(record), "--superpixels", str(slic)]
    assert main(argv) == 0
    rec = json.loads(record.read_text())
    assert rec["superpixels_path"] == str(slic) and "task2_jaccard" in rec["metrics"]["test"]


def test_a_record_of_other_superpixels_is_trained_again(tmp_path, small_store, slic):
    """A batch keeps a current record and retrains one whose SLIC cache was another (the
    superpixel set's parameters changed, hence its key), as it does for feature caches."""
    from samcache import __version__
    from samcache.batch import run_batch
    from samcache.features.specs import SlicParams
    from samcache.features.superpixels import compute_superpixels
    from samcache.sweep import place_staged, staged_path

    spec = {**SANET, "train": {**SANET["train"], "epochs": 1}}
    record = str(tmp_path / "attributes" / "sanet" / "f100_s0.json")

    def plan(superpixels) -> dict:
        method = {"spec": spec, "features": None, "expect_key": None, "sam_prior": None}
        return {
            "batch": "small/000000000000",
            "dataset": str(small_store.path),
            "methods": {"sanet": {**method, "superpixels": str(superpixels)}},
            "runs": [["attributes", "sanet", 100.0, 0, record]],
        }

    def statuses(report) -> list[str]:
        return [r["status"] for r in json.loads(report.read_text())["runs"]]

    report = tmp_path / "report.json"
    assert run_batch(plan(slic), report=report) == [] and statuses(report) == ["trained"]
    expect = {"task": "attributes", "method": "sanet", "samcache_version": __version__}
    assert place_staged(record, {**expect, "superpixels_key": "k"}, spec)
    assert run_batch(plan(slic), report=report) == [] and statuses(report) == ["current"]
    other = compute_superpixels(
        small_store.path,
        tmp_path / "other.zarr",
        SlicParams(n_segments=9),
        key="k2",
        progress=False,
    )
    assert run_batch(plan(other), report=report) == [] and statuses(report) == ["trained"]
    assert json.loads(staged_path(record).read_text())["superpixels_key"] == "k2"
