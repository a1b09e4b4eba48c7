"""The SAMAug-C baseline of seed 000's Tables I and II ("+ SAMAug-C"), as Gu et al. define it in
"Boosting medical image classification with segmentation foundation model" (ISBI 2024).

SAMAug-C makes an augmented variant of every image from SAM's automatic masks: a segmentation
prior map highlights the regions SAM segments and plays down the rest. Its framework then
processes the raw and the augmented image side by side, one classification branch each, and
fuses the branches' predictions with a weighted ensemble ``p = w1 * p_raw + w2 * p_aug``
(``w1, w2 >= 0``, ``w1 + w2 = 1``).

In samcache the SAM part — mask generation and the prior map — is computed once per image by the
``sam_prior`` rule (``samcache.features.sam_prior``); this head only reads the cached prior
(``sam_prior`` input, resized with the image and flipped/cropped with it) and builds the
augmented image on the fly, which is a parameter-free product.

Readings of what the paper leaves open (``head_args``):

* augmented image = raw image x (``floor`` + (1 - ``floor``) x prior), per pixel and channel, in
  [0, 255] pixel space before the ImageNet normalisation: the prior weights the image instead of
  being added to its channels, since SAMAug's channel addition is what SAMAug-C sets out to
  avoid for classification. ``floor`` = 0 (default) keeps only what SAM segments; a positive
  floor dims the rest instead of blanking it. An image for which SAM found no mask stays as it
  is.
* the two branches are two copies of the backbone with their own weights, trained together,
  each with the cross-entropy of its own prediction (the loss is their sum);
* ``weight_raw`` = w1 (default 0.5; w2 = 1 - w1). The ensemble is what is evaluated and what
  picks the best epoch; its probabilities are returned as ``logits`` = log p, so a softmax
  recovers them exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from samcache.heads.base import Head, register_head
from samcache.heads.classifier import BackboneClassifier, staged_backbone
from samcache.inputs import IMAGENET_MEAN, IMAGENET_STD


def samaug_c_image(image: torch.Tensor, prior: torch.Tensor, floor: float = 0.0) -> torch.Tensor:
    """The SAMAug-C variant of ImageNet-normalised ``image`` (B, 3, H, W) under ``prior`` (B, 1, H, W)."""
    mean, std = IMAGENET_MEAN.to(image), IMAGENET_STD.to(image)
    weight = floor + (1.0 - floor) * prior
    no_mask = prior.flatten(1).amax(dim=1) <= 0
    weight = torch.where(no_mask.view(-1, 1, 1, 1), torch.ones_like(weight), weight)
    return ((image * std + mean) * weight - mean) / std


@register_head("samaug_c")
class SamAugC(Head):
    requires = frozenset({"image", "sam_prior"})
    pretrained_backbone = True

    def __init__(
        self,
        raw: BackboneClassifier,
        augmented: BackboneClassifier,
        *,
        weight_raw: float = 0.5,
        floor: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= weight_raw <= 1.0:
            raise ValueError(f"head_args.weight_raw must lie in [0, 1], not {weight_raw}")
        if not 0.0 <= floor <= 1.0:
            raise ValueError(f"head_args.floor must lie in [0, 1], not {floor}")
        self.raw, self.augmented = raw, augmented
        self.info = dict(raw.info)  # both branches start from the same weights
        self.weight_raw, self.floor = weight_raw, floor

    @classmethod
    def from_shapes(
        cls,
        *,
        n_outputs: int,
        input_shapes: Mapping[str, Any],
        backbone: str = "resnet152",
        checkpoint: str | None = None,
        backbone_args: Mapping[str, Any] | None = None,
        dropout: float = 0.0,
        weight_raw: float = 0.5,
        floor: float = 0.0,
    ) -> Head:
        branches = [
            BackboneClassifier(
                staged_backbone(backbone, input_shapes, checkpoint, backbone_args),
                n_outputs,
                dropout=dropout,
            )
            for _ in range(2)
        ]
        return cls(*branches, weight_raw=weight_raw, floor=floor)

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        image = batch["image"]
        augmented = samaug_c_image(image, batch["sam_prior"], self.floor)
        z_raw = self.raw({"image": image})["logits"]
        z_aug = self.augmented({"image": augmented})["logits"]
        w = self.weight_raw
        p = w * torch.softmax(z_raw, dim=1) + (1.0 - w) * torch.softmax(z_aug, dim=1)
        return {"logits": torch.log(p.clamp_min(1e-12)), "logits_raw": z_raw, "logits_aug": z_aug}

    def loss(
        self, outputs: Mapping[str, Any], batch: Mapping[str, Any], task_type: str
    ) -> torch.Tensor:
        if task_type == "multilabel":
            raise ValueError("samaug_c ensembles softmax predictions: single-label tasks only")
        labels = batch["label"].long()
        return nn.functional.cross_entropy(
            outputs["logits_raw"], labels
        ) + nn.functional.cross_entropy(outputs["logits_aug"], labels)
