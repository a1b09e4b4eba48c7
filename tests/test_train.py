from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from samcache.train import TrainSettings, make_optimizer, train_run

METHOD = {
    "head": "linear_probe",
    "train": {"epochs": 4, "lr": 0.003, "batch_size": 8, "threads": 1},
}


@pytest.mark.parametrize("task", ["melanoma", "grade"])
def test_same_seed_same_record(tmp_path, small_store, small_features, task):
    kw = dict(
        dataset=small_store.path,
        features=small_features.path,
        task=task,
        method_name="lin",
        method=METHOD,
        fraction=50,
    )
    a = train_run(**kw, seed=1, out=tmp_path / "a.json")
    b = train_run(**kw, seed=1, out=tmp_path / "b.json")
    assert a["metrics"] == b["metrics"] and a["history"] == b["history"]
    assert a["subsample_digest"] == b["subsample_digest"]
    c = train_run(**kw, seed=2, out=tmp_path / "c.json")
    assert c["subsample_digest"] != a["subsample_digest"]


def test_record_traces_its_inputs(tmp_path, small_store, small_features):
    rec = train_run(
        dataset=small_store.path,
        features=small_features.path,
        task="melanoma",
        method_name="mlp",
        method={"head": "mlp_probe", "head_args": {"hidden": 16}, "train": {"epochs": 3}},
        fraction=100,
        seed=0,
        out=tmp_path / "r.json",
    )
    on_disk = json.loads((tmp_path / "r.json").read_text())
    assert on_disk == json.loads(json.dumps(rec))
    for key in (
        "config",
        "seed",
        "fraction",
        "code_version",
        "cache_key",
        "wall_time_s",
        "dataset_fingerprint",
        "subsample_digest",
    ):
        assert key in rec, key
    assert rec["cache_key"] == small_features.key
    assert rec["config"]["head_args"] == {"hidden": 16}
    assert rec["n_train"] == 36 and rec["n_test"] == 12
    assert 1 <= rec["best_epoch"] <= 3
    assert set(rec["metrics"]["test"]) == {"acc", "auc", "ap"}


def test_methods_at_the_same_fraction_and_seed_share_the_subsample(
    tmp_path, small_store, small_features
):
    common = dict(
        dataset=small_store.path, features=small_features.path, task="melanoma", fraction=10, seed=4
    )
    a = train_run(**common, method_name="a", method=METHOD, out=tmp_path / "a.json")
    b = train_run(
        **common,
        method_name="b",
        method={"head": "mlp_probe", "train": {"epochs": 2}},
        out=tmp_path / "b.json",
    )
    assert a["subsample_digest"] == b["subsample_digest"]


def test_wrong_cache_key_is_refused(tmp_path, small_store, small_features):
    from samcache.zarrio import StoreError

    with pytest.raises(StoreError, match="cache key"):
        train_run(
            dataset=small_store.path,
            features=small_features.path,
            task="melanoma",
            method_name="x",
            method=METHOD,
            fraction=100,
            seed=0,
            out=tmp_path / "x.json",
            expect_cache_key="000000000000",
        )
    assert not (tmp_path / "x.json").exists()


def test_classification_subsample_is_stratified_on_the_labels(
    tmp_path, small_store, small_features
):
    from samcache.data.fractions import fraction_subsample, subsample_digest

    rec = train_run(
        dataset=small_store.path,
        features=small_features.path,
        task="grade",
        method_name="lin",
        method={**METHOD, "train": {**METHOD["train"], "epochs": 1}},
        fraction=50,
        seed=3,
        out=tmp_path / "r.json",
    )
    train = small_store.indices("train")
    expected = fraction_subsample(train, small_store.labels("grade")[train], 50, 3)
    assert rec["subsample_digest"] == subsample_digest(expected)


def test_amsgrad_with_polynomial_decay_follows_seed_003():
    p = [torch.nn.Parameter(torch.zeros(1))]
    s = TrainSettings(optimizer="amsgrad", lr=1e-4, weight_decay=1e-4, epochs=10, poly_power=0.9)
    opt, sched = make_optimizer(p, s)
    assert isinstance(opt, torch.optim.Adam) and opt.defaults["amsgrad"]
    assert opt.defaults["betas"][0] == 0.9 and opt.defaults["weight_decay"] == 1e-4
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [1e-4 * (1 - e / 10) ** 0.9 for e in range(10)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-9)
    assert opt.param_groups[0]["lr"] == 0.0  # the last epoch ends at zero
    with pytest.raises(ValueError, match="lr_step and train.poly_power"):
        make_optimizer(p, TrainSettings(lr_step=5, poly_power=0.9))
