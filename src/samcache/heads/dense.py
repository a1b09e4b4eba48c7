"""The base of the dense (segmentation) heads and the encoders they read.

A dense head answers the common ``Head`` interface: it maps a batch to ``{"logits": (B, K, H,
W)}``, one logit map per mask channel at the run's mask size (the ``target`` input, the task's
mask at the head's input size), and trains with a segmentation loss of ``batch["target"]``.
Seeds 002-004 compose it from three kinds of encoder, all giving maps coarse enough for a U-Net
decoder (``samcache.heads.dense_blocks``):

* ``ScratchEncoder``: a U-Net's contracting path trained from scratch (conv blocks, 2x2 max
  pooling), one level per stride 1, 2, 4, ...;
* ``TimmEncoder``: an ImageNet backbone from timm (a local checkpoint, never a download), its
  feature maps at strides 4, 8, 16 and 32 (``FeatureListNet`` over timm's ``feature_info``);
* ``SamPyramid``: the frozen SAM encoder's cached taps as a pyramid, e.g. ViT-H at 256 px:
  ``block:1`` on its native 64 x 64 grid (stride 4), ``block:16@32``, ``block:32@16`` and
  ``neck@8`` average-pooled into the cache (strides 8, 16, 32) and ``neck@4`` (stride 64, the
  bridge). Each level is standardised per channel (batch norm without affine parameters: SAM's
  block outputs differ in scale by orders of magnitude between channels, as for seed 001's SAM
  heads) and projected by a 1x1 conv + BN + ReLU. Only the head trains; the encoder never runs.

Images arrive ImageNet-normalised (``samcache.inputs``); ``input_space`` turns them into what a
paper feeds its network: ``lab`` (AER-Net: CIELAB, each channel scaled to [0, 1] as L/100,
(a+128)/255, (b+128)/255, i.e. OpenCV's 8-bit Lab divided by 255; kornia's ``rgb_to_lab``),
``rgb`` (Thwin & Park: RGB in [0, 1]) or ``imagenet`` (as given).

SAM's taps cover the image resized and zero-padded to a square; the dataset stores are square,
so the pyramid covers exactly the image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from samcache.heads.base import Head, check_head_args
from samcache.heads.dense_blocks import Stage, fit_grid
from samcache.inputs import IMAGENET_MEAN, IMAGENET_STD

INPUT_SPACES = ("lab", "rgb", "imagenet")


def output_size(input_shapes: Mapping[str, Any]) -> tuple[int, int]:
    """The logits' grid: the run's mask size (``target``), else the image's."""
    shape = input_shapes.get("target") or input_shapes.get("image")
    if shape is None:
        raise ValueError("a dense head needs the task's masks (a segmentation task) or an image")
    return int(shape[-2]), int(shape[-1])


def image_input(image: torch.Tensor, space: str) -> torch.Tensor:
    """An ImageNet-normalised (B, 3, H, W) image in the colour space a head reads."""
    if space == "imagenet":
        return image
    rgb = (image * IMAGENET_STD.to(image.device) + IMAGENET_MEAN.to(image.device)).clamp(0, 1)
    if space == "rgb":
        return rgb
    if space == "lab":
        from kornia.color import rgb_to_lab

        lab = rgb_to_lab(rgb)
        scale = torch.tensor([100.0, 255.0, 255.0], device=image.device).view(1, 3, 1, 1)
        shift = torch.tensor([0.0, 128.0, 128.0], device=image.device).view(1, 3, 1, 1)
        return (lab + shift) / scale
    raise ValueError(f"head_args.input_space must be one of {INPUT_SPACES}, not '{space}'")


def check_space(space: str) -> str:
    if space not in INPUT_SPACES:
        raise ValueError(f"head_args.input_space must be one of {INPUT_SPACES}, not '{space}'")
    return space


def scaled(channels: Sequence[int] | int, width: float) -> Any:
    """Channel counts times ``width`` (at least 1 each): the demo's small variants."""
    if isinstance(channels, int):
        return max(1, round(channels * width))
    return [max(1, round(c * width)) for c in channels]


class DenseHead(Head):
    """A head that predicts masks: logits (B, K, H, W) and a segmentation loss of ``target``.

    Its constructor takes the number of outputs, the logits' grid and, for a head that reads
    SAM taps, the taps' shapes, then its ``head_args``; ``from_shapes`` passes them.
    """

    dense: ClassVar[bool] = True

    @classmethod
    def from_shapes(cls, *, n_outputs: int, input_shapes: Mapping[str, Any], **kwargs: Any):
        check_head_args(cls, kwargs)
        shapes = (input_shapes.get("taps") or {},) if "taps" in cls.requires else ()
        return cls(n_outputs, output_size(input_shapes), *shapes, **kwargs)

    def segmentation_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(
        self, outputs: Mapping[str, Any], batch: Mapping[str, Any], task_type: str
    ) -> torch.Tensor:
        if task_type != "segmentation":
            raise ValueError(
                f"{type(self).__name__} predicts masks; the run's task is a {task_type} task. "
                "Train it on a segmentation task (e.g. ISIC 2018's 'lesion')"
            )
        return self.segmentation_loss(outputs["logits"], batch["target"])


