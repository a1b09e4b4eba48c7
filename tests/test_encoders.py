"""The encoder registry against segment-anything's official builders, and its cost model."""

from __future__ import annotations

import logging

import pytest
import torch
from segment_anything import sam_model_registry
from torch.utils.flop_counter import FlopCounterMode

from samcache.features.cost import encoder_flops
from samcache.features.encoders import ENCODERS, build_encoder, encoder_spec
from samcache.features.extract import extract_features
from samcache.features.specs import feature_set_from_config, parse_taps
from samcache.features.taps import TapRecorder


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h"])
def test_registry_builds_the_official_architecture(name):
    """Same parameter names and shapes as build_sam's encoder, so official checkpoints load."""
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        official = sam_model_registry[name]()
        ours = build_encoder(name)
    shapes = {k: tuple(v.shape) for k, v in official.image_encoder.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == shapes
    spec = encoder_spec(name)
    assert official.image_encoder.img_size == spec.img_size
    assert official.pixel_mean.flatten().tolist() == pytest.approx(spec.pixel_mean)
    assert official.pixel_std.flatten().tolist() == pytest.approx(spec.pixel_std)


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_flop_model_equals_torch_flop_counter(name):
    spec = encoder_spec(name)
    with torch.device("meta"):
        enc = build_encoder(name)
        x = torch.zeros(1, 3, spec.img_size, spec.img_size)
        with FlopCounterMode(display=False) as counter:
            enc(x)
    assert encoder_flops(spec) == counter.get_total_flops()


def test_flop_model_of_an_early_stopped_forward():
    spec = encoder_spec("vit_tiny")
    enc = build_encoder("vit_tiny")
    recorder = TapRecorder(enc, parse_taps(["patch_embed", "block:2"]))
    with FlopCounterMode(display=False) as counter:
        recorder(torch.zeros(1, 3, 128, 128))
    assert encoder_flops(spec, blocks=2, neck=False) == counter.get_total_flops()


def test_official_checkpoint_format_loads_and_foreign_files_are_refused(tmp_path):
    sam = sam_model_registry["vit_b"]()  # random weights, the official checkpoint's layout
    sam_state = sam.state_dict()
    # A full SAM checkpoint: the encoder's part is taken, prompt encoder and decoder dropped.
    full = tmp_path / "full.pth"
    torch.save(sam_state, full)
    enc = build_encoder("vit_b", full)
    for k, v in sam.image_encoder.state_dict().items():
        assert torch.equal(enc.state_dict()[k], v), k
    assert not any(p.requires_grad for p in enc.parameters())
    with pytest.raises(ValueError, match="vit_l"):
        build_encoder("vit_l", full)


def test_vit_h_on_a_cpu_warns_with_a_time_estimate(tmp_path, small_store, caplog, monkeypatch):
    class Stop(Exception):
        pass

    def no_build(*args, **kwargs):
        raise Stop

    monkeypatch.setattr("samcache.features.extract.build_encoder", no_build)
    fset = feature_set_from_config({"encoder": "vit_h", "weights": "random", "taps": ["neck"]}, "x")
    with caplog.at_level(logging.WARNING), pytest.raises(Stop):
        extract_features(small_store.path, tmp_path / "h.zarr", fset, device="cpu", progress=False)
    msg = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "vit_h on a CPU: 5.96 TFLOP per image" in msg
    assert "s per image" in msg and "for 60 images" in msg
