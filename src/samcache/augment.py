"""Geometric augmentation applied consistently to an image and every spatial map paired with it.

One random flip/crop (and, with ``rot90``, a quarter turn) is drawn per sample and expressed as
an affine sampling grid in normalised coordinates; every spatial input of that sample (image, tapped feature maps of any grid size,
masks, superpixel labels) is resampled with the same grid, bilinearly for continuous values and
by nearest neighbour for labels and masks. A crop keeps ``crop_scale`` of the area (uniformly
drawn) at a random position and is resized back to each map's own size, so shapes never change.
``rot90`` turns by 0, 90, 180 or 270 degrees (seed 001's authors' ``RandomRotate``); on square
maps that is an exact permutation of the pixels, of a mask's labels and of a tap's grid cells.

The frozen encoder ran on the un-augmented image; transforming its feature maps with the image
is the cache's stand-in for re-encoding the augmented image (exact for flips of a
flip-equivariant map, approximate otherwise) and keeps the maps aligned with the pixels.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

#: How each spatial batch key is resampled. ``taps`` is a dict of maps.
SPATIAL = {
    "image": "bilinear",
    "taps": "bilinear",
    "lesion_mask": "nearest",
    "attributes": "nearest",
    "superpixels": "nearest",
    "sam_prior": "bilinear",
}


@dataclass(frozen=True)
class AugmentSpec:
    hflip: bool = True
    vflip: bool = True
    crop_scale: tuple[float, float] = (0.8, 1.0)
    rot90: bool = False

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | bool | None) -> AugmentSpec | None:
        if cfg is None or cfg is False:
            return None
        if cfg is True:
            return cls()
        return cls(
            hflip=cfg.get("hflip", True),
            vflip=cfg.get("vflip", True),
            crop_scale=tuple(cfg.get("crop_scale", (0.8, 1.0))),
            rot90=cfg.get("rot90", False),
        )


def random_affine(batch_size: int, spec: AugmentSpec, generator: torch.Generator) -> torch.Tensor:
    """(B, 2, 3) affine matrices mapping output to input coordinates in [-1, 1]."""
    u = torch.rand(batch_size, 5, generator=generator)
    lo, hi = spec.crop_scale
    side = torch.sqrt(lo + (hi - lo) * u[:, 0])  # fraction of each side kept
    cx = (1 - side) * (2 * u[:, 1] - 1)
    cy = (1 - side) * (2 * u[:, 2] - 1)
    fx = torch.where((u[:, 3] < 0.5) & spec.hflip, -1.0, 1.0)
    fy = torch.where((u[:, 4] < 0.5) & spec.vflip, -1.0, 1.0)
    theta = torch.zeros(batch_size, 2, 3)
    theta[:, 0, 0] = side * fx
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = side * fy
    theta[:, 1, 2] = cy
    if spec.rot90:  # drawn after the rest, so runs without it keep their random stream
        k = torch.randint(0, 4, (batch_size,), generator=generator)
        cos = torch.tensor([1.0, 0.0, -1.0, 0.0])[k]
        sin = torch.tensor([0.0, 1.0, 0.0, -1.0])[k]
        rot = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
        theta[:, :, :2] = theta[:, :, :2] @ rot
    return theta


def warp(x: torch.Tensor, theta: torch.Tensor, mode: str) -> torch.Tensor:
    """Resample (B, C, H, W) or (B, H, W) maps with per-sample affine matrices."""
    squeeze = x.ndim == 3
    xf = x[:, None] if squeeze else x
    dtype = xf.dtype
    xf = xf.float()
    grid = F.affine_grid(theta.to(xf.device), list(xf.shape), align_corners=False)
    out = F.grid_sample(xf, grid, mode=mode, padding_mode="border", align_corners=False)
    out = out.to(dtype) if not dtype.is_floating_point else out.to(dtype)
    return out[:, 0] if squeeze else out


def augment(batch: dict[str, Any], spec: AugmentSpec, generator: torch.Generator) -> dict[str, Any]:
    """The batch with one random flip/crop/turn per sample applied to every spatial input."""
    keys = [k for k in SPATIAL if k in batch]
    if not keys:
        return batch
    n = len(batch["label"])
    theta = random_affine(n, spec, generator)
    out = dict(batch)
    for k in keys:
        if k == "taps":
            out[k] = {name: warp(v, theta, SPATIAL[k]) for name, v in batch[k].items()}
        else:
            out[k] = warp(batch[k], theta, SPATIAL[k])
    return out
