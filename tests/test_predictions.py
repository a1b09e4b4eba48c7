"""Per-image predictions in records and prediction stores beside them: exact, deterministic,
moved with their records, and the same whether a run trains alone or in a batch."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from sklearn.metrics import jaccard_score

from samcache.predictions import load_predictions
from samcache.sweep import (
    companion_path,
    place_staged,
    record_mismatch,
    stage_copy,
    staged_path,
)
from samcache.train import train_run

LINEAR = {"head": "linear_probe", "train": {"epochs": 2, "lr": 0.003, "batch_size": 8}}
ATTENTION = {
    "head": "attnmel_cnn",
    "init": "random",
    "image_size": 32,
    "head_args": {"width": 1 / 16},
    "train": {"epochs": 1, "batch_size": 8, "threads": 1, "lr": 0.003},
}
#: Fields that say when and where a run trained, not what it computed.
CIRCUMSTANCES = {"wall_time_s", "started", "host", "platform"}


def train(tmp_path, store, method, name, *, out, features=None, seed=0, task="melanoma"):
    return train_run(
        dataset=store.path,
        features=features,
        task=task,
        method_name=name,
        method=method,
        fraction=100,
        seed=seed,
        out=tmp_path / out,
    )


@pytest.fixture(scope="module")
def attention_run(tmp_path_factory, small_store):
    tmp = tmp_path_factory.mktemp("attention")
    return tmp, train(tmp, small_store, ATTENTION, "attn", out="attn.json")


@pytest.mark.parametrize("task", ["melanoma", "grade"])
def test_record_predictions_recompute_the_recorded_metrics_exactly(
    tmp_path, small_store, small_features, task
):
    from samcache.metrics import compute_metrics

    rec = train(
        tmp_path, small_store, LINEAR, "lin", out="r.json", features=small_features.path, task=task
    )
    on_disk = json.loads((tmp_path / "r.json").read_text())
    pred = load_predictions(on_disk, tmp_path / "r.json")
    np.testing.assert_array_equal(pred.items, small_store.indices("test"))
    np.testing.assert_array_equal(pred.labels, small_store.labels(task)[pred.items])
    assert pred.probabilities.dtype == np.float32 and pred.probabilities.shape[0] == len(pred.items)
    assert (
        compute_metrics(pred.labels, pred.probabilities, rec["task_type"]) == rec["metrics"]["test"]
    )
    assert pred.store is None and not companion_path(tmp_path / "r.json").exists()


def test_attention_maps_lie_in_a_store_beside_the_record(attention_run, small_store):
    from samcache.localisation import binarise, maps_to_mask_frame

    tmp, rec = attention_run
    pred = load_predictions(rec, tmp / "attn.json")
    assert pred.store == tmp / "attn.zarr" and pred.store.is_dir()
    maps = pred.maps()
    assert set(maps) == {"pool3", "pool4"} and maps["pool3"].shape[0] == len(pred.items)
    store = pred.open_store()
    np.testing.assert_array_equal(store["items"][:], pred.items)
    assert store.attrs["frame"] == "image" and store.attrs["record"] == "attn.json"
    # the stored maps give the recorded per-image Jaccard indices (scikit-learn's), and their
    # mean is the recorded metric
    masks = np.asarray(small_store.group["masks/lesion"][:])[pred.items] > 0
    import torch

    for name, m in maps.items():
        pred_masks = binarise(
            maps_to_mask_frame(torch.from_numpy(m[:, None]), masks.shape[1:], "image").numpy()
        )
        ref = [
            jaccard_score(t.ravel(), p.ravel(), zero_division=1.0)
            for p, t in zip(pred_masks, masks, strict=True)
        ]
        np.testing.assert_allclose(pred.per_image[f"jaccard_{name}"], ref, atol=1e-12)
        assert rec["metrics"]["test"][f"jaccard_{name}"] == pytest.approx(np.mean(ref), abs=1e-12)


def test_a_store_that_is_not_its_records_own_is_refused(attention_run, tmp_path):
    from samcache.zarrio import StoreError

    tmp, rec = attention_run
    shutil.copy(tmp / "attn.json", tmp_path / "attn.json")
    shutil.copytree(tmp / "attn.zarr", tmp_path / "attn.zarr")
    forged = json.loads((tmp_path / "attn.json").read_text())
    forged["predictions"]["store_digest"] = "0" * 64
    (tmp_path / "attn.json").write_text(json.dumps(forged))
    with pytest.raises(StoreError, match="another run"):
        load_predictions(forged, tmp_path / "attn.json").maps()
    assert "belongs to another record" in record_mismatch(
        tmp_path / "attn.json", {"method": "attn"}, forged["config"]
    )
    shutil.rmtree(tmp_path / "attn.zarr")
    assert "missing" in record_mismatch(tmp_path / "attn.json", {}, forged["config"])


def test_same_seed_same_predictions_and_store(attention_run, tmp_path, small_store):
    tmp, rec = attention_run
    again = train(tmp_path, small_store, ATTENTION, "attn", out="attn.json")
    assert again["predictions"] == rec["predictions"]  # the digest of the store's arrays too
    a, b = load_predictions(rec, tmp / "attn.json"), load_predictions(again, tmp_path / "attn.json")
    for name, m in a.maps().items():
        np.testing.assert_array_equal(m, b.maps()[name])


def test_records_without_predictions_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"old\.json holds no per-image predictions"):
        load_predictions({"schema": 1, "task_type": "binary"}, tmp_path / "old.json")


def test_staged_record_and_store_move_together_and_are_copied_together(attention_run, tmp_path):
    tmp, rec = attention_run
    record = tmp_path / "runs" / "f100_s0.json"
    staged = staged_path(record)
    staged.parent.mkdir(parents=True)
    shutil.copy(tmp / "attn.json", staged)
    shutil.copytree(tmp / "attn.zarr", companion_path(staged))
    # the staged record names its store by the record's own name: fix it up as a batch would
    moved = json.loads(staged.read_text())
    moved["predictions"]["store"] = companion_path(record).name
    staged.write_text(json.dumps(moved))
    # an earlier record and store in place are replaced, never left beside the new ones
    record.write_text(json.dumps({"schema": 1, "metrics": {}}))
    companion_path(record).mkdir()
    assert place_staged(record, {}, rec["config"])
    assert not staged.exists() and not companion_path(staged).exists()
    assert record_mismatch(record, {}, rec["config"]) is None
    assert load_predictions(json.loads(record.read_text()), record).maps()
    assert not place_staged(record, {}, rec["config"])  # nothing staged any more
    stage_copy(record)
    assert record_mismatch(staged, {}, rec["config"]) is None
    assert companion_path(staged).is_dir() and record.exists() and companion_path(record).is_dir()


def test_a_batch_stages_what_a_single_run_writes(
    tmp_path, small_store, small_features, attention_run
):
    """The batched path (samcache.batch) and the single-run path give the same records and
    prediction stores, field by field; each staged record is placed with its store."""
    from samcache.batch import run_batch

    tmp, single_attn = attention_run
    single_lin = train(
        tmp_path, small_store, LINEAR, "lin", out="lin.json", features=small_features.path
    )
    runs = tmp_path / "runs"
    plan = {
        "batch": "test/000000000000",
        "dataset": str(small_store.path),
        "methods": {
            "attn": {"spec": ATTENTION, "features": None, "expect_key": None, "sam_prior": None},
            "lin": {
                "spec": LINEAR,
                "features": str(small_features.path),
                "expect_key": small_features.key,
                "sam_prior": None,
            },
        },
        "runs": [
            ["melanoma", "attn", 100, 0, str(runs / "attn" / "f100_s0.json")],
            ["melanoma", "lin", 100, 0, str(runs / "lin" / "f100_s0.json")],
        ],
    }
    assert run_batch(plan, report=tmp_path / "report.json") == []
    for name, single in (("attn", single_attn), ("lin", single_lin)):
        record = runs / name / "f100_s0.json"
        staged = json.loads(staged_path(record).read_text())
        differ = {k for k in single if single[k] != staged.get(k)} - CIRCUMSTANCES
        if name == "attn":
            assert staged["predictions"]["store"] == "f100_s0.zarr"
            differ -= {"predictions"}  # the store's name follows the record's name
            assert {k: v for k, v in staged["predictions"].items() if k != "store"} == {
                k: v for k, v in single["predictions"].items() if k != "store"
            }
        assert not differ, differ
        assert place_staged(record, {}, staged["config"])
        assert record_mismatch(record, {}, staged["config"]) is None
    assert companion_path(runs / "attn" / "f100_s0.json").is_dir()
    assert not companion_path(runs / "lin" / "f100_s0.json").exists()
