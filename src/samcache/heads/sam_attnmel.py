"""Seed 001's attention module on cached SAM features (a variant the paper does not have).

Reading: the frozen SAM image encoder takes the place of VGG-16. Its tapped maps play both roles
of Fig. 1: the method's taps listed before the last are the intermediate maps F (pool-3 and
pool-4 in the paper), the last tap is the global guide G (pool-5). With seed 000's ViT-H taps the
real configuration uses ``block:16`` and ``block:32`` as F and the ``neck`` as G; the demo uses
``block:2``, ``block:4`` and ``neck``. Nothing but the gates and the classifier is trained, so a
run reads the cache only and never the encoder. ``head_args.intermediate`` and ``guide`` choose
other taps.

Every tap is first standardised per channel with a batch norm without affine parameters: SAM's
block outputs are not ReLU features like VGG's and their channels differ in scale by orders of
magnitude, which would otherwise let a few channels dominate ``W_f * F`` and the pooled vector.

SAM encodes an image resized so its longer side fits the encoder and zero-padded at the bottom
and right to a square, so tap maps cover that padded square. The ROI reference is padded the
same way before it is averaged down to the map size, and the Jaccard evaluation crops the padded
rows or columns off the attention maps (``attention_frame = "sam_square"``). For square stores
both are no-ops.

Registered: ``sam_attnmel`` (attention, focal loss only), ``sam_attnmel_lesion``,
``sam_attnmel_dermo``, ``sam_attnmel_bkg`` (eq. 5 with that ROI) and ``sam_mel`` (the Mel-CNN
ablation: GAP of the same taps without attention). ``roi_weights`` default to seed 001's
λ1 = 0.001 for every intermediate map but the deepest and λ2 = 0.01 for the deepest.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from samcache.heads.attention_gate import AttentionGate, RoiRegularised, gap
from samcache.heads.attnmel import linear_classifier
from samcache.heads.base import check_head_args, register_head


def map_name(tap: str) -> str:
    """A tap name as a module key and metric suffix: ``block:16`` -> ``block16``."""
    return re.sub(r"[^a-z0-9_]", "", tap.split("@")[0].lower())


def pad_to_square(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) zero-padded at the bottom or right to (B, C, S, S), S = max(H, W)."""
    h, w = x.shape[-2:]
    s = max(h, w)
    return F.pad(x, (0, s - w, 0, s - h)) if (h, w) != (s, s) else x


class SamAttnMel(RoiRegularised):
    requires: ClassVar[frozenset[str]] = frozenset({"taps"})
    attention_frame: ClassVar[str] = "sam_square"
    use_attention: ClassVar[bool] = True
    unused_args = frozenset({"roi_weights", "roi_attributes"})  # no ROI: focal loss alone

    def __init__(
        self,
        n_outputs: int,
        tap_channels: Mapping[str, int],
        *,
        intermediate: Sequence[str] | None = None,
        guide: str | None = None,
        attn_channels: int = 256,
        roi_weights: Sequence[float] | None = None,
        roi_attributes: Sequence[int] | None = None,
        focal_gamma: float = 2.0,
        focal_alpha: float | None = None,
    ) -> None:
        super().__init__()
        taps = list(tap_channels)
        self.guide = guide or taps[-1]
        self.intermediate = list(intermediate or [t for t in taps if t != self.guide])
        for t in [*self.intermediate, self.guide]:
            if t not in tap_channels:
                raise ValueError(
                    f"head_args names tap '{t}', but the method reads only {taps}; "
                    "add it to the method's 'taps'"
                )
        if not self.intermediate:
            raise ValueError("sam_attnmel needs at least one intermediate tap besides the guide")
        used = [*self.intermediate, self.guide]
        self.norms = nn.ModuleDict(
            {map_name(t): nn.BatchNorm2d(tap_channels[t], affine=False) for t in used}
        )
        g = tap_channels[self.guide]
        if self.use_attention:
            self.gates = nn.ModuleDict(
                {
                    map_name(t): AttentionGate(tap_channels[t], g, attn_channels)
                    for t in self.intermediate
                }
            )
        self.fc = linear_classifier(sum(tap_channels[t] for t in used), n_outputs)
        n = len(self.intermediate)
        default = (0.001,) * (n - 1) + (0.01,)
        self.roi_weights = tuple(float(w) for w in (roi_weights or default))
        if len(self.roi_weights) != n:
            raise ValueError(
                f"head_args.roi_weights needs one weight per intermediate tap {self.intermediate}"
            )
        self.roi_attribute_index = None if roi_attributes is None else tuple(roi_attributes)
        self.focal_gamma, self.focal_alpha = float(focal_gamma), focal_alpha
        self.info = {"intermediate": self.intermediate, "guide": self.guide}

    @classmethod
    def from_shapes(
        cls, *, n_outputs: int, input_shapes: Mapping[str, Any], **kwargs: Any
    ) -> SamAttnMel:
        check_head_args(cls, kwargs)
        taps = input_shapes.get("taps") or {}
        if len(taps) < 2:
            raise ValueError(
                f"{cls.__name__} needs at least two taps (intermediate maps and a guide); "
                f"the method reads {list(taps)}"
            )
        return cls(n_outputs, {t: int(s[0]) for t, s in taps.items()}, **kwargs)

    def roi_frame(self, reference: torch.Tensor) -> torch.Tensor:
        return pad_to_square(reference)

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        taps = batch["taps"]
        g = self.norms[map_name(self.guide)](taps[self.guide])
        pooled, attention = [], {}
        for t in self.intermediate:
            key = map_name(t)
            f = self.norms[key](taps[t])
            if self.use_attention:
                f, attention[key] = self.gates[key](f, g)
            pooled.append(gap(f))
        pooled.append(gap(g))
        out = {"logits": self.fc(torch.cat(pooled, 1))}
        if self.use_attention:
            out["attention"] = attention
        return out


register_head("sam_attnmel")(SamAttnMel)


@register_head("sam_attnmel_lesion")
class SamAttnMelLesion(SamAttnMel):
    roi = "lesion"
    unused_args = frozenset({"roi_attributes"})
    requires = frozenset({"taps", "lesion_mask"})


@register_head("sam_attnmel_dermo")
class SamAttnMelDermo(SamAttnMel):
    roi = "dermo"
    unused_args = frozenset()
    requires = frozenset({"taps", "attributes"})


@register_head("sam_attnmel_bkg")
class SamAttnMelBkg(SamAttnMel):
    roi = "background"
    unused_args = frozenset({"roi_attributes"})
    requires = frozenset({"taps", "lesion_mask"})


@register_head("sam_mel")
class SamMel(SamAttnMel):
    use_attention = False
    unused_args = frozenset({"attn_channels", "roi_weights", "roi_attributes"})
