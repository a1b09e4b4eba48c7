"""Seed 000 (Gu et al.): frozen SAM features fused into a trainable backbone through SLCA.

Registered heads (all read the image and the cached taps; the encoder never runs):

* ``sam_slca_projector`` — the paper's method, "+ SAM (Ours)" in Tables I and II: SLCA fusion
  at every stage plus the projector head.
* ``sam_slca`` — SLCA fusion without the projector (Table III, "+ SLCA").
* ``sam_sigmoid`` — attention = sigmoid of a 1x1 projection, same residual (Table III, "+ sigmoid").
* ``sam_add`` — the projected features added to the stage, no attention (Table III, "+ add").

The plain backbone is ``backbone`` (``samcache.heads.classifier``). The block ablation of
Table IV is configuration: ``head_args.stage_taps`` lists the tap fused at each stage, so
``[block:1, block:1, block:1, block:1, block:1]`` puts the 1st block's features everywhere.

Fig. 1's mapping of taps to stages, the default: the method's five taps in encoder order —
patch embedding, blocks 1, 16 and 32, neck for ViT-H — go to the backbone's five stages in
depth order (``samcache.heads.backbones``): ResNet/SENet stem (stride 2), stages 1-4 (strides
4-32); Swin V2 patch embedding (stride 4), stages 1-4.

SLCA, Eq. (1): ``SLCA(F) = sigmoid(Conv2(ReLU(Conv1(SLAP(F)))))`` and the stage output becomes
``X + X * SLCA(F)``. Readings of what the paper leaves open, each a ``head_args`` option:

* ``slap`` — spatial local average pooling. ``grid`` (default): average pooling of the SAM map
  onto the stage's grid, so each stage position receives the mean of the SAM positions it
  covers (kernel = stride = 64 / 28 etc., adaptive where the ratio is not whole). A stage finer
  than the SAM grid (the 112x112 ResNet stem vs 64x64 SAM tokens) cannot be pooled onto; there
  the attention is computed at the SAM grid and upsampled bilinearly. ``window``: a k x k,
  stride-1 average pool (``slap_kernel``, default 3) at the SAM grid, attention resized to the
  stage bilinearly.
* Conv1 reduces the SAM channels by ``reduction`` (r, default 16 as in SE and ECA nets) and Conv2
  maps to the stage's channels (the attention must match the stage it weights). Both are plain
  1x1 convolutions with bias: Eq. (1) writes ReLU and sigmoid explicitly, and a BN + ReLU before
  the sigmoid would pin the weights at >= 0.5.
* ``residual`` — how the attention enters the stage "via a residual connection": ``scale``
  (default) ``X + X * A``; ``add`` ``X + A``.
* ``sigmoid`` and ``add`` need a 1x1 projection of the SAM map to the stage's channels (1280 vs
  256 or 2048); the paper does not say how it matched them.

Projector head (Fig. 1c): the SAM map is resized bilinearly to 56x56, a 3x3 conv + BN + ReLU
takes it to C channels (the backbone's last-stage width), three 3x3 stride-2 conv + BN + ReLU
take it to 7x7, and it is concatenated with the backbone's last features; global average pooling
and one linear layer classify the result. Readings: the projector reads the tap fused into the
last stage (``projector_tap``, default the neck: the encoder's output it is "appended" to); at
image sizes other than 224 the 56 becomes 8 x the last stage's grid so the shapes still meet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from samcache.heads.base import Head, register_head
from samcache.heads.classifier import BackboneClassifier, staged_backbone

SLAP_MODES = ("grid", "window")
RESIDUALS = ("scale", "add")


def slap(x: torch.Tensor, size: Sequence[int], mode: str = "grid", kernel: int = 3) -> torch.Tensor:
    """Spatial local average pooling of a (B, C, g, g) map towards a stage of grid ``size``."""
    if mode == "grid":
        if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
            return F.adaptive_avg_pool2d(x, tuple(size))
        return x
    if mode == "window":
        return F.avg_pool2d(x, kernel, stride=1, padding=kernel // 2, count_include_pad=False)
    raise ValueError(f"head_args.slap must be one of {SLAP_MODES}, not '{mode}'")


def to_grid(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class SLCA(nn.Module):
    """Spatially localized channel attention, Eq. (1): weights in (0, 1) at the stage's grid."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        reduction: int = 16,
        slap: str = "grid",
        slap_kernel: int = 3,
    ) -> None:
        super().__init__()
        hidden = max(1, in_channels // reduction)
        self.conv1 = nn.Conv2d(in_channels, hidden, 1)
        self.conv2 = nn.Conv2d(hidden, out_channels, 1)
        self.slap, self.slap_kernel = slap, slap_kernel

    def forward(self, sam: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        x = slap(sam, size, self.slap, self.slap_kernel)
        return to_grid(torch.sigmoid(self.conv2(F.relu(self.conv1(x)))), size)


class SigmoidAttention(nn.Module):
    """Table III's "sigmoid": attention = sigmoid of a 1x1 projection, no bottleneck."""

    def __init__(self, in_channels: int, out_channels: int, *, slap: str, slap_kernel: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, 1)
        self.slap, self.slap_kernel = slap, slap_kernel

    def forward(self, sam: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        x = slap(sam, size, self.slap, self.slap_kernel)
        return to_grid(torch.sigmoid(self.proj(x)), size)


class StageFusion(nn.Module):
    """What one stage receives from its SAM tap: attention through a residual, or a sum."""

    def __init__(
        self,
        mode: str,
        in_channels: int,
        out_channels: int,
        *,
        reduction: int,
        slap: str,
        slap_kernel: int,
        residual: str,
    ) -> None:
        super().__init__()
        if residual not in RESIDUALS:
            raise ValueError(f"head_args.residual must be one of {RESIDUALS}, not '{residual}'")
        self.mode, self.residual = mode, residual
        self.slap, self.slap_kernel = slap, slap_kernel
        if mode == "slca":
            self.attention = SLCA(
                in_channels, out_channels, reduction=reduction, slap=slap, slap_kernel=slap_kernel
            )
        elif mode == "sigmoid":
            self.attention = SigmoidAttention(
                in_channels, out_channels, slap=slap, slap_kernel=slap_kernel
            )
        elif mode == "add":
            self.proj = nn.Conv2d(in_channels, out_channels, 1)
        else:
            raise ValueError(f"unknown fusion '{mode}'")

    def forward(self, stage: torch.Tensor, sam: torch.Tensor) -> torch.Tensor:
        size = stage.shape[-2:]
        if self.mode == "add":
            return stage + to_grid(self.proj(slap(sam, size, self.slap, self.slap_kernel)), size)
        a = self.attention(sam, size)
        return stage + stage * a if self.residual == "scale" else stage + a


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class Projector(nn.Module):
    """Fig. 1(c): resize to 8 x ``out_grid`` (56 for 7), conv to C, three stride-2 convs."""

    def __init__(self, in_channels: int, out_channels: int, out_grid: Sequence[int]) -> None:
        super().__init__()
        self.size = tuple(8 * g for g in out_grid)
        self.blocks = nn.Sequential(
            conv_bn_relu(in_channels, out_channels),
            *(conv_bn_relu(out_channels, out_channels, stride=2) for _ in range(3)),
        )

    def forward(self, sam: torch.Tensor) -> torch.Tensor:
        return self.blocks(to_grid(sam, self.size))


class SamFusionHead(BackboneClassifier):
    """A timm backbone whose stages are modulated by cached SAM taps (variants below)."""

    requires = frozenset({"image", "taps"})
    fusion: ClassVar[str] = "slca"
    projector: ClassVar[bool] = False

    def __init__(
        self,
        backbone: nn.Module,
        n_outputs: int,
        tap_channels: Mapping[str, int],
        stage_taps: Sequence[str],
        *,
        reduction: int = 16,
        slap: str = "grid",
        slap_kernel: int = 3,
        residual: str = "scale",
        projector_tap: str | None = None,
        dropout: float = 0.0,
    ) -> None:
        extra = backbone.num_features if self.projector else 0
        super().__init__(backbone, n_outputs, dropout=dropout, extra_features=extra)
        stages = backbone.stages
        if len(stage_taps) != len(stages):
            raise ValueError(
                f"head_args.stage_taps: the backbone has {len(stages)} stages "
                f"({', '.join(s.module for s in stages)}) but {len(stage_taps)} taps were given "
                f"({list(stage_taps)}); list one tap per stage"
            )
        unknown = sorted(set(stage_taps) - set(tap_channels))
        if unknown:
            raise ValueError(
                f"head_args.stage_taps names {unknown}, which the method does not read; "
                f"its taps are {sorted(tap_channels)}"
            )
        self.stage_taps = list(stage_taps)
        self.fusions = nn.ModuleList(
            StageFusion(
                self.fusion,
                tap_channels[t],
                s.channels,
                reduction=reduction,
                slap=slap,
                slap_kernel=slap_kernel,
                residual=residual,
            )
            for t, s in zip(self.stage_taps, stages, strict=True)
        )
        self.projector_tap = projector_tap or self.stage_taps[-1]
        if self.projector:
            if self.projector_tap not in tap_channels:
                raise ValueError(f"head_args.projector_tap '{self.projector_tap}' is not read")
            self.project = Projector(
                tap_channels[self.projector_tap], backbone.num_features, stages[-1].grid
            )

    @classmethod
    def from_shapes(
        cls,
        *,
        n_outputs: int,
        input_shapes: Mapping[str, Any],
        backbone: str = "resnet152",
        checkpoint: str | None = None,
        backbone_args: Mapping[str, Any] | None = None,
        stage_taps: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> Head:
        if "slap_kernel" in kwargs and kwargs.get("slap", "grid") != "window":
            raise ValueError(
                f"head '{cls.__name__}' does not use head_args ['slap_kernel'] unless slap is "
                "'window'; remove it"
            )
        taps = {name: int(shape[0]) for name, shape in input_shapes["taps"].items()}
        net = staged_backbone(backbone, input_shapes, checkpoint, backbone_args)
        return cls(net, n_outputs, taps, list(stage_taps or taps), **kwargs)

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        taps = batch["taps"]

        def fuse(i: int, stage: torch.Tensor) -> torch.Tensor:
            return self.fusions[i](stage, taps[self.stage_taps[i]])

        feats = self.backbone(batch["image"], fuse)
        if self.projector:
            feats = torch.cat([feats, self.project(taps[self.projector_tap])], dim=1)
        return {"logits": self.classify(feats)}


@register_head("sam_add")
class SamAdd(SamFusionHead):
    fusion = "add"  # no attention: neither a bottleneck (reduction) nor a residual form
    unused_args = frozenset({"reduction", "residual", "projector_tap"})


@register_head("sam_sigmoid")
class SamSigmoid(SamFusionHead):
    fusion = "sigmoid"  # one 1x1 projection, no bottleneck
    unused_args = frozenset({"reduction", "projector_tap"})


@register_head("sam_slca")
class SamSLCA(SamFusionHead):
    fusion = "slca"
    unused_args = frozenset({"projector_tap"})


@register_head("sam_slca_projector")
class SamSLCAProjector(SamFusionHead):
    fusion = "slca"
    projector = True
