from __future__ import annotations

import json

import numpy as np
import pytest

from samcache.train import train_run

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


def test_heads_answer_the_interface():
    import torch

    from samcache.heads import HEADS, build_head

    for name, cls in HEADS.items():
        if cls.requires != {"pooled"}:
            continue  # heads of other inputs: tests/test_heads.py builds inputs from `requires`
        head = build_head(name, n_outputs=3, input_shapes={"pooled": (10,)})
        out = head({"pooled": torch.randn(4, 10)})
        assert out["logits"].shape == (4, 3), name
        out["logits"].sum().backward()
        assert all(p.grad is not None for p in head.parameters()), name
        assert np.isfinite(out["logits"].detach().numpy()).all()
        assert cls.requires <= {
            "pooled",
            "taps",
            "image",
            "lesion_mask",
            "attributes",
            "superpixels",
        }
