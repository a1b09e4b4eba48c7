"""Geometric augmentation applied consistently to an image and every spatial map paired with it.

One random flip/crop (and, with ``rot90``, a quarter turn) is drawn per sample and expressed as
an affine sampling grid in normalised coordinates; every spatial input of that sample (image, tapped feature maps of any grid size,
masks, superpixel labels) is resampled with the same grid, bilinearly for continuous values and
by nearest neighbour for labels and masks. A crop keeps ``crop_scale`` of the area (uniformly
drawn) at a random position and is resized back to each map's own size, so shapes never change.
``rot90`` turns by 0, 90, 180 or 270 degrees (seed 001's authors' ``RandomRotate``); on square
maps that is an exact permutation of the pixels, of a mask's labels and of a tap's grid cells.

``crop_size`` (seed 001's authors' ``RandomCrop``) instead cuts a fixed ``crop_size`` square at a
random position and does not resize it: the head sees a smaller input than the store's, at the
store's scale, and evaluation sees the centre ``crop_size`` square (``evaluation_view``). Every
map is cut at its own grid by slicing, with the offset drawn in steps of the coarsest map's cell
so that the cut is exact for all of them; flips and quarter turns are then exact permutations.

The frozen encoder ran on the un-augmented image. How tapped SAM maps follow the image is the
run's ``tap_augment`` setting: ``warp`` transforms the cached maps with the image (SAM's features
of a flipped image are not the flipped features: an approximation, reported in
benchmarks/RESULTS.md); ``views`` draws only transforms whose taps the cache holds
(``samcache.views``) and reads those taps, exact; ``none`` leaves every input of a run that reads
taps unaugmented.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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
    "target": "nearest",  # a segmentation task's masks: they move with the image
}


@dataclass(frozen=True)
class AugmentSpec:
    hflip: bool = True
    vflip: bool = True
    crop_scale: tuple[float, float] = (0.8, 1.0)
    rot90: bool = False
    crop_size: int | None = None  # a fixed-size window, not resized (crop_scale then unused)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | bool | None) -> AugmentSpec | None:
        if cfg is None or cfg is False:
            return None
        if cfg is True:
            return cls()
        if "crop_size" in cfg and "crop_scale" in cfg:
            raise ValueError(
                "train.augment: crop_size (a fixed window, no resize) and crop_scale (a share of "
                "the area, resized back) exclude each other; keep one"
            )
        return cls(
            hflip=cfg.get("hflip", True),
            vflip=cfg.get("vflip", True),
            crop_scale=(1.0, 1.0)
            if "crop_size" in cfg
            else tuple(cfg.get("crop_scale", (0.8, 1.0))),
            rot90=cfg.get("rot90", False),
            crop_size=cfg.get("crop_size"),
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


def frame_side(batch: Mapping[str, Any]) -> int:
    """The side of the pixel frame a fixed-size crop is measured in (image, else a mask)."""
    for key in ("image", "target", "lesion_mask", "attributes", "superpixels", "sam_prior"):
        if key in batch:
            return int(batch[key].shape[-1])
    raise ValueError("augment.crop_size needs an image or mask in the batch to measure it in")


def _maps(batch: Mapping[str, Any]):
    """(key, tap or None, tensor) of every spatial map in the batch."""
    for k in SPATIAL:
        if k not in batch:
            continue
        if k == "taps":
            yield from ((k, t, v) for t, v in batch[k].items())
        else:
            yield k, None, batch[k]


def _put(out: dict[str, Any], key: str, tap: str | None, value: torch.Tensor) -> None:
    if tap is None:
        out[key] = value
    else:
        out[key] = {**out[key], tap: value}


def crop_unit(batch: Mapping[str, Any], side: int, size: int) -> int:
    """The offset step (in frame pixels) at which every map of the batch is cut exactly."""
    unit = 1
    for key, tap, x in _maps(batch):
        n = int(x.shape[-1])
        if side % n or (size * n) % side or x.shape[-2] != x.shape[-1]:
            raise ValueError(
                f"augment.crop_size {size} of a {side} px frame does not cut the {n} x {n} map "
                f"'{tap or key}' on its grid; use a crop size that every map's grid divides"
            )
        unit = max(unit, side // n)
    return unit


def crop_batch(batch: Mapping[str, Any], size: int, offsets: torch.Tensor) -> dict[str, Any]:
    """Every map of the batch cut to the ``size`` window at per-sample (row, col) ``offsets``."""
    side = frame_side(batch)
    out = dict(batch)
    for key, tap, x in _maps(batch):
        scale = x.shape[-1] / side
        w = round(size * scale)
        rows = [
            x[
                i,
                ...,
                round(r * scale) : round(r * scale) + w,
                round(c * scale) : round(c * scale) + w,
            ]
            for i, (r, c) in enumerate(offsets.tolist())
        ]
        _put(out, key, tap, torch.stack(rows))
    return out


def flip_turn(
    batch: Mapping[str, Any], fx: torch.Tensor, fy: torch.Tensor, k: torch.Tensor
) -> dict[str, Any]:
    """Per sample: horizontal flip where ``fx``, vertical where ``fy``, then k quarter turns
    (counter-clockwise, as ``torch.rot90``): exact permutations of every square map."""
    out = dict(batch)
    for key, tap, x in _maps(batch):
        ys = []
        for i in range(len(x)):
            y = x[i]
            if fx[i]:
                y = torch.flip(y, dims=[-1])
            if fy[i]:
                y = torch.flip(y, dims=[-2])
            ys.append(torch.rot90(y, int(k[i]), dims=(-2, -1)) if k[i] else y)
        _put(out, key, tap, torch.stack(ys))
    return out


def random_window(
    batch: Mapping[str, Any], spec: AugmentSpec, generator: torch.Generator
) -> dict[str, Any]:
    """A random ``crop_size`` window (no resize), flips and quarter turns: the authors' crop."""
    n = len(batch["label"])
    side, size = frame_side(batch), int(spec.crop_size)
    if size > side:
        raise ValueError(f"augment.crop_size {size} exceeds the {side} px input")
    unit = crop_unit(batch, side, size)
    u = torch.rand(n, 5, generator=generator)
    steps = (side - size) // unit + 1
    offsets = (u[:, 1:3] * steps).floor().clamp(max=steps - 1).long() * unit
    fx = (u[:, 3] < 0.5) & spec.hflip
    fy = (u[:, 4] < 0.5) & spec.vflip
    k = (
        torch.randint(0, 4, (n,), generator=generator)
        if spec.rot90
        else torch.zeros(n, dtype=torch.long)
    )
    return flip_turn(crop_batch(batch, size, offsets), fx, fy, k)


