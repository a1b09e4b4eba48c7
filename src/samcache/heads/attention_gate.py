"""Seed 001's attention module and its training objective (focal loss + ROI Dice regulariser).

``AttentionGate`` is eqs. (1)-(3) of Yan et al.: an intermediate map F and a global guide G give
``R = W * ReLU(W_f * F + up(W_g * G))``, ``A = sigmoid(R)`` and ``f_i' = a_i f_i``. Readings of
details the paper leaves open, following the authors' published code:

* ``W_f`` and ``W_g`` are 1x1 convolutions without bias (256 filters), ``W`` a 1x1 convolution
  with bias to one channel; ``up`` is bilinear interpolation with ``align_corners=False``.
* The gate's convolutions start from He initialisation (the paper's "He's initialization").

``RoiRegularised`` holds the loss every seed-001 head trains with: focal loss (gamma 2) plus,
when the head has an ROI, eq. (5)'s ``λ_k L_D(A_k, Ā_k)`` for each attention map ``A_k`` in the
order the head lists them (pool-3 with λ1 = 0.001, pool-4 with λ2 = 0.01). The reference Ā is
the ROI map of the batch (after the same flips and crops as the image), area-averaged down to
each attention map's size. ROIs:

* ``lesion``: the lesion mask;
* ``dermo``: the union (pixel-wise maximum) of the store's attribute masks, or of the channels
  listed in ``head_args.roi_attributes`` (indices into the store's ``attribute_names``); seed
  001 uses the union of ISIC 2017's four dermoscopic features;
* ``background``: one minus the lesion mask (seed 001's deliberately wrong ROI).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from samcache.heads.base import Head
from samcache.losses import dice_loss, downsample_roi, focal_loss

ROIS = ("lesion", "dermo", "background")
ROI_INPUTS = {"lesion": "lesion_mask", "dermo": "attributes", "background": "lesion_mask"}


class AttentionGate(nn.Module):
    """``(F, G) -> (A * F, A)`` with ``A = sigmoid(W * ReLU(W_f * F + up(W_g * G)))``."""

    def __init__(self, in_channels: int, guide_channels: int, attn_channels: int = 256) -> None:
        super().__init__()
        self.w_f = nn.Conv2d(in_channels, attn_channels, 1, bias=False)
        self.w_g = nn.Conv2d(guide_channels, attn_channels, 1, bias=False)
        self.w = nn.Conv2d(attn_channels, 1, 1, bias=True)
        for conv in (self.w_f, self.w_g, self.w):
            nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.w.bias)

    def forward(self, f: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        guide = self.w_g(g)
        if guide.shape[-2:] != f.shape[-2:]:
            guide = F.interpolate(guide, size=f.shape[-2:], mode="bilinear", align_corners=False)
        a = torch.sigmoid(self.w(F.relu(self.w_f(f) + guide)))
        return a * f, a


def gap(x: torch.Tensor) -> torch.Tensor:
    """Global average pooling of a (B, C, h, w) map to (B, C)."""
    return x.mean(dim=(2, 3))


def roi_reference(
    batch: Mapping[str, Any],
    roi: str,
    attribute_index: Sequence[int] | None = None,
) -> torch.Tensor:
    """The (B, 1, H, W) reference map of ``roi`` for a batch."""
    if roi == "lesion":
        return batch["lesion_mask"][:, :1].float()
    if roi == "background":
        return 1 - batch["lesion_mask"][:, :1].float()
    if roi == "dermo":
        attrs = batch["attributes"].float()
        if attribute_index is not None:
            attrs = attrs[:, list(attribute_index)]
        return attrs.amax(dim=1, keepdim=True)
    raise ValueError(f"unknown ROI '{roi}'; choose one of {ROIS}")


class RoiRegularised(Head):
    """Focal loss, plus eq. (5)'s Dice terms when the head has an ROI (``roi`` class variable).

    Subclasses set ``focal_gamma``, ``focal_alpha``, ``roi_weights`` (one per attention map, in
    ``outputs["attention"]`` order) and ``roi_attribute_index`` in their constructor, and may
    override ``roi_frame`` to bring an image-frame reference into their maps' frame.
    """

    roi: ClassVar[str | None] = None
    focal_gamma: float = 2.0
    focal_alpha: float | None = None
    roi_weights: tuple[float, ...] = ()
    roi_attribute_index: tuple[int, ...] | None = None

    def roi_frame(self, reference: torch.Tensor) -> torch.Tensor:
        return reference

    def loss(
        self, outputs: Mapping[str, Any], batch: Mapping[str, Any], task_type: str
    ) -> torch.Tensor:
        loss = focal_loss(
            outputs["logits"],
            batch["label"],
            task_type,
            gamma=self.focal_gamma,
            alpha=self.focal_alpha,
        )
        if self.roi is None:
            return loss
        reference = self.roi_frame(roi_reference(batch, self.roi, self.roi_attribute_index))
        maps = list(outputs["attention"].values())
        for a, weight in zip(maps, self.roi_weights, strict=True):
            loss = loss + weight * dice_loss(a, downsample_roi(reference, a.shape[-2:]))
        return loss
