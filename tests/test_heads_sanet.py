"""Seed 003's heads: the shuffle module in training, the superpixel probe, the refusals, and
DANet's attention modules against their equations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samcache.heads import build_head
from samcache.heads.sanet_baselines import ChannelAttention, PositionAttention

from conftest import shapes_of

pytestmark = pytest.mark.usefixtures("one_thread")

B, SIDE, K = 3, 28, 5


def batch(gen: torch.Generator, taps: dict | None = None) -> dict:
    out = {
        "image": torch.randn(B, 3, SIDE, SIDE, generator=gen),
        "superpixels": torch.randint(0, 12, (B, SIDE, SIDE), generator=gen),
        "target": (torch.rand(B, K, SIDE, SIDE, generator=gen) > 0.7).float(),
        "label": torch.zeros(B, K),
    }
    if taps is not None:
        out["taps"] = {t: torch.randn(B, *s, generator=gen) for t, s in taps.items()}
        del out["image"]
    return out


def cells(x: torch.Tensor, n: int) -> list[bytes]:
    """The n x n cells of one (C, S, S) map (S a multiple of n here), as sorted bytes."""
    c, s = x.shape[0], x.shape[-1] // n
    blocks = x.reshape(c, n, s, n, s).permute(1, 3, 0, 2, 4).reshape(n * n, -1)
    return sorted(b.numpy().tobytes() for b in blocks)


def test_shuffle_doubles_training_batches_with_shuffled_copies_and_never_evaluation():
    gen = torch.Generator().manual_seed(0)
    b = batch(gen)
    head = build_head(
        "sanet",
        n_outputs=K,
        input_shapes=shapes_of(b),
        backbone="test_resnet",
        width=0.125,
        shuffle=True,
    )
    torch.manual_seed(0)
    head.train()
    out = head(b)
    assert out["logits"].shape == (2 * B, K, SIDE, SIDE)
    target = out["target"]
    torch.testing.assert_close(target[:B], b["target"])  # the originals first, 1:1
    shuffled = target[B:]
    assert not torch.equal(shuffled, b["target"])
    for i in range(B):  # 28 px in 7 x 7 cells of 4 px: the shuffled copy holds the same cells
        assert cells(shuffled[i], 7) == cells(b["target"][i], 7)
    loss = head.loss(out, b, "segmentation")
    assert torch.isfinite(loss)
    head.eval()
    with torch.no_grad():
        out = head(b)
    assert out["logits"].shape == (B, K, SIDE, SIDE) and "target" not in out


def test_the_token_grid_shuffle_needs_cells_that_divide_every_level():
    shapes = {"a": (8, 8, 8), "b": (8, 4, 4), "c": (8, 2, 2)}
    gen = torch.Generator().manual_seed(1)
    b = batch(gen, taps=shapes)
    b["superpixels"] = b["superpixels"][..., :16, :16]
    b["target"] = b["target"][..., :16, :16]
    args = {"decoder_channels": [16, 8], "width": 1.0, "shuffle": True}
    with pytest.raises(ValueError, match=r"shuffle_grid: 4 x 4 cells .* choose one of \[2\]"):
        build_head("sam_sanet", n_outputs=K, input_shapes=shapes_of(b), shuffle_grid=4, **args)
    head = build_head("sam_sanet", n_outputs=K, input_shapes=shapes_of(b), shuffle_grid=2, **args)
    head.train()
    out = head(b)
    assert out["logits"].shape == (2 * B, K, 16, 16)
    for t, v in b["taps"].items():  # every level holds its own cells, moved
        assert v.shape[-1] % 2 == 0, t


def test_the_superpixel_probe_predicts_one_value_per_superpixel():
    gen = torch.Generator().manual_seed(2)
    b = batch(gen, taps={"neck": (6, 7, 7), "block:1": (4, 14, 14)})
    head = build_head("sam_superpixel_probe", n_outputs=K, input_shapes=shapes_of(b), hidden=8)
    head.eval()
    with torch.no_grad():
        logits = head(b)["logits"].numpy()
    labels = b["superpixels"].numpy()
    for i in range(B):
        for s in np.unique(labels[i]):
            values = logits[i][:, labels[i] == s]  # (K, pixels of superpixel s)
            np.testing.assert_allclose(values, values[:, :1].repeat(values.shape[1], 1), rtol=1e-6)


@pytest.mark.parametrize(
    ("name", "args", "key"),
    [
        ("sanet_resunet", {"loss": "ce_jal", "gbl_gamma": 0.0}, "gbl_gamma"),
        ("sanet_unet", {"loss": "ce_jal", "gbl_theta": 0.1}, "gbl_theta"),
        ("sanet_resunet", {"shuffle_grid": 7}, "shuffle_grid"),
        ("sanet_resunet", {"superpixel_mode": "sum"}, "superpixel_mode"),
        ("sanet", {"superpixel_mode": "product"}, "superpixel_mode"),
        ("sanet_danet", {"loss": "dice"}, "loss"),
        ("sanet_deeplab", {"jaccard_form": "weird"}, "jaccard_form"),
        ("sam_superpixel_probe", {"shuffle": True}, "shuffle"),
        ("sanet_unet", {"levels": ["neck"]}, "levels"),
    ],
)
def test_sanet_heads_refuse_settings_they_would_not_use(name, args, key):
    gen = torch.Generator().manual_seed(3)
    b = batch(gen, taps={"neck": (6, 7, 7)} if name.startswith("sam_") else None)
    if name in ("sanet_resunet", "sanet", "sanet_deeplab", "sanet_danet"):
        args = {"backbone": "test_resnet", **args}
    with pytest.raises(ValueError, match=key):
        build_head(name, n_outputs=K, input_shapes=shapes_of(b), **args)


def test_danet_position_and_channel_attention_follow_the_equations():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 16, 3, 5, generator=gen)
    pam, cam = PositionAttention(16), ChannelAttention()
    with torch.no_grad():
        for p in [*pam.parameters(), *cam.parameters()]:
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        xs = x.numpy().astype(np.float64).reshape(2, 16, -1)  # (B, C, N)

        def conv(m, v):  # a 1x1 convolution on (C, N)
            w = m.weight.numpy().astype(np.float64)[:, :, 0, 0]
            return w @ v + m.bias.numpy().astype(np.float64)[:, None]

        def softmax(e):
            e = e - e.max(-1, keepdims=True)
            return np.exp(e) / np.exp(e).sum(-1, keepdims=True)

        g = float(pam.gamma)
        for i in range(2):
            q, k, v = conv(pam.query, xs[i]), conv(pam.key, xs[i]), conv(pam.value, xs[i])
            s = softmax(q.T @ k)  # s[j, i']: position j attends to i'
            want = g * (v @ s.T) + xs[i]
            np.testing.assert_allclose(
                pam(x)[i].reshape(16, -1).numpy(), want, rtol=1e-4, atol=1e-5
            )
            e = xs[i] @ xs[i].T
            a = softmax(e.max(-1, keepdims=True) - e)
            want = float(cam.gamma) * (a @ xs[i]) + xs[i]
            np.testing.assert_allclose(
                cam(x)[i].reshape(16, -1).numpy(), want, rtol=1e-4, atol=1e-5
            )
