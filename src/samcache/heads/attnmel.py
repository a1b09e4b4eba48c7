"""Seed 001 (Yan, Kawahara, Hamarneh, IPMI 2019): VGG-16 classifiers with and without attention.

Every head here reads the image (``requires = {"image"}``, resized to the method's
``image_size``), runs a trainable VGG-16 backbone (``samcache.heads.vgg``) and trains with focal
loss (gamma 2). The paper's variants, one registered name each:

=====================  ===================================================================
``vgg16``              VGG-16 with its dense layers, the last one replaced by ``n_outputs``
``vgg16_gap``          dense layers replaced by global average pooling of pool-5 + a linear
                       layer; also returns class activation maps (``outputs["cam"]``)
``mel_cnn``            GAP of pool-3, pool-4 and pool-5, concatenated, + a linear layer
``attnmel_cnn``        attention gates on pool-3 and pool-4 guided by pool-5 (Fig. 1)
``attnmel_cnn_lesion``   ... regularised towards the lesion mask (eq. 5)
``attnmel_cnn_dermo``    ... towards the union of the dermoscopic-feature masks
``attnmel_cnn_bkg``      ... towards the background, a deliberately wrong ROI
=====================  ===================================================================

``head_args``: ``width`` (1.0 = VGG-16; the demo uses a fraction), ``batch_norm`` (true: the
authors' code fine-tunes torchvision's ``vgg16_bn``), ``checkpoint`` (a local torchvision file,
see ``samcache.heads.vgg``), ``focal_gamma``, ``focal_alpha``; the attention heads also take
``attn_channels`` (256), ``roi_weights`` ([λ1, λ2] = [0.001, 0.01]) and ``roi_attributes``;
``vgg16`` takes ``dense_width`` (4096 × width by default).

Attention maps are returned as ``outputs["attention"] = {"pool3": (B,1,h3,w3), "pool4": ...}``;
a run evaluates their Jaccard index against the lesion masks of the test split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from samcache.heads.attention_gate import AttentionGate, RoiRegularised, gap
from samcache.heads.base import check_head_args, register_head
from samcache.heads.vgg import VGGBackbone, load_checkpoint_into

SEED001_ROI_WEIGHTS = (0.001, 0.01)


def linear_classifier(in_features: int, n_outputs: int) -> nn.Linear:
    fc = nn.Linear(in_features, n_outputs)
    nn.init.normal_(fc.weight, 0, 0.01)
    nn.init.zeros_(fc.bias)
    return fc


class VGGHead(RoiRegularised):
    """Shared construction: a VGG-16 backbone, the loss settings and checkpoint loading."""

    requires: ClassVar[frozenset[str]] = frozenset({"image"})
    pretrained_backbone = True

    def __init__(
        self,
        n_outputs: int,
        *,
        width: float = 1.0,
        batch_norm: bool = True,
        checkpoint: str | None = None,
        focal_gamma: float = 2.0,
        focal_alpha: float | None = None,
    ) -> None:
        super().__init__()
        self.backbone = VGGBackbone(width=width, batch_norm=batch_norm)
        self.width = width
        self.focal_gamma, self.focal_alpha = float(focal_gamma), focal_alpha
        self._checkpoint = checkpoint

    def _load_checkpoint(self) -> None:
        """Called by subclasses once all layers exist; ``info`` goes into the run record."""
        self.info = load_checkpoint_into(
            self.checkpoint_modules(), self._checkpoint, key="head_args.checkpoint"
        )

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        return {"features": self.backbone.features}

    @classmethod
    def from_shapes(
        cls, *, n_outputs: int, input_shapes: Mapping[str, Any], **kwargs: Any
    ) -> VGGHead:
        check_head_args(cls, kwargs)
        shape = input_shapes.get("image")
        if shape is None or len(shape) != 3 or shape[0] != 3:
            raise ValueError(f"{cls.__name__} needs RGB images (3, S, S); got {shape}")
        return cls(n_outputs, **kwargs)


@register_head("vgg16")
class VGG16Dense(VGGHead):
    """VGG-16 as published: 7x7 adaptive pooling, two dense layers with dropout, the classifier."""

    def __init__(self, n_outputs: int, *, dense_width: int | None = None, **kwargs: Any) -> None:
        super().__init__(n_outputs, **kwargs)
        c5 = self.backbone.channels["pool5"]
        hidden = int(dense_width or max(1, round(4096 * self.width)))
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(  # torchvision's layout, so its checkpoint keys match
            nn.Linear(c5 * 49, hidden),
            nn.ReLU(True),
            nn.Dropout(0.5),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Dropout(0.5),
            linear_classifier(hidden, n_outputs),
        )
        for i in (0, 3):
            nn.init.normal_(self.classifier[i].weight, 0, 0.01)
            nn.init.zeros_(self.classifier[i].bias)
        self._load_checkpoint()

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        return {
            "features": self.backbone.features,
            "classifier.0": self.classifier[0],
            "classifier.3": self.classifier[3],
        }

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        pool5 = self.backbone(batch["image"])["pool5"]
        return {"logits": self.classifier(torch.flatten(self.avgpool(pool5), 1))}


@register_head("vgg16_gap")
class VGG16GAP(VGGHead):
    """Dense layers replaced by global average pooling; class activation maps come for free."""

    def __init__(self, n_outputs: int, **kwargs: Any) -> None:
        super().__init__(n_outputs, **kwargs)
        self.fc = linear_classifier(self.backbone.channels["pool5"], n_outputs)
        self._load_checkpoint()

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        pool5 = self.backbone(batch["image"])["pool5"]
        # CAM (Zhou et al. 2016): the classifier's weights applied at every pool-5 position.
        cam = torch.einsum("kc,bchw->bkhw", self.fc.weight, pool5)
        return {"logits": self.fc(gap(pool5)), "cam": cam}


@register_head("mel_cnn")
class MelCNN(VGGHead):
    """GAP of pool-3 and pool-4 (without attention) concatenated with GAP of pool-5."""

    def __init__(self, n_outputs: int, **kwargs: Any) -> None:
        super().__init__(n_outputs, **kwargs)
        self.fc = linear_classifier(sum(self.backbone.channels.values()), n_outputs)
        self._load_checkpoint()

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        s = self.backbone(batch["image"])
        return {"logits": self.fc(torch.cat([gap(s[k]) for k in ("pool3", "pool4", "pool5")], 1))}


@register_head("attnmel_cnn")
class AttnMelCNN(VGGHead):
    """Attention gates on pool-3 and pool-4 guided by pool-5; attended GAPs + GAP of pool-5."""

    unused_args = frozenset({"roi_weights", "roi_attributes"})  # no ROI: focal loss alone

    def __init__(
        self,
        n_outputs: int,
        *,
        attn_channels: int = 256,
        roi_weights: Sequence[float] = SEED001_ROI_WEIGHTS,
        roi_attributes: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(n_outputs, **kwargs)
        ch = self.backbone.channels
        self.gates = nn.ModuleDict(
            {k: AttentionGate(ch[k], ch["pool5"], attn_channels) for k in ("pool3", "pool4")}
        )
        self.fc = linear_classifier(sum(ch.values()), n_outputs)
        self.roi_weights = tuple(float(w) for w in roi_weights)
        if len(self.roi_weights) != 2:
            raise ValueError(f"head_args.roi_weights needs [λ1, λ2], got {list(roi_weights)}")
        self.roi_attribute_index = None if roi_attributes is None else tuple(roi_attributes)
        self._load_checkpoint()

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        s = self.backbone(batch["image"])
        pooled, attention = [], {}
        for name, gate in self.gates.items():
            attended, attention[name] = gate(s[name], s["pool5"])
            pooled.append(gap(attended))
        pooled.append(gap(s["pool5"]))
        return {"logits": self.fc(torch.cat(pooled, 1)), "attention": attention}


@register_head("attnmel_cnn_lesion")
class AttnMelCNNLesion(AttnMelCNN):
    roi = "lesion"
    unused_args = frozenset({"roi_attributes"})  # attribute masks only define the dermo ROI
    requires = frozenset({"image", "lesion_mask"})


@register_head("attnmel_cnn_dermo")
class AttnMelCNNDermo(AttnMelCNN):
    roi = "dermo"
    unused_args = frozenset()
    requires = frozenset({"image", "attributes"})


@register_head("attnmel_cnn_bkg")
class AttnMelCNNBkg(AttnMelCNN):
    roi = "background"
    unused_args = frozenset({"roi_attributes"})  # attribute masks only define the dermo ROI
    requires = frozenset({"image", "lesion_mask"})
