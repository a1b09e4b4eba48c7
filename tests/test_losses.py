"""Focal loss against torchvision, the Dice regulariser against seed 001's eq. (4) in numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from samcache.heads.attention_gate import roi_reference
from samcache.losses import dice_loss, downsample_roi, focal_loss


@pytest.mark.parametrize("gamma", [0.0, 2.0, 3.5])
@pytest.mark.parametrize("alpha", [None, 0.25])
def test_two_logit_focal_loss_is_torchvisions_sigmoid_focal_loss_of_the_logit_difference(
    gamma, alpha
):
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(64, 2, generator=g)
    labels = torch.randint(0, 2, (64,), generator=g)
    ours = focal_loss(logits, labels, "binary", gamma=gamma, alpha=alpha)
    ref = sigmoid_focal_loss(
        logits[:, 1] - logits[:, 0],
        labels.float(),
        alpha=-1 if alpha is None else alpha,
        gamma=gamma,
        reduction="mean",
    )
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-7)


def test_multilabel_focal_loss_is_torchvisions():
    g = torch.Generator().manual_seed(1)
    logits = 2 * torch.randn(16, 5, generator=g)
    labels = torch.randint(0, 2, (16, 5), generator=g)
    for alpha in (None, 0.25):
        ours = focal_loss(logits, labels, "multilabel", gamma=2.0, alpha=alpha)
        ref = sigmoid_focal_loss(
            logits, labels.float(), alpha=-1 if alpha is None else alpha, reduction="mean"
        )
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-7)


def test_multiclass_focal_loss_with_gamma_zero_is_cross_entropy_and_alpha_is_refused():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(20, 5, generator=g)
    labels = torch.randint(0, 5, (20,), generator=g)
    torch.testing.assert_close(
        focal_loss(logits, labels, "ordinal", gamma=0.0),
        torch.nn.functional.cross_entropy(logits, labels),
    )
    p_t = torch.softmax(logits, 1)[torch.arange(20), labels].numpy().astype(np.float64)
    expected = np.mean(-((1 - p_t) ** 2) * np.log(p_t))
    assert focal_loss(logits, labels, "ordinal").item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="focal_alpha"):
        focal_loss(logits, labels, "ordinal", alpha=0.25)


def numpy_dice_loss(a: np.ndarray, ref: np.ndarray) -> float:
    """Eq. (4) of seed 001 over a whole batch: 1 - 2 Σ a ā / Σ (a + ā)."""
    return 1.0 - 2.0 * float(np.sum(a * ref)) / float(np.sum(a + ref))


def block_mean(x: np.ndarray, size: int) -> np.ndarray:
    """(B, 1, H, W) averaged over (H/size x W/size) blocks."""
    b, c, h, w = x.shape
    return x.reshape(b, c, size, h // size, size, w // size).mean(axis=(3, 5))


def test_dice_regulariser_is_equation_4_over_the_batch():
    rng = np.random.default_rng(0)
    attention = rng.uniform(0, 1, (6, 1, 8, 8))
    mask = (rng.uniform(size=(6, 1, 32, 32)) > 0.7).astype(np.float64)
    mask[2] = 0  # an image without ROI pixels: no division by zero over the batch
    ref = block_mean(mask, 8)
    ours = dice_loss(torch.from_numpy(attention), downsample_roi(torch.from_numpy(mask), (8, 8)))
    assert ours.item() == pytest.approx(numpy_dice_loss(attention, ref), rel=1e-10)
    assert dice_loss(torch.ones(2, 1, 4, 4), torch.ones(2, 1, 4, 4)).item() == pytest.approx(0)


def test_roi_references_lesion_background_and_union_of_attributes():
    rng = np.random.default_rng(3)
    lesion = (rng.uniform(size=(3, 1, 8, 8)) > 0.5).astype(np.float32)
    attrs = (rng.uniform(size=(3, 4, 8, 8)) > 0.8).astype(np.float32)
    batch = {"lesion_mask": torch.from_numpy(lesion), "attributes": torch.from_numpy(attrs)}
    np.testing.assert_array_equal(roi_reference(batch, "lesion").numpy(), lesion)
    np.testing.assert_array_equal(roi_reference(batch, "background").numpy(), 1 - lesion)
    union = np.logical_or.reduce(attrs > 0, axis=1, keepdims=True).astype(np.float32)
    np.testing.assert_array_equal(roi_reference(batch, "dermo").numpy(), union)
    some = np.logical_or(attrs[:, 0] > 0, attrs[:, 3] > 0)[:, None].astype(np.float32)
    np.testing.assert_array_equal(roi_reference(batch, "dermo", (0, 3)).numpy(), some)


# --- segmentation losses (seeds 002 and 004) against numpy forms of their equations ----------


def seg_pair(seed: int = 0, shape=(3, 2, 24, 24)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(*shape, generator=g, dtype=torch.float64)
    target = (torch.rand(*shape, generator=g) > 0.6).double()
    target[0, 0] = 0  # an empty mask
    return logits, target


def np_sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def test_soft_dice_loss_is_aernet_equation_1_per_image_and_channel():
    from samcache.losses import soft_dice_loss

    logits, target = seg_pair()
    p, g = np_sigmoid(logits.numpy()), target.numpy()
    eps = 1e-5  # MONAI's smoothing of numerator and denominator
    num = 2 * (p * g).sum(axis=(2, 3)) + eps
    den = (p**2).sum(axis=(2, 3)) + (g**2).sum(axis=(2, 3)) + eps
    expected = (1 - num / den).mean()
    assert soft_dice_loss(logits, target).item() == pytest.approx(expected, rel=1e-9)


def test_soft_jaccard_loss_is_one_minus_intersection_over_soft_union():
    from samcache.losses import soft_jaccard_loss

    logits, target = seg_pair(1)
    p, g = np_sigmoid(logits.numpy()), target.numpy()
    inter = (p * g).sum(axis=(2, 3))
    union = p.sum(axis=(2, 3)) + g.sum(axis=(2, 3)) - inter
    expected = (1 - (inter + 0.5e-5) / (union + 0.5e-5)).mean()
    assert soft_jaccard_loss(logits, target).item() == pytest.approx(expected, rel=1e-9)


def test_ssim_loss_is_one_minus_scikit_images_gaussian_ssim():
    from skimage.metrics import structural_similarity

    from samcache.losses import ssim_loss

    logits, target = seg_pair(2)
    p, g = np_sigmoid(logits.numpy()), target.numpy()
    ssim = [
        structural_similarity(
            p[b, c],
            g[b, c],
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
        )
        for b in range(p.shape[0])
        for c in range(p.shape[1])
    ]
    assert ssim_loss(logits, target).item() == pytest.approx(1 - np.mean(ssim), abs=1e-6)


def test_pixel_focal_loss_and_the_hybrid_loss_are_their_sums():
    from samcache.losses import (
        hybrid_loss,
        pixel_focal_loss,
        soft_jaccard_loss,
        ssim_loss,
    )

    logits, target = seg_pair(3)
    p, g = np_sigmoid(logits.numpy()), target.numpy()
    p_t = p * g + (1 - p) * (1 - g)
    alpha_t = 0.25 * g + 0.75 * (1 - g)
    focal = (-alpha_t * (1 - p_t) ** 2 * np.log(p_t)).mean()  # Lin et al., eq. (5)
    assert pixel_focal_loss(logits, target).item() == pytest.approx(focal, rel=1e-9)
    total = hybrid_loss(logits, target)
    parts = pixel_focal_loss(logits, target) + ssim_loss(logits, target)
    torch.testing.assert_close(total, parts + soft_jaccard_loss(logits, target))
