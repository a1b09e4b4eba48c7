"""Seed 001's heads in runs: backbone checkpoints, attention Jaccard in records, the SGD option."""

from __future__ import annotations

import pytest
import torch
import torchvision

from samcache.heads import build_head
from samcache.heads.attnmel import VGG16Dense
from samcache.heads.vgg import VGGBackbone
from samcache.train import TrainSettings, make_optimizer, train_run


def torchvision_shapes(module: torch.nn.Module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_full_width_backbone_has_torchvisions_parameter_names_and_shapes():
    with torch.device("meta"):  # shapes only: no 138M-parameter initialisation
        tv_bn, tv = torchvision.models.vgg16_bn(), torchvision.models.vgg16()
        ours_bn, ours = VGGBackbone(1.0, batch_norm=True), VGGBackbone(1.0, batch_norm=False)
        dense = VGG16Dense(2, width=1.0)
    assert torchvision_shapes(ours_bn.features) == torchvision_shapes(tv_bn.features)
    assert torchvision_shapes(ours.features) == torchvision_shapes(tv.features)
    for i in (0, 3):
        assert torchvision_shapes(dense.classifier[i]) == torchvision_shapes(tv_bn.classifier[i])
    assert dense.classifier[6].out_features == 2


def test_a_local_torchvision_checkpoint_is_loaded(tmp_path):
    with torch.device("meta"):
        reference = torchvision.models.vgg16_bn().features.state_dict()
    g = torch.Generator().manual_seed(0)
    state = {
        f"features.{k}": (
            torch.zeros((), dtype=torch.long)
            if v.dtype == torch.long
            else torch.randn(v.shape, generator=g)
        )
        for k, v in reference.items()
    }
    path = tmp_path / "vgg16_bn.pth"
    torch.save(state, path)
    head = build_head(
        "attnmel_cnn", n_outputs=2, input_shapes={"image": (3, 32, 32)}, checkpoint=str(path)
    )
    for k, v in head.backbone.features.state_dict().items():
        torch.testing.assert_close(v, state[f"features.{k}"])
    assert head.info["backbone_init"] == "checkpoint vgg16_bn.pth"
    assert len(head.info["checkpoint_sha256"]) == 64


def test_absent_checkpoint_and_a_mismatched_one_are_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth does not exist"):
        build_head(
            "mel_cnn",
            n_outputs=2,
            input_shapes={"image": (3, 32, 32)},
            width=0.25,
            checkpoint=str(tmp_path / "missing.pth"),
        )
    wrong = tmp_path / "vgg16_no_bn.pth"
    torch.save(
        {f"features.{k}": v for k, v in VGGBackbone(0.25, False).state_dict().items()}, wrong
    )
    with pytest.raises(ValueError, match="vgg16_no_bn.pth does not fit"):
        build_head(
            "mel_cnn",
            n_outputs=2,
            input_shapes={"image": (3, 32, 32)},
            width=0.25,
            checkpoint=str(wrong),
        )


def test_sgd_option_follows_seed_001s_schedule():
    p = [torch.nn.Parameter(torch.zeros(1))]
    s = TrainSettings(optimizer="sgd", lr=0.01, weight_decay=1e-4, lr_step=10, lr_gamma=0.1)
    opt, sched = make_optimizer(p, s)
    assert isinstance(opt, torch.optim.SGD)
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["nesterov"]
    lrs = []
    for _ in range(25):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == lrs[9] == 0.01
    assert lrs[10] == pytest.approx(0.001) and lrs[20] == pytest.approx(0.0001)
    opt, sched = make_optimizer(p, TrainSettings())
    assert isinstance(opt, torch.optim.AdamW) and sched is None


VGG_TRAIN = {"epochs": 2, "batch_size": 8, "threads": 1, "oversample": True, "lr": 0.003}


def run(tmp_path, store, name, method, features=None, seed=0, out="r.json"):
    return train_run(
        dataset=store.path,
        features=features,
        task="melanoma",
        method_name=name,
        method=method,
        fraction=100,
        seed=seed,
        out=tmp_path / out,
    )


def test_attention_run_records_jaccard_per_map_and_is_deterministic(tmp_path, small_store):
    method = {
        "head": "attnmel_cnn_lesion",
        "init": "random",
        "image_size": 32,
        "head_args": {"width": 1 / 16},
        "train": VGG_TRAIN,
    }
    a = run(tmp_path, small_store, "attn", method, out="a.json")
    b = run(tmp_path, small_store, "attn", method, out="b.json")
    test = a["metrics"]["test"]
    assert set(test) == {"acc", "auc", "ap", "jaccard_pool3", "jaccard_pool4"}
    assert all(0 <= test[k] <= 1 for k in test)
    assert a["metrics"] == b["metrics"] and a["history"] == b["history"]
    assert a["head_info"] == {"backbone_init": "random"}
    assert a["features_path"] is None and a["cache_key"] is None


def test_cam_and_plain_heads(tmp_path, small_store):
    base = {
        "init": "random",
        "image_size": 32,
        "head_args": {"width": 1 / 16},
        "train": {**VGG_TRAIN, "epochs": 1},
    }
    gap = run(tmp_path, small_store, "gap", {"head": "vgg16_gap", **base}, out="g.json")
    assert set(gap["metrics"]["test"]) == {
        "acc",
        "auc",
        "ap",
        "jaccard_cam",
        "jaccard_cam_binarised_first",
    }
    mel = run(tmp_path, small_store, "mel", {"head": "mel_cnn", **base}, out="m.json")
    assert set(mel["metrics"]["test"]) == {"acc", "auc", "ap"}


def test_sam_attention_run_reads_the_cache(tmp_path, small_store, small_features):
    method = {
        "head": "sam_attnmel_dermo",
        "taps": ["block:2", "block:4", "neck"],
        "train": {**VGG_TRAIN, "epochs": 3},
    }
    rec = run(tmp_path, small_store, "sam", method, features=small_features.path)
    assert set(rec["metrics"]["test"]) == {"acc", "auc", "ap", "jaccard_block2", "jaccard_block4"}
    assert rec["head_info"] == {"intermediate": ["block:2", "block:4"], "guide": "neck"}
    assert rec["cache_key"] == small_features.key
