"""A dense head's predicted masks on a run's items, and their scores (seeds 002-004).

The head predicts logits at its input size; each channel's probability (sigmoid) is resized
bilinearly to the dataset store's mask size, binarised at ``> 0.5`` and scored there against the
stored masks (``samcache.segmentation``), so that runs at any input size are scored on the same
pixels. The binary masks go into the run's prediction store (``masks/<class>``, with
``attrs["mask_targets"]`` naming the store mask each is scored against), the per-image values
and confusion counts into its record.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from samcache.data.store import TaskInfo
from samcache.device import to_device
from samcache.inputs import RunInputs, batches
from samcache.segmentation import segmentation_metrics


@torch.inference_mode()
def predict_masks(
    head: torch.nn.Module,
    inputs: RunInputs,
    items: np.ndarray,
    size: tuple[int, int],
    device: torch.device,
    batch_size: int,
) -> np.ndarray:
    """(N, K, H, W) boolean masks of ``items`` at the stored mask ``size``."""
    head.eval()
    out = []
    for batch in batches(inputs, items, batch_size):
        prob = torch.sigmoid(head(to_device(batch, device))["logits"].float())
        if tuple(prob.shape[-2:]) != tuple(size):
            prob = F.interpolate(prob, size=tuple(size), mode="bilinear", align_corners=False)
        out.append((prob > 0.5).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 1, *size), dtype=bool)


def true_masks(inputs: RunInputs, task: TaskInfo, items: np.ndarray) -> np.ndarray:
    """(N, K, H, W) boolean masks the task's predictions are scored against."""
    masks = inputs.stored_masks(task.mask, items)
    return masks[:, None] if masks.ndim == 3 else masks


def evaluate_masks(
    head: torch.nn.Module,
    inputs: RunInputs,
    items: np.ndarray,
    task: TaskInfo,
    device: torch.device,
    batch_size: int,
) -> tuple[dict[str, float], dict[str, np.ndarray], np.ndarray]:
    """The run's segmentation metrics on ``items``, the per-image values, the predicted masks."""
    truth = true_masks(inputs, task, items)
    pred = predict_masks(head, inputs, items, truth.shape[-2:], device, batch_size)
    if pred.shape[1] != truth.shape[1]:
        raise ValueError(
            f"the head predicts {pred.shape[1]} mask channels, task '{task.name}' has "
            f"{truth.shape[1]}"
        )
    metrics, per_image = segmentation_metrics(pred, truth, task.classes)
    return metrics, per_image, pred


def mask_store_contents(
    task: TaskInfo, pred: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The prediction store's ``masks/<class>`` arrays and their ``mask_targets``."""
    masks, targets = {}, {}
    for k, name in enumerate(task.classes):
        masks[name] = pred[:, k].astype(np.uint8)
        targets[name] = task.mask if pred.shape[1] == 1 else f"{task.mask}:{k}"
    return masks, {"mask_targets": targets}
