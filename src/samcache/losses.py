"""Training losses beyond cross-entropy: focal loss and the Dice regulariser of attention maps.

Focal loss (Lin et al. 2017; seed 001's main loss) down-weights well-classified samples:
``FL = -alpha_t (1 - p_t)^gamma log p_t`` with ``p_t`` the predicted probability of the true
class. Single-label tasks use the softmax over the logits, multi-label tasks a sigmoid per label.

How the softmax form relates to ``torchvision.ops.sigmoid_focal_loss``: with two logits
``(z0, z1)`` the softmax probability of class 1 is ``sigmoid(z1 - z0)``, so the 2-logit focal
loss of a sample equals torchvision's sigmoid focal loss of the single logit ``z1 - z0`` with the
same target, ``gamma`` and ``alpha`` (``alpha`` weights class 1, ``1 - alpha`` class 0; ``None``
here is torchvision's ``alpha = -1``, no weighting). With more classes there is no sigmoid
counterpart and ``alpha`` is refused. Seed 001's authors used gamma = 2 without alpha.

The Dice regulariser (seed 001, eq. 4) compares an attention map ``A`` with a reference ROI map
``Ā``: ``1 - 2 Σ a·ā / Σ (a + ā)``. The sums run over the whole batch treated as one tensor, not
per image, so a batch in which some reference maps are empty never divides by zero.

Segmentation losses of the dense heads (seeds 002 and 004) take logits (B, K, H, W) and binary
targets of the same shape, and come from MONAI and torchvision, whose options name the
equation variant:

* ``soft_dice_loss`` (AER-Net's eq. 1): ``1 - 2 Σ p g / (Σ p² + Σ g²)`` per image and channel
  (MONAI's ``DiceLoss(squared_pred=True)``), averaged over them; MONAI adds 1e-5 to the numerator
  and the denominator, so an empty prediction of an empty mask costs 0, not 0/0;
* ``hybrid_loss`` (Thwin & Park, UNet 3+'s "hybrid loss"): focal loss (``torchvision.ops.
  sigmoid_focal_loss``, Lin et al.'s α = 0.25, γ = 2, mean over pixels) + (1 − SSIM) (MONAI's
  ``SSIMLoss``: Gaussian window 11, σ 1.5, k1 0.01, k2 0.03, data range 1, as
  ``tf.image.ssim`` and scikit-image's Gaussian SSIM) + (1 − soft Jaccard) (MONAI's
  ``DiceLoss(jaccard=True)``: ``1 - Σ p g / (Σ p + Σ g - Σ p g)`` per image and channel), with
  equal weights. The tests check each term against a numpy form of its equation (SSIM against
  scikit-image).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    task_type: str,
    *,
    gamma: float = 2.0,
    alpha: float | None = None,
) -> torch.Tensor:
    """Mean focal loss of a batch: softmax for single-label tasks, sigmoid for multi-label ones."""
    if task_type == "multilabel":
        y = labels.float()
        ce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
        p = torch.sigmoid(logits)
        p_t = p * y + (1 - p) * (1 - y)
        loss = ce * (1 - p_t) ** gamma
        if alpha is not None:
            loss = (alpha * y + (1 - alpha) * (1 - y)) * loss
        return loss.mean()
    y = labels.long()
    log_p_t = F.log_softmax(logits, dim=1).gather(1, y[:, None])[:, 0]
    loss = -((1 - log_p_t.exp()) ** gamma) * log_p_t
    if alpha is not None:
        if logits.shape[1] != 2:
            raise ValueError(
                f"focal loss: 'focal_alpha' weights the positive class of a two-class task; this "
                f"task has {logits.shape[1]} classes. Set head_args.focal_alpha to null."
            )
        loss = torch.where(y == 1, alpha, 1 - alpha) * loss
    return loss.mean()


def dice_loss(attention: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Seed 001's eq. (4) over the whole batch as one tensor: ``1 - 2 Σ a·ā / Σ (a + ā)``."""
    if attention.shape != reference.shape:
        raise ValueError(
            f"dice_loss: attention {tuple(attention.shape)} and reference "
            f"{tuple(reference.shape)} differ in shape"
        )
    return 1 - 2 * (attention * reference).sum() / (attention + reference).sum()


def downsample_roi(roi: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, 1, H, W) reference map averaged over areas down to ``size`` (values stay in [0, 1]).

    Seed 001 downsamples the image-sized reference to the size of each attention map; the
    authors' code averages areas (adaptive average pooling), which keeps the fraction of ROI
    pixels under each attention cell rather than a nearest-neighbour sample of it.
    """
    if tuple(roi.shape[-2:]) == tuple(size):
        return roi
    return F.adaptive_avg_pool2d(roi, size)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """AER-Net's eq. (1) on ``sigmoid(logits)``, per image and channel, then the mean."""
    from monai.losses import DiceLoss

    return DiceLoss(sigmoid=True, squared_pred=True)(logits, target.float())


def soft_jaccard_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1 - Σ p g / (Σ p + Σ g - Σ p g)`` on ``sigmoid(logits)``, per image and channel."""
    from monai.losses import DiceLoss

    return DiceLoss(sigmoid=True, jaccard=True)(logits, target.float())


def ssim_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1 - SSIM(sigmoid(logits), target)``: Gaussian 11 x 11 window, σ 1.5, data range 1."""
    from monai.losses import SSIMLoss

    return SSIMLoss(spatial_dims=2, data_range=1.0)(torch.sigmoid(logits), target.float())


def pixel_focal_loss(
    logits: torch.Tensor, target: torch.Tensor, *, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Sigmoid focal loss of every pixel (torchvision's), the mean over pixels and channels."""
    from torchvision.ops import sigmoid_focal_loss

    return sigmoid_focal_loss(logits, target.float(), alpha=alpha, gamma=gamma, reduction="mean")


def hybrid_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
) -> torch.Tensor:
    """Thwin & Park's loss: focal + (1 - SSIM) + (1 - soft Jaccard), equal weights."""
    return (
        pixel_focal_loss(logits, target, alpha=focal_alpha, gamma=focal_gamma)
        + ssim_loss(logits, target)
        + soft_jaccard_loss(logits, target)
    )
