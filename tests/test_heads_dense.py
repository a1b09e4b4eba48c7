"""The dense heads of seeds 002 and 004: their blocks against formulas, their layouts against the
papers' (and the AER-Net authors' code), their options refused where unused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from samcache.heads import build_head
from samcache.heads.dense import image_input
from samcache.heads.dense_blocks import (
    AttentionGate,
    ConvBlock,
    Decoder,
    SpatialAttention,
    fit_grid,
)
from samcache.inputs import IMAGENET_MEAN, IMAGENET_STD

pytestmark = pytest.mark.usefixtures("one_thread")

#: ViT-H's dense taps at 256 px, with few channels: stride 4 natively, the rest pooled.
VIT_H_PYRAMID = {
    "block:1": (16, 64, 64),
    "block:16@32": (16, 32, 32),
    "block:32@16": (16, 16, 16),
    "neck@8": (8, 8, 8),
    "neck@4": (8, 4, 4),
}


def randomise(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def test_residual_block_adds_a_1x1_bn_shortcut_to_two_conv_bn_relu():
    torch.manual_seed(0)
    block = ConvBlock(3, 5, residual=True).eval()
    randomise(block)
    x = torch.randn(2, 3, 8, 8)
    c1, b1, _, c2, b2, _ = block.body
    sc, sb = block.shortcut

    def bn(y, m):
        return (y - m.running_mean.view(1, -1, 1, 1)) / torch.sqrt(
            m.running_var.view(1, -1, 1, 1) + m.eps
        ) * m.weight.view(1, -1, 1, 1) + m.bias.view(1, -1, 1, 1)

    y = F.relu(bn(F.conv2d(x, c1.weight, c1.bias, padding=1), b1))
    y = F.relu(bn(F.conv2d(y, c2.weight, c2.bias, padding=1), b2))
    expected = y + bn(F.conv2d(x, sc.weight, sc.bias), sb)
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)
    assert ConvBlock(3, 5).shortcut is None


def test_spatial_attention_is_cbams_spatial_branch():
    sa = SpatialAttention(7).eval()
    randomise(sa)
    x = torch.randn(2, 6, 9, 9)
    conv, bn = sa.attn.conv.conv, sa.attn.conv.bn
    pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
    z = F.conv2d(pooled, conv.weight, padding=3)
    z = (z - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(
        bn.running_var.view(1, -1, 1, 1) + bn.eps
    )
    z = z * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(sa(x), x * torch.sigmoid(z), atol=1e-5, rtol=1e-5)
    assert conv.kernel_size == (7, 7)


@pytest.mark.parametrize("psi", ["sigmoid", "relu"])
def test_attention_gate_follows_oktay_with_the_chosen_psi(psi):
    gate = AttentionGate(4, 6, 3, psi=psi).eval()
    randomise(gate, 1)
    x, g = torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4)
    out, a = gate(x, g)
    theta = gate.theta(x)  # 2x2, stride 2: onto g's grid
    assert theta.shape[-2:] == (4, 4)
    q = gate.psi(F.relu(theta + gate.phi(gate.gating(g))))
    act = torch.sigmoid(q) if psi == "sigmoid" else F.relu(q)
    expected_a = F.interpolate(act, size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(a, expected_a)
    torch.testing.assert_close(out, gate.out(expected_a * x))
    with pytest.raises(ValueError, match="psi"):
        AttentionGate(4, 6, 3, psi="tanh")


def test_fit_grid_pools_exactly_as_the_cache_stores_a_pooled_tap():
    x = torch.randn(2, 5, 64, 64)
    torch.testing.assert_close(fit_grid(x, (16, 16)), x.reshape(2, 5, 16, 4, 16, 4).mean((3, 5)))
    torch.testing.assert_close(
        fit_grid(x, (16, 16)), F.adaptive_avg_pool2d(x, 16)
    )  # the feature cache's pooling of '<tap>@16'
    assert fit_grid(x, (64, 64)) is x
    assert fit_grid(x, (96, 96)).shape[-2:] == (96, 96)


def test_cielab_input_is_opencvs_8_bit_lab_scaled_to_0_1():
    from skimage.color import rgb2lab

    rgb = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    normed = (rgb - IMAGENET_MEAN.double()) / IMAGENET_STD.double()
    ours = image_input(normed, "lab").numpy()
    lab = rgb2lab(rgb.numpy().transpose(0, 2, 3, 1), channel_axis=-1).transpose(0, 3, 1, 2)
    expected = (lab + np.array([0, 128, 128]).reshape(1, 3, 1, 1)) / np.array(
        [100, 255, 255]
    ).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(ours, expected, atol=2e-4)
    assert ours.min() >= 0 and ours.max() <= 1
    torch.testing.assert_close(image_input(normed, "rgb"), rgb)


def test_decoder_reaches_the_output_with_skip_less_blocks():
    dec = Decoder(8, [6, 4], [5, 3], 2, (32, 32), n_free=2)
    out = dec(torch.randn(1, 8, 2, 2), [torch.randn(1, 6, 4, 4), torch.randn(1, 4, 8, 8)])
    assert out.shape == (1, 2, 32, 32)
    assert len(dec.free) == 2
    with pytest.raises(ValueError, match="decoder_channels"):
        Decoder(8, [6, 4], [5], 2, (32, 32), n_free=0)


def shapes(**taps):
    return {"target": (1, 256, 256), "taps": taps}


def test_sam_aernet_reads_the_vit_h_pyramid_and_decodes_as_aernet_at_256_px():
    """Four skips at strides 4-32 and the stride-64 bridge from the cache, widths 256..32, two
    skip-less blocks to 256 px: AER-Net's decoder, only SAM's pyramid instead of EfficientNet."""
    head = build_head("sam_aernet", n_outputs=1, input_shapes=shapes(**VIT_H_PYRAMID))
    assert head.pyramid.levels == list(VIT_H_PYRAMID)
    assert [s.block.body[0].out_channels for s in head.decoder.steps] == [256, 128, 64, 32]
    assert head.bridge[1].block.body[0].out_channels == 512
    assert len(head.decoder.free) == 2 and len(head.decoder.gates) == 4
    batch = {"taps": {t: torch.randn(1, *s) for t, s in VIT_H_PYRAMID.items()}}
    with torch.no_grad():
        assert head.eval()(batch)["logits"].shape == (1, 1, 256, 256)


def test_aer_unet_without_attention_or_residual_is_the_plain_u_net_row():
    head = build_head(
        "aer_unet",
        n_outputs=1,
        input_shapes={"image": (3, 64, 64), "target": (1, 64, 64)},
        attention=False,
        residual=False,
        width=1 / 8,
    )
    assert head.decoder.gates is None
    assert all(s.block.shortcut is None for s in head.decoder.steps)
    full = build_head(
        "aer_unet", n_outputs=1, input_shapes={"image": (3, 64, 64)}, width=1 / 8, psi="relu"
    )
    assert len(full.decoder.gates) == 4 and full.decoder.gates[0].activation is F.relu
    assert all(s.block.shortcut is not None for s in full.decoder.steps)


def test_deeplabv3_has_aspp_at_rates_6_12_18_and_attention_before_the_classifier():
    head = build_head(
        "thwin_deeplabv3",
        n_outputs=1,
        input_shapes={"image": (3, 64, 64), "target": (1, 64, 64)},
        backbone="test_resnet",
        spatial_attention=True,
    )
    rates = [m.dilation[0] for m in head.head.aspp.modules() if isinstance(m, torch.nn.Conv2d)]
    assert {6, 12, 18} <= set(rates)
    assert head.head.attention is not None
    feats = head.backbone(torch.zeros(1, 3, 64, 64))
    assert feats.shape[-1] == 4  # output stride 16


@pytest.mark.parametrize(
    "name, args, key",
    [
        ("aer_unet", {"attention": False, "psi": "relu"}, "psi"),
        ("sam_aernet", {"attention": False, "psi": "sigmoid"}, "psi"),
        ("thwin_unet", {"sa_kernel": 3}, "sa_kernel"),
        ("sam_thwin_aspp", {"sa_kernel": 5}, "sa_kernel"),
        ("sam_aernet", {"input_space": "lab"}, "input_space"),
        ("sam_thwin_aspp", {"tap": "block:9"}, "block:9"),
        ("aer_unet", {"input_space": "hsv"}, "input_space"),
    ],
)
def test_dense_heads_refuse_settings_they_would_not_use(name, args, key):
    input_shapes = {
        "image": (3, 32, 32),
        "target": (1, 32, 32),
        "taps": {t: (8, 8, 8) for t in ("block:1", "block:2", "block:4", "neck", "neck@1")},
    }
    with pytest.raises(ValueError, match=key):
        build_head(name, n_outputs=1, input_shapes=input_shapes, **args)


def test_a_pretrained_dense_head_without_checkpoint_is_refused_before_it_runs():
    from samcache.backbone_init import InitError, check_method

    with pytest.raises(InitError, match="checkpoint"):
        check_method("aernet", {"head": "aernet", "head_args": {"backbone": "tf_efficientnet_b1"}})
    check_method("aer_unet", {"head": "aer_unet"})  # trained from scratch: nothing to load