def evaluation_view(spec: AugmentSpec | None) -> Callable[[dict[str, Any]], dict[str, Any]] | None:
    """What evaluation does to a batch: the centre ``crop_size`` window, else nothing."""
    if spec is None or spec.crop_size is None:
        return None
    size = int(spec.crop_size)

    def centre(batch: dict[str, Any]) -> dict[str, Any]:
        side = frame_side(batch)
        unit = crop_unit(batch, side, size)
        off = ((side - size) // 2) // unit * unit
        return crop_batch(batch, size, torch.full((len(batch["label"]), 2), off))

    return centre


def augment(
    batch: dict[str, Any],
    spec: AugmentSpec,
    generator: torch.Generator,
    *,
    view_taps: Callable[[torch.Tensor, list[str]], dict[str, torch.Tensor]] | None = None,
) -> dict[str, Any]:
    """The batch with one random flip/crop/turn per sample applied to every spatial input.

    ``view_taps`` (``tap_augment: views``): the transform is drawn among flips and quarter turns
    only, applied exactly to the image and masks, and the taps become the cached taps of the
    drawn view (``view_taps(items, view names)``).
    """
    keys = [k for k in SPATIAL if k in batch]
    if not keys:
        return batch
    if view_taps is not None:
        from samcache.views import augment_by_views

        return augment_by_views(batch, spec, generator, view_taps)
    if spec.crop_size is not None:
        return random_window(batch, spec, generator)
    n = len(batch["label"])
    theta = random_affine(n, spec, generator)
    out = dict(batch)
    for k in keys:
        if k == "taps":
            out[k] = {name: warp(v, theta, SPATIAL[k]) for name, v in batch[k].items()}
        else:
            out[k] = warp(batch[k], theta, SPATIAL[k])
    return out
