"""Seed 003's Table 3 baselines, trained with the global balancing loss as the paper says.

The paper names the networks and cites their papers, nothing more; the readings
(docs/heads-003.md):

* ``sanet_unet``: Ronneberger's U-Net from scratch (widths 64, 128, 256, 512, bridge 1024 at
  stride 16, plain conv blocks; seed 004's ``thwin_unet`` without spatial attention);
* ``sanet_deeplab``: DeepLabV3+ (Chen et al. 2018, the paper's citation for "DeepLab") on
  ResNet-101 at output stride 16: torchvision's ASPP (rates 6, 12, 18, 256 channels), the
  stride-4 map reduced to 48 channels by 1x1 conv + BN + ReLU, the ASPP output upsampled to it
  and concatenated, two 3x3 conv + BN + ReLU of 256, a 1x1 classifier, bilinear upsampling;
* ``sanet_danet``: DANet (Fu et al. 2019) on a dilated ResNet-101 (output stride 8): the
  position and channel attention modules on two branches of 3x3 conv + BN + ReLU (to 1/4 of the
  channels), each followed by another, summed, dropout 0.1, a 1x1 classifier, bilinear
  upsampling; the modules' scale γ starts at 0 as in the authors' code. The auxiliary
  per-branch outputs of that code are left out (the paper's loss has one output).

Hand-written because no library in the project's dependencies has them in this form
(torchvision's DeepLabV3 has no V3+ decoder; DANet is in no maintained PyTorch package).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from samcache.heads.base import register_head
from samcache.heads.dense import ScratchEncoder, check_space, image_input, scaled
from samcache.heads.dense_blocks import Decoder, Stage
from samcache.heads.sanet import SanetFamily, fit_output
from samcache.heads.thwin import RATES, UNET, UNET_BRIDGE, ResNetTrunk


def conv_bn_relu(i: int, o: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(i, o, k, padding=k // 2, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)
    )


class ImageBaseline(SanetFamily):
    """The losses' settings and an image input; ``body`` maps the image to logits."""

    requires: ClassVar[frozenset[str]] = frozenset({"image"})

    def __init__(self, *, input_space: str = "imagenet", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.input_space = check_space(input_space)

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        batch = self.mixed(batch)
        logits = self.body(image_input(batch["image"], self.input_space))
        return self.outputs(fit_output(logits, self.out_size), batch)

    def body(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


@register_head("sanet_unet")
class SanetUNet(ImageBaseline):
    def __init__(
        self,
        n_outputs: int,
        out_size: tuple[int, int],
        *,
        width: float = 1.0,
        encoder_channels: Sequence[int] = UNET,
        bridge_channels: int = UNET_BRIDGE,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        widths = scaled(list(encoder_channels), width)
        self.encoder = ScratchEncoder(widths)
        bridge = scaled(bridge_channels, width)
        self.bridge = nn.Sequential(nn.MaxPool2d(2, ceil_mode=True), Stage(widths[-1], bridge))
        rev = list(reversed(widths))
        self.decoder = Decoder(bridge, rev, rev, n_outputs, out_size, n_free=0)
        self.out_size = out_size
        self.info = {"input_space": self.input_space, **self.family_info}

    def body(self, x: torch.Tensor) -> torch.Tensor:
        skips = self.encoder(x)
        return self.decoder(self.bridge(skips[-1]), list(reversed(skips)))


class PlusDecoder(nn.Module):
    """DeepLabV3+'s head: ASPP on the deep map, fused with the reduced stride-4 map."""

    def __init__(self, low: int, high: int, n_outputs: int, rates: Sequence[int], ch: int = 256):
        super().__init__()
        from torchvision.models.segmentation.deeplabv3 import ASPP

        self.aspp = ASPP(high, list(rates), ch)
        self.reduce = conv_bn_relu(low, 48, 1)
        self.fuse = nn.Sequential(conv_bn_relu(ch + 48, ch), conv_bn_relu(ch, ch))
        self.classifier = nn.Conv2d(ch, n_outputs, 1)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        y = F.interpolate(
            self.aspp(high), size=low.shape[-2:], mode="bilinear", align_corners=False
        )
        return self.classifier(self.fuse(torch.cat([y, self.reduce(low)], dim=1)))


@register_head("sanet_deeplab")
class SanetDeepLab(ImageBaseline):
    pretrained_backbone = True

    def __init__(
        self,
        n_outputs: int,
        out_size: tuple[int, int],
        *,
        backbone: str = "resnet101",
        checkpoint: str | None = None,
        backbone_args: Mapping[str, Any] | None = None,
        atrous_rates: Sequence[int] = RATES,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        from timm.models import FeatureListNet

        from samcache.backbone_init import init_info
        from samcache.heads.backbones import build_backbone

        model = build_backbone(
            backbone, checkpoint=checkpoint, output_stride=16, **dict(backbone_args or {})
        )
        info = list(model.feature_info)
        low = next(i for i, f in enumerate(info) if int(f["reduction"]) == 4)
        self.backbone = FeatureListNet(model, out_indices=(low, len(info) - 1))
        self.backbone.is_backbone = True
        chans = [int(info[low]["num_chs"]), int(info[-1]["num_chs"])]
        self.head = PlusDecoder(*chans, n_outputs, atrous_rates)
        self.out_size = out_size
        self.info = {"backbone": backbone, **init_info(checkpoint), **self.family_info}

    def body(self, x: torch.Tensor) -> torch.Tensor:
        low, high = self.backbone(x)
        return self.head(low, high)


class PositionAttention(nn.Module):
    """DANet's PAM: ``γ · V softmax(QᵀK)ᵀ + x`` over the positions (Q, K at C/8 channels)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.query = nn.Conv2d(channels, max(1, channels // 8), 1)
        self.key = nn.Conv2d(channels, max(1, channels // 8), 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # (B, N, C')
        k = self.key(x).flatten(2)  # (B, C', N)
        attn = torch.softmax(torch.bmm(q, k), dim=-1)  # (B, N, N)
        out = torch.bmm(self.value(x).flatten(2), attn.transpose(1, 2)).view(b, c, h, w)
        return self.gamma * out + x


class ChannelAttention(nn.Module):
    """DANet's CAM: ``γ · softmax(max(XXᵀ) − XXᵀ) X + x`` over the channels."""

    def __init__(self) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        flat = x.flatten(2)
        energy = torch.bmm(flat, flat.transpose(1, 2))
        energy = energy.max(dim=-1, keepdim=True).values.expand_as(energy) - energy
        out = torch.bmm(torch.softmax(energy, dim=-1), flat).view(b, c, h, w)
        return self.gamma * out + x


@register_head("sanet_danet")
class SanetDANet(ImageBaseline):
    pretrained_backbone = True

    def __init__(
        self,
        n_outputs: int,
        out_size: tuple[int, int],
        *,
        backbone: str = "resnet101",
        checkpoint: str | None = None,
        backbone_args: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.backbone = ResNetTrunk(
            backbone, checkpoint=checkpoint, output_stride=8, backbone_args=backbone_args
        )
        c = self.backbone.channels
        inter = max(1, c // 4)
        self.pam = nn.Sequential(conv_bn_relu(c, inter), PositionAttention(inter))
        self.cam = nn.Sequential(conv_bn_relu(c, inter), ChannelAttention())
        self.pam_out, self.cam_out = conv_bn_relu(inter, inter), conv_bn_relu(inter, inter)
        self.classifier = nn.Sequential(nn.Dropout2d(0.1), nn.Conv2d(inter, n_outputs, 1))
        self.out_size = out_size
        self.info = {"backbone": backbone, **self.backbone.init_info, **self.family_info}

    def body(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone(x)
        return self.classifier(self.pam_out(self.pam(f)) + self.cam_out(self.cam(f)))
