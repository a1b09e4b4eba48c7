"""The fused SDPA attention path against segment-anything's own Attention and Block."""

from __future__ import annotations

import contextlib

import pytest
import torch
from segment_anything.modeling.image_encoder import Attention, Block

from samcache.features.attention import (
    SdpaAttention,
    attention_error,
    sdpa_is_exact_enough,
    set_attention,
    use_sdpa,
)
from samcache.features.encoders import build_encoder
from samcache.features.pipeline import choose_attention
from samcache.features.specs import parse_taps
from samcache.features.taps import TapRecorder


def _randomise_rel_pos(module: torch.nn.Module, seed: int = 0) -> None:
    """SAM initialises the relative-position tables to zero; trained ones are not."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        if "rel_pos" in name:
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


@pytest.mark.parametrize("size", [(8, 8), (14, 14), (6, 10)])
@pytest.mark.parametrize("use_rel_pos", [True, False])
def test_sdpa_equals_segment_anything_attention(size, use_rel_pos):
    torch.manual_seed(1)
    attn = Attention(48, num_heads=4, use_rel_pos=use_rel_pos, input_size=size).eval()
    _randomise_rel_pos(attn)
    x = torch.randn(3, *size, 48)
    with torch.no_grad():
        expected = attn(x)
        attn.__class__ = SdpaAttention
        got = attn(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_sdpa_block_with_padded_windows_equals_the_original_block():
    """A 20x20 grid in 14x14 windows is padded to 28x28, as ViT-B/L/H's 64 grid is to 70."""
    torch.manual_seed(2)
    block = Block(32, num_heads=2, use_rel_pos=True, window_size=14, input_size=(14, 14)).eval()
    _randomise_rel_pos(block)
    x = torch.randn(2, 20, 20, 32)
    with torch.no_grad():
        expected = block(x)
        with use_sdpa(block):
            got = block(x)
        again = block(x)  # switched back on leaving the context
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, expected, rtol=0, atol=0)


def test_sdpa_encoder_equals_the_original_encoder_in_float32():
    enc = build_encoder("vit_tiny", seed=0)
    _randomise_rel_pos(enc)
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        expected = enc(x)
        set_attention(enc, "sdpa")
        got = enc(x)
        set_attention(enc, "original")
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_bfloat16_sdpa_is_as_close_to_float32_as_the_original_path():
    enc = build_encoder("vit_tiny", seed=0)
    _randomise_rel_pos(enc)
    x = torch.randn(1, 3, 128, 128)
    original, fused = attention_error(
        enc, enc, x, lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    )
    assert 0 < original < 0.1  # bfloat16 really is in use
    assert fused <= 1.5 * original + 1e-4
    assert sdpa_is_exact_enough(original, fused)


def test_auto_falls_back_to_the_original_path_where_sdpa_is_not_exact(monkeypatch):
    enc = build_encoder("vit_tiny", seed=0)
    _randomise_rel_pos(enc)
    recorder = TapRecorder(enc, parse_taps(["neck"]))
    x = torch.randn(1, 3, 128, 128)
    assert choose_attention(recorder, x, contextlib.nullcontext) == "sdpa"
    assert isinstance(enc.blocks[0].attn, SdpaAttention)

    exact = SdpaAttention.forward

    def off_by_a_little(self, inp):
        return exact(self, inp) * 1.01

    monkeypatch.setattr(SdpaAttention, "forward", off_by_a_little)
    assert choose_attention(recorder, x, contextlib.nullcontext) == "original"
    assert type(enc.blocks[0].attn) is Attention
