"""How well attention maps localise the lesion: seed 001's Table 3 (Jaccard of binarised maps).

For every test image and every map a head exposes (``outputs["attention"]``, and the class
activation map of ``outputs["cam"]``), following the paper and its authors' evaluation code:

1. the map is upsampled bilinearly to the stored lesion mask's size (maps of SAM taps first lose
   the rows or columns that cover SAM's square padding);
2. it is min-max normalised to [0, 1] per image and binarised at 0.5 (``>= 0.5``); a constant
   map has no region singled out and binarises to all zeros;
3. the Jaccard index ``|P ∩ M| / |P ∪ M|`` with the lesion mask M is computed per image (1 when
   both are empty), and the index is averaged over the images.

The CAM is taken for the positive class of a binary task (melanoma; the authors' choice) and for
the predicted class otherwise. Results go into the run record's test metrics as
``jaccard_<map>``: ``jaccard_pool3``, ``jaccard_pool4``, ``jaccard_cam``, ``jaccard_block16``;
the per-image indices and the maps themselves are kept too (``samcache.predictions``).

The authors' CAM evaluation takes the other order: the CAM is min-max normalised and binarised
at its own 7 x 7 resolution, the binary map is resized bilinearly to the mask (which leaves soft
values along its borders), and the Jaccard index is the fuzzy one, ``Σ min(P, M) / Σ max(P, M)``
(equal to the binary index for binary maps). The CAM is scored both ways: ``jaccard_cam`` (the
procedure of every other map) and ``jaccard_cam_binarised_first`` (the authors' order); a table
names the one it shows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from samcache.inputs import RunInputs


def binarise(maps: np.ndarray) -> np.ndarray:
    """(N, H, W) maps, each min-max normalised to [0, 1] and thresholded at 0.5."""
    maps = np.asarray(maps, dtype=np.float64)
    lo = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - lo
    norm = np.divide(maps - lo, span, out=np.zeros_like(maps), where=span > 0)
    return norm >= 0.5


def jaccard_per_image(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(N,) Jaccard index of boolean (N, H, W) maps; 1 where both maps are empty."""
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    inter = (pred & target).sum(axis=(1, 2))
    union = (pred | target).sum(axis=(1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def fuzzy_jaccard_per_image(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(N,) ``Σ min / Σ max`` of (N, H, W) maps in [0, 1]; 1 where both maps are empty."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    inter = np.minimum(pred, target).sum(axis=(1, 2))
    union = np.maximum(pred, target).sum(axis=(1, 2))
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 1.0)


def binarised_then_resized(maps: torch.Tensor, size: tuple[int, int], frame: str) -> np.ndarray:
    """(B, 1, h, w) maps binarised at their own resolution, then resized bilinearly to ``size``."""
    own = maps_to_mask_frame(maps, size, frame, resize=False)
    binary = torch.from_numpy(binarise(own.numpy()).astype(np.float32))[:, None]
    return F.interpolate(binary, size=size, mode="bilinear", align_corners=False)[:, 0].numpy()


def maps_to_mask_frame(
    maps: torch.Tensor, size: tuple[int, int], frame: str, *, resize: bool = True
) -> torch.Tensor:
    """(B, 1, h, w) maps as (B, H, W) over the mask's pixels (``frame``: "image"|"sam_square").

    ``resize=False`` only drops what lies outside the image (SAM's padding), at the map's grid.
    """
    if frame == "sam_square":  # the map covers the image padded to a square at bottom/right
        height, width = size
        side = max(height, width)
        h, w = maps.shape[-2:]
        maps = maps[..., : max(1, round(h * height / side)), : max(1, round(w * width / side))]
    elif frame != "image":
        raise ValueError(f"unknown attention frame '{frame}'")
    if not resize:
        return maps[:, 0].float()
    up = F.interpolate(maps.float(), size=size, mode="bilinear", align_corners=False)
    return up[:, 0]


def named_maps(outputs: Mapping[str, Any], task_type: str) -> dict[str, torch.Tensor]:
    """The (B, 1, h, w) maps to evaluate: attention maps by name, and ``cam``."""
    maps = dict(outputs.get("attention") or {})
    cam = outputs.get("cam")
    if cam is not None:
        if task_type == "binary":
            maps["cam"] = cam[:, -1:]
        else:
            k = outputs["logits"].argmax(dim=1)
            maps["cam"] = cam.gather(1, k[:, None, None, None].expand(-1, 1, *cam.shape[-2:]))
    return maps


def centre_window(masks: np.ndarray, crop: int, input_side: int | None) -> np.ndarray:
    """The centre window of (N, H, W) masks that a ``crop`` px centre crop of an input of side
    ``input_side`` (the store's side when None) covers."""
    side = masks.shape[-1]
    scale = side / (input_side or side)
    off, size = round((((input_side or side) - crop) // 2) * scale), round(crop * scale)
    return masks[:, off : off + size, off : off + size]


@torch.inference_mode()
def localisation_per_image(
    forward: Callable[[Mapping[str, Any]], Mapping[str, Any]],
    inputs: RunInputs,
    items: np.ndarray,
    *,
    task_type: str,
    batch_size: int,
    frame: str = "image",
    crop: int | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per exposed map: the (N,) Jaccard index of each of ``items`` and the (N, h, w) maps as
    the head gives them (float32, before any upsampling; the CAM of the class scored). The CAM
    is also scored in its authors' order (``cam_binarised_first``), which has no map of its own.

    ``crop``: the head was tested on the centre ``crop`` x ``crop`` window of its input (seed
    001's authors' protocol); the masks are cut to the same window of their own frame, so the
    maps are scored where the head saw the image (the authors' frame).

    Both are empty without maps or lesion masks.
    """
    if not inputs.ds.has_lesion_mask or len(items) == 0:
        return {}, {}
    items = np.asarray(items)
    scores: dict[str, list[np.ndarray]] = {}
    raw: dict[str, list[np.ndarray]] = {}
    all_masks = None
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        maps = named_maps(forward(inputs.batch(chunk)), task_type)
        if not maps:
            return {}, {}
        if all_masks is None:
            all_masks = inputs.lesion_masks(items)
        masks = all_masks[start : start + batch_size]
        if crop is not None:
            masks = centre_window(masks, crop, inputs.image_size)
        for name, m in maps.items():
            m = m.float().cpu()
            pred = binarise(maps_to_mask_frame(m, masks.shape[1:], frame).numpy())
            scores.setdefault(name, []).append(jaccard_per_image(pred, masks))
            raw.setdefault(name, []).append(m[:, 0].numpy())
            if name == "cam":  # the authors' order as well: binarise at 7 x 7, then resize
                soft = binarised_then_resized(m, masks.shape[1:], frame)
                first = fuzzy_jaccard_per_image(soft, masks)
                scores.setdefault("cam_binarised_first", []).append(first)
    return (
        {name: np.concatenate(v) for name, v in scores.items()},
        {name: np.concatenate(v) for name, v in raw.items()},
    )


def localisation_metrics(
    forward: Callable[[Mapping[str, Any]], Mapping[str, Any]],
    inputs: RunInputs,
    items: np.ndarray,
    *,
    task_type: str,
    batch_size: int,
    frame: str = "image",
    crop: int | None = None,
) -> dict[str, float]:
    """Mean Jaccard index per exposed map over ``items`` (``localisation_per_image``); {}
    without maps or lesion masks."""
    per_image, _ = localisation_per_image(
        forward, inputs, items, task_type=task_type, batch_size=batch_size, frame=frame, crop=crop
    )
    return {f"jaccard_{name}": float(v.mean()) for name, v in per_image.items()}
