"""Seed 004, Thwin & Park: DeepLabV3 and U-Net with spatial attention, and their SAM variants.

The paper names its parts and leaves their sizes open; samcache takes these readings
(docs/heads-004.md):

* spatial attention: CBAM's spatial branch (channel-wise mean and max, a k x k convolution with
  BN, sigmoid, times the map; k = 7, the value CBAM and the paper's reference [14] give);
* ``thwin_unet``: Ronneberger's U-Net trained from scratch (widths 64, 128, 256, 512, bridge
  1024 at stride 16, skips at strides 1 to 8, plain conv blocks), with ``spatial_attention``
  after each block of both paths and the bridge ("after each convolutional layer");
* ``thwin_deeplabv3``: DeepLabV3 on a ResNet (ResNet-50 at output stride 16, from a local
  ImageNet checkpoint): torchvision's ASPP (1x1, 3x3 at rates 6, 12, 18, image pooling, 256
  channels), a 3x3 conv + BN + ReLU, ``spatial_attention`` "before classification", the 1x1
  classifier and bilinear upsampling to the input;
* ``sam_thwin_unet`` (new): the U-Net decoder on the frozen SAM pyramid (as seed 002's
  ``sam_aernet``: four skip levels and a bridge level), plain blocks, ``spatial_attention``
  after each decoder block and the bridge;
* ``sam_thwin_aspp`` (new): DeepLabV3's head on one cached SAM tap (``tap``, default the
  method's last: the neck, SAM's stride-16 embedding) with or without spatial attention.

Loss: focal + (1 − SSIM) + (1 − soft Jaccard), equal weights (``samcache.losses.hybrid_loss``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from samcache.heads.base import register_head
from samcache.heads.dense import (
    DenseHead,
    SamPyramid,
    ScratchEncoder,
    check_space,
    image_input,
    scaled,
)
from samcache.heads.dense_blocks import Decoder, SpatialAttention, Stage, free_steps
from samcache.losses import hybrid_loss

UNET = (64, 128, 256, 512)
UNET_BRIDGE = 1024
RATES = (6, 12, 18)


def sa_settings(spatial_attention: bool, sa_kernel: int | None, where: str) -> int:
    if sa_kernel is not None and not spatial_attention:
        raise ValueError(
            f"head_args.sa_kernel sizes the spatial attention; {where} has spatial_attention: "
            "false, so it would change nothing. Remove it"
        )
    return 7 if sa_kernel is None else int(sa_kernel)


class ThwinFamily(DenseHead):
    """The hybrid loss of Thwin & Park (focal + 1 − SSIM + 1 − soft Jaccard)."""

    def __init__(self, *, focal_alpha: float = 0.25, focal_gamma: float = 2.0) -> None:
        super().__init__()
        self.focal_alpha, self.focal_gamma = float(focal_alpha), float(focal_gamma)

    def segmentation_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return hybrid_loss(
            logits, target, focal_alpha=self.focal_alpha, focal_gamma=self.focal_gamma
        )


@register_head("thwin_unet")
class ThwinUNet(ThwinFamily):
    requires: ClassVar[frozenset[str]] = frozenset({"image"})

    def __init__(
        self,
        n_outputs: int,
        out_size: tuple[int, int],
        *,
        spatial_attention: bool = False,
        sa_kernel: int | None = None,
        width: float = 1.0,
        encoder_channels: Sequence[int] = UNET,
        bridge_channels: int = UNET_BRIDGE,
        input_space: str = "rgb",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        k = sa_settings(spatial_attention, sa_kernel, "thwin_unet")
        self.input_space = check_space(input_space)
        widths = scaled(list(encoder_channels), width)
        sa = {"spatial_attention": spatial_attention, "sa_kernel": k}
        self.encoder = ScratchEncoder(widths, **sa)
        self.bridge = nn.Sequential(
            nn.MaxPool2d(2, ceil_mode=True), Stage(widths[-1], scaled(bridge_channels, width), **sa)
        )
        self.decoder = Decoder(
            scaled(bridge_channels, width),
            list(reversed(widths)),
            list(reversed(widths)),
            n_outputs,
            out_size,
            n_free=0,
            **sa,
        )
        self.info = {"spatial_attention": spatial_attention, "input_space": input_space}

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        skips = self.encoder(image_input(batch["image"], self.input_space))
        logits = self.decoder(self.bridge(skips[-1]), list(reversed(skips)))
        return {"logits": logits}


class AsppHead(nn.Module):
    """DeepLabV3's head: torchvision's ASPP, 3x3 conv + BN + ReLU, [spatial attention], 1x1."""

    def __init__(
        self,
        in_channels: int,
        n_outputs: int,
        *,
        rates: Sequence[int] = RATES,
        channels: int = 256,
        spatial_attention: bool = False,
        sa_kernel: int = 7,
    ) -> None:
        super().__init__()
        from torchvision.models.segmentation.deeplabv3 import ASPP

        self.aspp = ASPP(in_channels, list(rates), channels)
        self.conv = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.attention = SpatialAttention(sa_kernel) if spatial_attention else None
        self.classifier = nn.Conv2d(channels, n_outputs, 1)

    def forward(self, x: torch.Tensor, out_size: Sequence[int]) -> torch.Tensor:
        y = self.conv(self.aspp(x))
        if self.attention is not None:
            y = self.attention(y)
        return F.interpolate(
            self.classifier(y), size=tuple(out_size), mode="bilinear", align_corners=False
        )


class ResNetTrunk(nn.Module):
    """A timm ResNet's feature extractor at an output stride (dilated last stages)."""

    is_backbone: ClassVar[bool] = True

    def __init__(
        self,
        name: str,
        *,
        checkpoint: str | None,
        output_stride: int,
        backbone_args: Mapping[str, Any] | None,
    ) -> None:
        super().__init__()
        from samcache.backbone_init import init_info
        from samcache.heads.backbones import build_backbone

        self.model = build_backbone(
            name, checkpoint=checkpoint, output_stride=output_stride, **dict(backbone_args or {})
        )
        self.channels = int(self.model.num_features)
        self.init_info = init_info(checkpoint)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


