"""The plain backbone baseline of seed 000 (``backbone``): a timm model trained on the image alone.

Tables I and II's "ResNet152", "SENet154" and "Swin Transformer v2" rows. The last stage's
features are averaged over space and one linear layer gives the logits (timm's own head for
these models, rebuilt here so that the SAM variants can widen it). Options (``head_args``):
``backbone`` (a timm name), ``checkpoint`` (a local file; random initialisation otherwise),
``backbone_args`` (keyword arguments of ``timm.create_model``, e.g. ``img_size`` for Swin V2),
``dropout`` before the linear layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from samcache.backbone_init import init_info
from samcache.heads.backbones import StagedBackbone, build_backbone
from samcache.heads.base import Head, register_head


def staged_backbone(
    name: str,
    input_shapes: Mapping[str, Any],
    checkpoint: str | None = None,
    backbone_args: Mapping[str, Any] | None = None,
) -> StagedBackbone:
    """The named timm backbone, probed at the run's image size."""
    image_size = int(input_shapes["image"][-1])
    model = build_backbone(name, checkpoint=checkpoint, **dict(backbone_args or {}))
    staged = StagedBackbone(model, image_size)
    staged.init_info = init_info(checkpoint)  # checked against the published hash, if any
    return staged


@register_head("backbone")
class BackboneClassifier(Head):
    requires = frozenset({"image"})
    pretrained_backbone = True

    def __init__(
        self,
        backbone: StagedBackbone,
        n_outputs: int,
        *,
        dropout: float = 0.0,
        extra_features: int = 0,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.info = dict(getattr(backbone, "init_info", {}))  # into the run record
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(backbone.num_features + extra_features, n_outputs)

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
    ) -> Head:
        net = staged_backbone(backbone, input_shapes, checkpoint, backbone_args)
        return cls(net, n_outputs, dropout=dropout)

    def classify(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) features -> logits: global average pooling and the linear layer."""
        return self.fc(self.dropout(feats.mean(dim=(2, 3))))

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return {"logits": self.classify(self.backbone(batch["image"]))}
