"""Backbone initialisation: a pretrained method needs its checkpoint, random is said explicitly."""

from __future__ import annotations

import pytest
import torch

from samcache.backbone_init import (
    BACKBONE_HEADS,
    InitError,
    check_method,
    check_methods,
    init_info,
    method_init,
)
from samcache.heads import HEADS, build_head


def test_the_torch_free_list_of_backbone_heads_matches_the_registry():
    assert {n for n, cls in HEADS.items() if cls.pretrained_backbone} == BACKBONE_HEADS


def test_a_pretrained_method_without_its_file_is_refused_naming_file_place_and_source(tmp_path):
    method = {
        "head": "backbone",
        "head_args": {"checkpoint": "ckpt/resnet152.a1h_in1k.safetensors"},
    }
    with pytest.raises(InitError) as err:
        check_methods([("resnet152", method)], root=tmp_path)
    msg = str(err.value)
    assert "resnet152.a1h_in1k.safetensors" in msg
    assert str(tmp_path / "ckpt/resnet152.a1h_in1k.safetensors") in msg
    assert "huggingface.co/timm/resnet152.a1h_in1k" in msg and "init: random" in msg
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt/resnet152.a1h_in1k.safetensors").write_bytes(b"")
    check_methods([("resnet152", method)], root=tmp_path)  # placed: accepted


@pytest.mark.parametrize(
    "method, words",
    [
        ({"head": "vgg16"}, ["names no head_args.checkpoint", "init: random"]),
        ({"head": "backbone", "head_args": {"checkpoint": None}}, ["names no"]),
        ({"head": "vgg16", "init": "random", "head_args": {"checkpoint": "x.pth"}}, ["keep one"]),
        ({"head": "linear_probe", "init": "random"}, ["no trainable backbone"]),
    ],
)
def test_contradictions_are_refused(method, words):
    with pytest.raises(InitError) as err:
        check_method("m", method)
    assert all(w in str(err.value) for w in words)


def test_explicit_random_and_backbone_free_heads_start():
    assert method_init("m", {"head": "backbone", "init": "random"}) == "random"
    assert method_init("m", {"head": "sam_attnmel"}) == "none"
    check_method("m", {"head": "samaug_c", "init": "random"})


def test_a_run_refuses_to_start_a_pretrained_method_without_a_checkpoint(tmp_path):
    from samcache.train import train_run

    with pytest.raises(InitError, match="init: random"):
        train_run(
            dataset=tmp_path / "never-read.zarr",
            features=None,
            task="melanoma",
            method_name="vgg",
            method={"head": "vgg16", "head_args": {"width": 0.0625}},
            fraction=100,
            seed=0,
            out=tmp_path / "r.json",
        )


def test_a_torchvision_file_whose_hash_differs_from_its_name_is_refused(tmp_path):
    """torchvision names its files by the first 8 hex digits of their SHA-256."""
    fake = tmp_path / "vgg16_bn-6c64b313.pth"
    torch.save({}, fake)
    with pytest.raises(InitError, match="6c64b313"):
        init_info(fake)
    with pytest.raises(InitError, match="6c64b313"):
        build_head("vgg16_gap", n_outputs=2, input_shapes={"image": (3, 32, 32)}, checkpoint=fake)


def test_records_say_how_the_backbone_started(tmp_path):
    head = build_head(
        "backbone", n_outputs=2, input_shapes={"image": (3, 32, 32)}, backbone="test_resnet"
    )
    assert head.info == {"backbone_init": "random"}
    path = tmp_path / "test_resnet.pth"
    torch.save(head.backbone.model.state_dict(), path)
    loaded = build_head(
        "samaug_c",
        n_outputs=2,
        input_shapes={"image": (3, 32, 32), "sam_prior": (1, 32, 32)},
        backbone="test_resnet",
        checkpoint=str(path),
    )
    assert loaded.info["backbone_init"] == "checkpoint test_resnet.pth"
    assert len(loaded.info["checkpoint_sha256"]) == 64
