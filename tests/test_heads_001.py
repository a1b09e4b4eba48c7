"""Seed 001's heads: they learn a tiny batch, and their loss is the paper's equation (5).

(The interface test over every registered head is in test_heads.py.) Inputs are made from the
head's ``requires`` at tiny sizes; the VGG heads are built at a sixteenth of VGG-16's width so
each trains in a fraction of a second.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from samcache.heads import HEADS, build_head
from samcache.heads.attnmel import VGGHead

from conftest import shapes_of

pytestmark = pytest.mark.usefixtures("one_thread")

B, S, G = 4, 32, 4
TAPS = {"block:2": 12, "block:4": 12, "neck": 8}


def example_batch(requires: frozenset[str], seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    make = {
        "pooled": lambda: torch.randn(B, 10, generator=g),
        "taps": lambda: {t: torch.randn(B, c, G, G, generator=g) for t, c in TAPS.items()},
        "image": lambda: torch.randn(B, 3, S, S, generator=g),
        "lesion_mask": lambda: (torch.rand(B, 1, S, S, generator=g) > 0.5).float(),
        "attributes": lambda: (torch.rand(B, 5, S, S, generator=g) > 0.8).float(),
        "superpixels": lambda: torch.randint(0, 16, (B, S, S), generator=g),
    }
    batch = {k: make[k]() for k in sorted(requires)}
    batch["label"] = torch.tensor([0, 1] * (B // 2))
    return batch


def small_args(name: str) -> dict:
    cls = HEADS[name]
    if issubclass(cls, VGGHead):
        return {"width": 1 / 16, **({"dense_width": 16} if name == "vgg16" else {})}
    return {}


SEED001 = sorted(
    n
    for n, c in HEADS.items()
    if issubclass(c, VGGHead) or n.startswith(("sam_attnmel", "sam_mel"))
)


@pytest.mark.parametrize("name", SEED001)
def test_head_fits_a_tiny_batch(name):
    torch.manual_seed(0)
    batch = example_batch(HEADS[name].requires, seed=1)
    head = build_head(name, n_outputs=2, input_shapes=shapes_of(batch), **small_args(name))
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2)
    head.train()
    losses = []
    for _ in range(20):
        loss = head.loss(head(batch), batch, "binary")
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def numpy_dice(a: np.ndarray, ref: np.ndarray) -> float:
    return 1.0 - 2.0 * float(np.sum(a * ref)) / float(np.sum(a + ref))


def block_mean(x: np.ndarray, size: int) -> np.ndarray:
    b, c, h, w = x.shape
    return x.reshape(b, c, size, h // size, size, w // size).mean(axis=(3, 5))


@pytest.mark.parametrize(
    "name, roi",
    [
        ("attnmel_cnn_lesion", "lesion"),
        ("attnmel_cnn_bkg", "background"),
        ("attnmel_cnn_dermo", "dermo"),
        ("sam_attnmel_lesion", "lesion"),
    ],
)
def test_regularised_loss_is_equation_5(name, roi):
    """Focal loss (torchvision) + 0.001 L_D(A3, Ā3) + 0.01 L_D(A4, Ā4), references in numpy."""
    batch = example_batch(HEADS[name].requires, seed=2)
    head = build_head(name, n_outputs=2, input_shapes=shapes_of(batch), **small_args(name))
    head.eval()
    out = head(batch)
    logits = out["logits"].detach()
    focal = sigmoid_focal_loss(
        logits[:, 1] - logits[:, 0], batch["label"].float(), alpha=-1, reduction="mean"
    ).item()
    if roi == "dermo":
        ref = np.max(batch["attributes"].numpy(), axis=1, keepdims=True)
    else:
        ref = batch["lesion_mask"].numpy()
        ref = 1 - ref if roi == "background" else ref
    maps = [a.detach().numpy().astype(np.float64) for a in out["attention"].values()]
    assert len(maps) == 2
    expected = focal + sum(
        w * numpy_dice(a, block_mean(ref, a.shape[-1]))
        for w, a in zip((0.001, 0.01), maps, strict=True)
    )
    assert head.loss(out, batch, "binary").item() == pytest.approx(expected, rel=1e-5)


def test_unknown_head_args_are_named():
    with pytest.raises(ValueError, match=r"\['widht'\].*width"):
        build_head("attnmel_cnn", n_outputs=2, input_shapes={"image": (3, S, S)}, widht=0.5)
