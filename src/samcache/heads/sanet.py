"""Seed 003, SANet (superpixel attention network) for ISIC 2018 task 2's five attributes.

Every head here predicts the five attribute masks as five sigmoid channels and trains with the
paper's losses (``samcache.losses.sanet_loss``: the global balancing loss, eq. 7-9, or Table 2's
baseline 0.5 CE + 0.5 JAL). The paper's parts, as composed here (docs/heads-003.md):

* ``sanet_resunet``: ResUNet, a ResNet-101 (ImageNet) encoder under a U-Net decoder: the
  encoder's maps at strides 2, 4, 8 and 16 are the skips, the stride-32 map the bridge, plain
  conv blocks of widths 256, 128, 64, 32 and one skip-less block to the image's side, as
  segmentation_models_pytorch's U-Net on a ResNet;
* ``sanet``: ResUNet followed by the superpixel attention module: a 3x3 conv + BN + ReLU of the
  decoder's last map (F'), then ``P = w * [Unpool(Pool(F')) (+) F']`` (superpixel average pooling
  on the run's SLIC labels, eq. 1; ``superpixel_mode``: concatenation, the text, or sum, the
  equation) giving the five logits;
* ``shuffle`` (both, and the SAM rows): the random shuffle module: each training batch is
  doubled by a copy whose images, masks and superpixel maps are cut into ``shuffle_grid`` x
  ``shuffle_grid`` cells shuffled among neighbours (the same permutation for each), so that
  shuffled and original images are 1:1 in every batch; evaluation never shuffles;
* ``sam_sanet`` (new): the same decoder and superpixel attention module on the frozen SAM
  pyramid of cached taps; with ``shuffle`` the token grids are shuffled, not the image (SAM's
  features of a shuffled image would need the encoder): every tap, mask and label map moves by
  the same cells, which must therefore divide every tap's grid;
* ``sam_superpixel_probe`` (new): the cheapest head the cache allows: SAM's tokens pooled per
  superpixel (each tap standardised per channel), a small MLP to five logits per superpixel,
  unpooled to the pixels.

The Table 3 baselines (U-Net, DeepLab, DANet) are in ``samcache.heads.sanet_baselines``.
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
    TimmEncoder,
    check_space,
    image_input,
    pyramid_levels,
    scaled,
)
from samcache.heads.dense_blocks import Decoder, Stage, free_steps
from samcache.heads.superpixel_ops import (
    SuperpixelAttention,
    draw_region_permutation,
    shuffle_regions,
    superpixel_pool,
    superpixel_unpool,
)
from samcache.losses import check_sanet_loss, sanet_loss

DECODER = (256, 128, 64, 32)
SHUFFLE_GRID = 7  # the paper's 7 x 7 regions
SPATIAL = ("image", "target", "superpixels")


class SanetFamily(DenseHead):
    """The SANet losses and the random shuffle module, shared by every seed 003 head."""

    def __init__(
        self,
        *,
        loss: str = "gbl",
        gbl_gamma: float | None = None,
        gbl_theta: float | None = None,
        jaccard_form: str = "standard",
        class_weights: Sequence[float] | None = None,
        shuffle: bool = False,
        shuffle_grid: int | None = None,
    ) -> None:
        super().__init__()
        if loss != "gbl":
            given = (("gbl_gamma", gbl_gamma), ("gbl_theta", gbl_theta))
            unused = [k for k, v in given if v is not None]
            if unused:
                raise ValueError(
                    f"head_args.{unused[0]} sets the global balancing loss; head_args.loss is "
                    f"'{loss}', so it would change nothing. Remove it"
                )
        if shuffle_grid is not None and not shuffle:
            raise ValueError(
                "head_args.shuffle_grid sizes the random shuffle module; shuffle is false, so "
                "it would change nothing. Remove it"
            )
        self.loss_args = {
            "loss": loss,
            "gamma": 1.0 if gbl_gamma is None else float(gbl_gamma),
            "theta": 0.2 if gbl_theta is None else float(gbl_theta),
            "form": jaccard_form,
            "class_weights": None if class_weights is None else list(class_weights),
        }
        check_sanet_loss(**{k: v for k, v in self.loss_args.items() if k != "class_weights"})
        self.shuffle = bool(shuffle)
        self.shuffle_grid = int(shuffle_grid or SHUFFLE_GRID)
        self.family_info = {"loss": loss, "jaccard_form": jaccard_form, "shuffle": self.shuffle}
        if loss == "gbl":
            self.family_info |= {"gbl_gamma": self.loss_args["gamma"]}
            self.family_info |= {"gbl_theta": self.loss_args["theta"]}
        if self.shuffle:
            self.family_info["shuffle_grid"] = self.shuffle_grid

    def segmentation_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sanet_loss(logits, target, **self.loss_args)

    def loss(
        self, outputs: Mapping[str, Any], batch: Mapping[str, Any], task_type: str
    ) -> torch.Tensor:
        # a shuffled batch carries its own (doubled) masks
        merged = {**batch, "target": outputs["target"]} if "target" in outputs else batch
        return super().loss(outputs, merged, task_type)

    def mixed(self, batch: Mapping[str, Any]) -> Mapping[str, Any]:
        """In training with ``shuffle``: the batch followed by its shuffled copy."""
        if not (self.training and self.shuffle):
            return batch
        n = self.shuffle_grid
        perm = draw_region_permutation(len(batch["target"]), n).to(batch["target"].device)
        out = dict(batch)
        for key in SPATIAL:
            if key in batch:
                out[key] = torch.cat([batch[key], shuffle_regions(batch[key], perm, n)])
        if "taps" in batch:
            out["taps"] = {
                t: torch.cat([v, shuffle_regions(v, perm, n)]) for t, v in batch["taps"].items()
            }
        return out

    def outputs(self, logits: torch.Tensor, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        out = {"logits": logits}
        if self.training and self.shuffle:
            out["target"] = batch["target"]
        return out


class SuperpixelOutput(nn.Module):
    """The superpixel attention module on a decoder's last map: conv3-BN-ReLU (F'), then
    ``w * [Unpool(Pool(F')) (+) F']`` on the superpixel labels' grid."""

    def __init__(self, in_channels: int, n_outputs: int, mode: str) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
        )
        self.attention = SuperpixelAttention(in_channels, n_outputs, mode=mode)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != labels.shape[-2:]:
            x = F.interpolate(x, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        return self.attention(self.conv(x), labels)


def fit_output(logits: torch.Tensor, out_size: Sequence[int]) -> torch.Tensor:
    if tuple(logits.shape[-2:]) == tuple(out_size):
        return logits
    return F.interpolate(logits, size=tuple(out_size), mode="bilinear", align_corners=False)


@register_head("sanet_resunet")
class ResUNet(SanetFamily):
    """The paper's baseline ResUNet (Table 2, Table 3's "ResUNet" and "+ RSM")."""

    requires: ClassVar[frozenset[str]] = frozenset({"image"})
    pretrained_backbone = True
    attention = False

    def __init__(
        self,
        n_outputs: int,
        out_size: tuple[int, int],
        *,
        backbone: str = "resnet101",
        checkpoint: str | None = None,
        backbone_args: Mapping[str, Any] | None = None,
        decoder_channels: Sequence[int] = DECODER,
        width: float = 1.0,
        input_space: str = "imagenet",
        superpixel_mode: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if superpixel_mode is not None and not self.attention:
            raise ValueError(
                "head_args.superpixel_mode sets the superpixel attention module, which "
                f"{type(self).__name__} does not have (head 'sanet' has it). Remove it"
            )
        self.input_space = check_space(input_space)
        self.encoder = TimmEncoder(
            backbone,
            checkpoint=checkpoint,
            reductions=(2, 4, 8, 16, 32),
            backbone_args=backbone_args,
        )
        widths = scaled(list(decoder_channels), width)
        skips = list(reversed(self.encoder.channels[:-1]))
        # from stride 2 one skip-less block reaches the image's side
        self.decoder = Decoder(
            self.encoder.channels[-1], skips, widths, n_outputs, out_size, n_free=1
        )
        self.out_size = out_size
        self.sam = None
        if self.attention:  # the superpixel attention module gives the logits
            del self.decoder.head
            self.sam = SuperpixelOutput(widths[-1], n_outputs, superpixel_mode or "concat")
        self.info = {"backbone": backbone, **self.encoder.init_info, **self.family_info}
        if self.attention:
            self.info["superpixel_mode"] = superpixel_mode or "concat"

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        batch = self.mixed(batch)
        skips = self.encoder(image_input(batch["image"], self.input_space))
        bridge, skips = skips[-1], list(reversed(skips[:-1]))
        if self.sam is None:
            logits = self.decoder(bridge, skips)
        else:
            logits = self.sam(self.decoder.features(bridge, skips), batch["superpixels"])
        return self.outputs(fit_output(logits, self.out_size), batch)


@register_head("sanet")
class SANet(ResUNet):
    """ResUNet + the superpixel attention module (Table 3's "+ SAM" rows; with shuffle, SANet)."""

    requires: ClassVar[frozenset[str]] = frozenset({"image", "superpixels"})
    attention = True


@register_head("sam_sanet")
class SamSANet(SanetFamily):
    """The U-Net decoder and the superpixel attention module on the frozen SAM pyramid:
    ``levels`` fine to coarse, the last the bridge (seed 002's ``sam_aernet`` pyramid)."""

    requires: ClassVar[frozenset[str]] = frozenset({"taps", "superpixels"})

    def __init__(
        self,
        n_outputs: int,
        out_size: tuple[int, int],
        tap_shapes: Mapping[str, Sequence[int]],
        *,
        levels: Sequence[str] | None = None,
        decoder_channels: Sequence[int] = DECODER,
        bridge_channels: int = 512,
        width: float = 1.0,
        superpixel_mode: str = "concat",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        widths = scaled(list(decoder_channels), width)
        self.pyramid = SamPyramid.under_decoder(tap_shapes, levels, widths)
        proj, chosen = self.pyramid.widths, self.pyramid.levels
        if self.shuffle:
            check_token_cells(tap_shapes, chosen, self.shuffle_grid, out_size)
        bridge = scaled(bridge_channels, width)
        self.bridge = Stage(proj[-1], bridge)
        self.decoder = Decoder(
            bridge,
            list(reversed(proj[:-1])),
            widths,
            n_outputs,
            out_size,
            n_free=free_steps(self.pyramid.finest_grid, out_size[0]),
        )
        del self.decoder.head  # the superpixel attention module gives the logits
        self.sam = SuperpixelOutput(widths[-1], n_outputs, superpixel_mode)
        self.out_size = out_size
        self.info = {"levels": chosen, "superpixel_mode": superpixel_mode, **self.family_info}

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        batch = self.mixed(batch)
        levels = self.pyramid(batch["taps"])
        x = self.decoder.features(self.bridge(levels[-1]), list(reversed(levels[:-1])))
        logits = self.sam(x, batch["superpixels"])
        return self.outputs(fit_output(logits, self.out_size), batch)


def check_token_cells(
    tap_shapes: Mapping[str, Sequence[int]], taps: Sequence[str], n: int, out_size: Sequence[int]
) -> None:
    """Shuffled token cells must be whole on every grid, so that each level's cells are the
    pooled cells of the finer ones (and of the masks')."""
    sides = {t: int(tap_shapes[t][-1]) for t in taps} | {"masks": int(out_size[-1])}
    bad = {t: s for t, s in sides.items() if s % n}
    if bad:
        good = [
            k for k in range(2, min(sides.values()) + 1) if all(s % k == 0 for s in sides.values())
        ]
        raise ValueError(
            f"head_args.shuffle_grid: {n} x {n} cells do not divide the grids {bad} of a SAM "
            f"head's inputs (the token grid is shuffled, so every level must move whole cells); "
            f"choose one of {good or 'none: this pyramid cannot be shuffled'}"
        )


@register_head("sam_superpixel_probe")
class SamSuperpixelProbe(SanetFamily):
    """SAM's tokens averaged per superpixel -> an MLP -> five logits per superpixel -> pixels."""

    requires: ClassVar[frozenset[str]] = frozenset({"taps", "superpixels"})
    # superpixels already average whole regions: nothing to shuffle
    unused_args = frozenset({"shuffle", "shuffle_grid"})

    def __init__(
        self,
        n_outputs: int,
        out_size: tuple[int, int],
        tap_shapes: Mapping[str, Sequence[int]],
        *,
        probe_taps: Sequence[str] | None = None,
        hidden: int = 256,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.taps = pyramid_levels({"taps": tap_shapes}, probe_taps)
        channels = [int(tap_shapes[t][0]) for t in self.taps]
        self.norms = nn.ModuleList(nn.BatchNorm2d(c, affine=False) for c in channels)
        self.mlp = nn.Sequential(
            nn.Linear(sum(channels), hidden), nn.ReLU(inplace=True), nn.Linear(hidden, n_outputs)
        )
        self.out_size = out_size
        self.info = {"taps": self.taps, "hidden": hidden, **self.family_info}

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        labels = batch["superpixels"]
        n = int(labels.max()) + 1
        by_grid: dict[tuple[int, ...], list[torch.Tensor]] = {}  # pooled once per grid
        for t, norm in zip(self.taps, self.norms, strict=True):
            x = norm(batch["taps"][t])
            by_grid.setdefault(tuple(x.shape[-2:]), []).append(x)
        regions = torch.cat(
            [superpixel_pool(torch.cat(xs, 1), labels, n)[0] for xs in by_grid.values()], dim=-1
        )
        logits = superpixel_unpool(self.mlp(regions), labels, tuple(labels.shape[-2:]))
        return self.outputs(fit_output(logits, self.out_size), batch)
