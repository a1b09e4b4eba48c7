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