@register_head("thwin_deeplabv3")
class ThwinDeepLabV3(ThwinFamily):
    requires: ClassVar[frozenset[str]] = frozenset({"image"})
    pretrained_backbone = True

    def __init__(
        self,
        n_outputs: int,
        out_size: tuple[int, int],
        *,
        backbone: str = "resnet50",
        checkpoint: str | None = None,
        backbone_args: Mapping[str, Any] | None = None,
        output_stride: int = 16,
        atrous_rates: Sequence[int] = RATES,
        aspp_channels: int = 256,
        spatial_attention: bool = False,
        sa_kernel: int | None = None,
        input_space: str = "rgb",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        k = sa_settings(spatial_attention, sa_kernel, "thwin_deeplabv3")
        self.input_space = check_space(input_space)
        self.backbone = ResNetTrunk(
            backbone,
            checkpoint=checkpoint,
            output_stride=output_stride,
            backbone_args=backbone_args,
        )
        self.head = AsppHead(
            self.backbone.channels,
            n_outputs,
            rates=atrous_rates,
            channels=aspp_channels,
            spatial_attention=spatial_attention,
            sa_kernel=k,
        )
        self.out_size = out_size
        self.info = {
            "backbone": backbone,
            "spatial_attention": spatial_attention,
            "input_space": input_space,
            **self.backbone.init_info,
        }

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        feats = self.backbone(image_input(batch["image"], self.input_space))
        return {"logits": self.head(feats, self.out_size)}


@register_head("sam_thwin_unet")
class SamThwinUNet(ThwinFamily):
    """The U-Net decoder (plain blocks, no gates) on the SAM pyramid: skip levels fine to
    coarse, then the bridge level."""

    requires: ClassVar[frozenset[str]] = frozenset({"taps"})

    def __init__(
        self,
        n_outputs: int,
        out_size: tuple[int, int],
        tap_shapes: Mapping[str, Sequence[int]],
        *,
        levels: Sequence[str] | None = None,
        spatial_attention: bool = False,
        sa_kernel: int | None = None,
        width: float = 1.0,
        bridge_channels: int = 512,
        decoder_channels: Sequence[int] = (256, 128, 64, 32),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        k = sa_settings(spatial_attention, sa_kernel, "sam_thwin_unet")
        widths = scaled(list(decoder_channels), width)
        sa = {"spatial_attention": spatial_attention, "sa_kernel": k}
        self.pyramid = SamPyramid.under_decoder(tap_shapes, levels, widths)
        proj = self.pyramid.widths
        bridge = scaled(bridge_channels, width)
        self.bridge = Stage(proj[-1], bridge, **sa)
        self.decoder = Decoder(
            bridge,
            list(reversed(proj[:-1])),
            widths,
            n_outputs,
            out_size,
            n_free=free_steps(self.pyramid.finest_grid, out_size[0]),
            **sa,
        )
        self.info = {"spatial_attention": spatial_attention, "levels": self.pyramid.levels}

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        levels = self.pyramid(batch["taps"])
        logits = self.decoder(self.bridge(levels[-1]), list(reversed(levels[:-1])))
        return {"logits": logits}


@register_head("sam_thwin_aspp")
class SamThwinAspp(ThwinFamily):
    """DeepLabV3's ASPP head on one cached SAM tap (standardised per channel)."""

    requires: ClassVar[frozenset[str]] = frozenset({"taps"})

    def __init__(
        self,
        n_outputs: int,
        out_size: tuple[int, int],
        tap_shapes: Mapping[str, Sequence[int]],
        *,
        tap: str | None = None,
        atrous_rates: Sequence[int] = RATES,
        aspp_channels: int = 256,
        spatial_attention: bool = False,
        sa_kernel: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        k = sa_settings(spatial_attention, sa_kernel, "sam_thwin_aspp")
        taps = list(tap_shapes)
        self.tap = tap or (taps[-1] if taps else None)
        if self.tap not in tap_shapes:
            raise ValueError(
                f"head_args.tap: '{self.tap}' is not among the method's taps {taps}; add it to "
                "the method's 'taps'"
            )
        channels = int(tap_shapes[self.tap][0])
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.head = AsppHead(
            channels,
            n_outputs,
            rates=atrous_rates,
            channels=aspp_channels,
            spatial_attention=spatial_attention,
            sa_kernel=k,
        )
        self.out_size = out_size
        self.info = {"tap": self.tap, "spatial_attention": spatial_attention}

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return {"logits": self.head(self.norm(batch["taps"][self.tap]), self.out_size)}