class ScratchEncoder(nn.Module):
    """A U-Net contracting path from scratch: level i is at stride 2**i (max pooling between)."""

    def __init__(
        self, widths: Sequence[int], *, spatial_attention: bool = False, sa_kernel: int = 7
    ) -> None:
        super().__init__()
        chans = [3, *widths]
        self.levels = nn.ModuleList(
            Stage(chans[i], chans[i + 1], spatial_attention=spatial_attention, sa_kernel=sa_kernel)
            for i in range(len(widths))
        )
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        self.channels = list(widths)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, level in enumerate(self.levels):
            x = level(self.pool(x) if i else x)
            out.append(x)
        return out


class TimmEncoder(nn.Module):
    """A timm backbone's feature maps at the given strides (fine to coarse)."""

    is_backbone: ClassVar[bool] = True  # a trainable backbone (tests check it learns)

    def __init__(
        self,
        name: str,
        *,
        checkpoint: str | None = None,
        reductions: Sequence[int] = (4, 8, 16, 32),
        backbone_args: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        from timm.models import FeatureListNet

        from samcache.backbone_init import init_info
        from samcache.heads.backbones import build_backbone

        model = build_backbone(name, checkpoint=checkpoint, **dict(backbone_args or {}))
        info = list(model.feature_info)
        picks = [i for i, f in enumerate(info) if int(f["reduction"]) in set(reductions)]
        found = [int(info[i]["reduction"]) for i in picks]
        if found != sorted(set(reductions)):
            raise ValueError(
                f"head_args.backbone: '{name}' has feature maps at strides "
                f"{[int(f['reduction']) for f in info]}, not at each of {sorted(set(reductions))}"
            )
        # loaded as a whole model (the checkpoint is checked against it), then cut after the
        # deepest feature map: the classifier and anything after it are dropped
        # feature maps inside a stage container (EfficientNet's 'blocks.4') need it flattened
        nested = any("." in str(info[i]["module"]) for i in picks)
        self.net = FeatureListNet(model, out_indices=picks, flatten_sequential=nested)
        self.channels = [int(info[i]["num_chs"]) for i in picks]
        self.reductions = found
        self.init_info = init_info(checkpoint)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.net(x))


class SamPyramid(nn.Module):
    """Cached SAM taps as levels: standardised per channel, then 1x1 conv + BN + ReLU each."""

    def __init__(
        self, tap_channels: Mapping[str, int], levels: Sequence[str], widths: Sequence[int]
    ) -> None:
        super().__init__()
        missing = [t for t in levels if t not in tap_channels]
        if missing:
            raise ValueError(
                f"head_args.levels names taps {missing}, but the method reads only "
                f"{list(tap_channels)}; add them to the method's 'taps'"
            )
        if len(widths) != len(levels):
            raise ValueError(f"{len(widths)} widths for the {len(levels)} pyramid levels {levels}")
        self.levels, self.widths = list(levels), list(widths)
        self.norms = nn.ModuleList(
            nn.BatchNorm2d(tap_channels[t], affine=False) for t in self.levels
        )
        self.proj = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(tap_channels[t], w, 1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)
            )
            for t, w in zip(self.levels, widths, strict=True)
        )

    @classmethod
    def under_decoder(
        cls,
        tap_shapes: Mapping[str, Sequence[int]],
        levels: Sequence[str] | None,
        decoder_widths: Sequence[int],
    ) -> SamPyramid:
        """The pyramid a U-Net decoder of ``decoder_widths`` (coarse to fine) reads: one skip
        level per width, fine to coarse, then the bridge level (``levels`` or the method's
        taps), each projected to the width of its decoder step (the bridge to the coarsest).
        ``finest_grid`` is the side of the finest level."""
        chosen = pyramid_levels({"taps": tap_shapes}, levels, len(decoder_widths) + 1)
        widths = [*reversed(decoder_widths), decoder_widths[0]]
        pyramid = cls({t: int(tap_shapes[t][0]) for t in chosen}, chosen, widths)
        pyramid.finest_grid = int(tap_shapes[chosen[0]][-1])
        return pyramid

    def forward(self, taps: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        return [
            proj(norm(taps[t]))
            for t, norm, proj in zip(self.levels, self.norms, self.proj, strict=True)
        ]


def pyramid_levels(
    input_shapes: Mapping[str, Any], levels: Sequence[str] | None, n: int | None = None
) -> list[str]:
    """The pyramid's taps (fine to coarse): ``levels`` or the method's taps in order."""
    taps = list((input_shapes.get("taps") or {}).keys())
    chosen = list(levels) if levels is not None else taps
    if n is not None and len(chosen) != n:
        raise ValueError(
            f"head_args.levels: {n} SAM taps are needed (fine to coarse), the method gives "
            f"{chosen}; list them in the method's 'taps' or in head_args.levels"
        )
    if not chosen:
        raise ValueError("this head reads SAM taps; the method lists none")
    return chosen


def fuse(skips: Sequence[torch.Tensor], sam: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Each encoder skip with the SAM level of its stride concatenated (SAM brought onto the
    skip's grid by ``fit_grid``)."""
    return [
        torch.cat([s, fit_grid(p, s.shape[-2:])], dim=1) for s, p in zip(skips, sam, strict=True)
    ]
