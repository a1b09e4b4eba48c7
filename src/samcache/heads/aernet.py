"""Seed 002, AER-Net (Lima & Braz Júnior): attention gates and residual blocks in a U-Net decoder.

The decoder, as the authors' Keras code builds it (``UEfficientNet`` in josegpl/AER-Net):
encoder maps at strides 4, 8, 16 and 32; a bridge at stride 64 (2x2 max pooling of the stride-32
map, then a 512-channel block); four decoder steps of widths 256, 128, 64 and 32, each upsampling
(nearest, x2), gating the skip (Oktay's attention gate) and concatenating it, then a block
(conv3-BN-ReLU twice, plus a 1x1-BN shortcut when residual); two skip-less x2 upsampling blocks
of width 32 to the input resolution; a 1x1 convolution and the sigmoid (in the loss and the
prediction). Loss: eq. (1), ``1 - 2Σpg / (Σp² + Σg²)``. Input: CIELAB scaled to [0, 1].

Heads (``head_args`` in docs/heads-002.md):

* ``aer_unet``: the decoder on a U-Net contracting path trained from scratch (Table 2's "U-Net",
  "Attention + U-Net", "Attention + Residual + U-Net" via ``attention`` and ``residual``): plain
  conv blocks at strides 1 to 32 of widths 32, 32, 32, 64, 128, 256 (the decoder's widths
  mirrored); the strides-4-to-32 maps are the skips;
* ``aernet``: the decoder on an ImageNet backbone (AER-Net: EfficientNet-B1; Table 1's
  backbones), from a local checkpoint;
* ``sam_aernet`` (new): the decoder on the frozen SAM pyramid from the cache, four skip levels
  and the bridge level (``SamPyramid``); only the decoder trains;
* ``aernet_sam`` (new): AER-Net's backbone with each skip concatenated with the SAM level of
  its stride (the SAM pyramid fused into the skips); backbone and decoder train, SAM is frozen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from samcache.heads.base import check_head_args, register_head
from samcache.heads.dense import (
    DenseHead,
    SamPyramid,
    ScratchEncoder,
    TimmEncoder,
    check_space,
    fuse,
    image_input,
    output_size,
    pyramid_levels,
    scaled,
)
from samcache.heads.dense_blocks import Decoder, Stage, free_steps
from samcache.losses import soft_dice_loss

BRIDGE = 512
DECODER = (256, 128, 64, 32)
SCRATCH = (32, 32, 32, 64, 128, 256)  # strides 1..32; the last four are the skips


class AerFamily(DenseHead):
    """The AER-Net decoder over skips (fine to coarse) from some encoder; eq. (1) as loss.

    The decoder's settings are the family's; each head passes them on and builds the decoder
    over its encoder's skips with ``build_decoder``.
    """

    def __init__(
        self,
        *,
        attention: bool = True,
        residual: bool = True,
        psi: str | None = None,
        width: float = 1.0,
        bridge_channels: int = BRIDGE,
        decoder_channels: Sequence[int] = DECODER,
    ) -> None:
        super().__init__()
        if psi is not None and not attention:
            raise ValueError(
                f"head_args.psi is the attention gate's activation; {type(self).__name__} has "
                "attention: false, so it would change nothing. Remove it"
            )
        self.attention, self.residual, self.psi = attention, residual, psi or "sigmoid"
        self.width, self.bridge_channels = width, bridge_channels
        self.decoder_channels = list(decoder_channels)
        self.info = {
            "attention": attention,
            "residual": residual,
            **({"psi": self.psi} if attention else {}),
        }

    def build_decoder(
        self,
        skip_channels: Sequence[int],
        skip_grid: int,
        n_outputs: int,
        out_size: tuple[int, int],
        *,
        bridge_in: int,
        pool_bridge: bool = True,
    ) -> None:
        bridge = scaled(self.bridge_channels, self.width)
        self.bridge = nn.Sequential(
            nn.MaxPool2d(2, ceil_mode=True) if pool_bridge else nn.Identity(),
            Stage(bridge_in, bridge, residual=self.residual),
        )
        self.decoder = Decoder(
            bridge,
            list(reversed(skip_channels)),
            scaled(self.decoder_channels, self.width),
            n_outputs,
            out_size,
            n_free=free_steps(skip_grid, out_size[0]),
            gates=self.attention,
            psi=self.psi,
            residual=self.residual,
        )

    def decode(self, skips: Sequence[torch.Tensor], bridge_source: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.bridge(bridge_source), list(reversed(skips)))

    def segmentation_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return soft_dice_loss(logits, target)


@register_head("aer_unet")
class AerUNet(AerFamily):
    requires: ClassVar[frozenset[str]] = frozenset({"image"})

    def __init__(
        self,
        n_outputs: int,
        out_size: tuple[int, int],
        *,
        encoder_channels: Sequence[int] = SCRATCH,
        input_space: str = "lab",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.input_space = check_space(input_space)
        self.encoder = ScratchEncoder(scaled(list(encoder_channels), self.width))
        n_skips = len(self.decoder_channels)
        self.first_skip = len(encoder_channels) - n_skips
        if self.first_skip < 0:
            raise ValueError(
                f"head_args.encoder_channels: {len(encoder_channels)} levels for "
                f"{n_skips} skips; give at least one level per skip"
            )
        chans = self.encoder.channels[self.first_skip :]
        self.build_decoder(
            chans,
            max(1, out_size[0] // 2**self.first_skip),
            n_outputs,
            out_size,
            bridge_in=chans[-1],
        )
        self.info |= {"encoder": "scratch", "input_space": input_space}

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        levels = self.encoder(image_input(batch["image"], self.input_space))
        skips = levels[self.first_skip :]
        return {"logits": self.decode(skips, skips[-1])}


@register_head("aernet")
class AerNet(AerFamily):
    requires: ClassVar[frozenset[str]] = frozenset({"image"})
    pretrained_backbone = True

    def __init__(
        self,
        n_outputs: int,
        out_size: tuple[int, int],
        image_side: int,
        sam_taps: tuple[Sequence[str], Mapping[str, int]] | None = None,
        *,
        backbone: str = "tf_efficientnet_b1",
        checkpoint: str | None = None,
        backbone_args: Mapping[str, Any] | None = None,
        input_space: str = "lab",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.input_space = check_space(input_space)
        self.encoder = TimmEncoder(backbone, checkpoint=checkpoint, backbone_args=backbone_args)
        chans = list(self.encoder.channels)
        self.sam = None
        if sam_taps is not None:  # aernet_sam: the SAM pyramid fused into the skips
            levels, tap_channels = sam_taps
            proj = scaled(list(reversed(self.decoder_channels)), self.width)
            self.sam = SamPyramid(tap_channels, list(levels), proj)
            chans = [c + p for c, p in zip(chans, proj, strict=True)]
        self.build_decoder(
            chans,
            max(1, image_side // self.encoder.reductions[0]),
            n_outputs,
            out_size,
            bridge_in=self.encoder.channels[-1],
        )
        self.info |= {"encoder": backbone, "input_space": input_space, **self.encoder.init_info}
        if self.sam is not None:
            self.info["sam_levels"] = self.sam.levels

    @classmethod
    def from_shapes(cls, *, n_outputs: int, input_shapes: Mapping[str, Any], **kwargs: Any):
        check_head_args(cls, kwargs)
        side = int(input_shapes["image"][-1])
        return cls(n_outputs, output_size(input_shapes), side, **kwargs)

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        skips = self.encoder(image_input(batch["image"], self.input_space))
        bridge_source = skips[-1]
        if self.sam is not None:
            skips = fuse(skips, self.sam(batch["taps"]))
        return {"logits": self.decode(skips, bridge_source)}


@register_head("aernet_sam")
class AerNetSam(AerNet):
    """AER-Net's backbone and decoder, each skip concatenated with the SAM level of its stride
    (the method's four taps, fine to coarse, or ``head_args.levels``)."""

    requires: ClassVar[frozenset[str]] = frozenset({"image", "taps"})

    @classmethod
    def from_shapes(
        cls,
        *,
        n_outputs: int,
        input_shapes: Mapping[str, Any],
        levels: Sequence[str] | None = None,
        **kwargs: Any,
    ):
        check_head_args(cls, kwargs)
        n_skips = len(kwargs.get("decoder_channels", DECODER))
        chosen = pyramid_levels(input_shapes, levels, n_skips)
        taps = input_shapes["taps"]
        side = int(input_shapes["image"][-1])
        sam = (chosen, {t: int(taps[t][0]) for t in chosen})
        return cls(n_outputs, output_size(input_shapes), side, sam, **kwargs)


@register_head("sam_aernet")
class SamAerNet(AerFamily):
    """The AER-Net decoder on the frozen SAM pyramid: skip levels fine to coarse, then the
    bridge level (the method's taps in order, or ``head_args.levels``)."""

    requires: ClassVar[frozenset[str]] = frozenset({"taps"})

    def __init__(
        self,
        n_outputs: int,
        out_size: tuple[int, int],
        tap_shapes: Mapping[str, Sequence[int]],
        *,
        levels: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        widths = scaled(self.decoder_channels, self.width)
        self.pyramid = SamPyramid.under_decoder(tap_shapes, levels, widths)
        proj = self.pyramid.widths
        self.build_decoder(
            proj[:-1],
            self.pyramid.finest_grid,
            n_outputs,
            out_size,
            bridge_in=proj[-1],
            pool_bridge=False,
        )
        self.info |= {"encoder": "sam pyramid", "levels": self.pyramid.levels}

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        levels = self.pyramid(batch["taps"])
        return {"logits": self.decode(levels[:-1], levels[-1])}
