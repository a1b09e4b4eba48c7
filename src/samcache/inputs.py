"""The inputs of a run: what a head ``requires``, read from the stores for the run's items.

Everything a run touches (the training subsample, validation and test items) is loaded once:
tapped maps stay float16 as cached, images and masks uint8 at the head's input size. When that
would exceed ``max_memory_gb`` the large arrays are instead read from Zarr batch by batch
(``lazy``), which costs I/O per epoch but keeps a run within a node's memory.

Batch tensors: ``pooled`` (B, D) float32, standardised with the training subsample's statistics;
``taps`` {name: (B, C, g, g) float32}; ``image`` (B, 3, S, S) float32 normalised with the
ImageNet mean and std (timm backbones' convention); ``lesion_mask`` (B, 1, S, S) and
``attributes`` (B, A, S, S) float32 in {0, 1}; ``superpixels`` (B, S, S) int64; ``sam_prior``
(B, 1, S, S) float32 in [0, 1] (SAMAug-C's cached prior maps); ``label``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from samcache.data.store import DatasetStore
from samcache.features.store import FeatureStore, read_items

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _resize_uint8(x: np.ndarray, size: int | None, mode: str) -> np.ndarray:
    """(N, C, H, W) uint8 resized to size x size (antialiased for images, nearest for labels)."""
    if size is None or x.shape[-2:] == (size, size):
        return x
    t = torch.from_numpy(x).float()
    if mode == "nearest":
        t = F.interpolate(t, size=(size, size), mode="nearest-exact")
    else:
        t = F.interpolate(
            t, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    return t.round().clamp(0, 255).to(torch.uint8).numpy()


def _resize_float16(x: np.ndarray, size: int | None) -> np.ndarray:
    """(N, C, H, W) float maps resized bilinearly (antialiased) to size x size, kept float16."""
    if size is None or x.shape[-2:] == (size, size):
        return x.astype(np.float16)
    t = F.interpolate(
        torch.from_numpy(x).float(),
        size=(size, size),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )
    return t.to(torch.float16).numpy()


class RunInputs:
    def __init__(
        self,
        ds: DatasetStore,
        requires: frozenset[str],
        items: np.ndarray,
        train_items: np.ndarray,
        *,
        labels: np.ndarray,
        features: FeatureStore | None = None,
        taps: Sequence[str] = (),
        superpixels: Path | str | None = None,
        sam_prior: Path | str | None = None,
        image_size: int | None = None,
        max_memory_gb: float = 4.0,
    ) -> None:
        self.requires = requires
        self.items = np.asarray(items)
        self.row = {int(i): r for r, i in enumerate(self.items)}
        self.labels = torch.from_numpy(np.asarray(labels)[self.items])
        self.taps = list(taps)
        self.image_size = image_size
        self.ds, self.fs = ds, features
        if ({"taps", "pooled"} & requires) and features is None:
            raise ValueError("this head reads cached features but the run has no feature store")
        self.lazy = self._estimate_bytes(superpixels) > max_memory_gb * 2**30
        self.data: dict[str, object] = {}
        if "pooled" in requires:
            pooled = np.concatenate(
                [
                    read_items(features.array(t), self.items).astype(np.float32).mean(axis=(2, 3))
                    for t in self.taps
                ],
                axis=1,
            )
            tr = pooled[[self.row[int(i)] for i in train_items]]
            self.data["pooled"] = torch.from_numpy((pooled - tr.mean(0)) / (tr.std(0) + 1e-6))
        if "taps" in requires:
            self.data["taps"] = {
                t: (features.array(t) if self.lazy else read_items(features.array(t), self.items))
                for t in self.taps
            }
        sources = {
            "image": lambda: ds.images,
            "lesion_mask": lambda: ds.group["masks/lesion"],
            "attributes": lambda: ds.group["masks/attributes"],
        }
        for key, get in sources.items():
            if key in requires:
                self._need(key)
                self.data[key] = get() if self.lazy else self._prepare(key, get(), self.items)
        if "superpixels" in requires:
            if superpixels is None:
                raise ValueError(
                    "this head reads superpixels but the method names no superpixel set"
                )
            from samcache.features.superpixels import open_superpixels

            arr = open_superpixels(superpixels)
            self.data["superpixels"] = (
                arr if self.lazy else self._prepare("superpixels", arr, self.items)
            )
        if "sam_prior" in requires:
            if sam_prior is None:
                raise ValueError(
                    "this head reads SAMAug-C prior maps but the method names no sam_prior"
                )
            from samcache.features.sam_prior import open_sam_priors

            arr = open_sam_priors(sam_prior)
            self.data["sam_prior"] = (
                arr if self.lazy else self._prepare("sam_prior", arr, self.items)
            )

    def _need(self, key: str) -> None:
        if key == "lesion_mask" and not self.ds.has_lesion_mask:
            raise ValueError(f"{self.ds.path}: this head needs lesion masks and the store has none")
        if key == "attributes" and "masks/attributes" not in self.ds.group:
            raise ValueError(
                f"{self.ds.path}: this head needs attribute masks and the store has none"
            )

    def _estimate_bytes(self, superpixels: Path | str | None) -> int:
        n = len(self.items)
        h, w = self.ds.image_shape
        side = self.image_size or h
        total = 0
        if "taps" in self.requires:
            for t in self.taps:
                total += n * int(np.prod(self.fs.array(t).shape[1:])) * 2
        if "image" in self.requires:
            total += n * 3 * side * side
        if "attributes" in self.requires:
            total += n * len(self.ds.attribute_names) * side * side
        if "sam_prior" in self.requires:
            total += n * side * side * 2
        return total

    def _prepare(self, key: str, arr, items: np.ndarray) -> np.ndarray:
        """Rows ``items`` of a store array, channels first, at the head's input size."""
        x = read_items(arr, items)
        if key == "sam_prior":
            return _resize_float16(x[:, None], self.image_size)
        if key == "image":
            x = x.transpose(0, 3, 1, 2)
        elif key in ("lesion_mask", "superpixels"):
            x = x[:, None]
        if key == "superpixels":
            size = self.image_size
            if size is not None and x.shape[-2:] != (size, size):
                x = (
                    F.interpolate(
                        torch.from_numpy(x).float(), size=(size, size), mode="nearest-exact"
                    )
                    .long()
                    .numpy()
                )
            return x[:, 0]
        return _resize_uint8(
            np.ascontiguousarray(x), self.image_size, "bilinear" if key == "image" else "nearest"
        )

    def input_shapes(self) -> dict[str, object]:
        b = self.batch(self.items[:1])
        return {
            k: (
                {t: tuple(v.shape[1:]) for t, v in b[k].items()}
                if k == "taps"
                else tuple(b[k].shape[1:])
            )
            for k in b
            if k not in ("label", "item")
        }

    def batch(self, items: np.ndarray) -> dict[str, object]:
        rows = np.array([self.row[int(i)] for i in items])
        out: dict[str, object] = {
            "label": self.labels[rows],
            "item": torch.as_tensor(np.array(items)),
        }
        for key, value in self.data.items():
            if key == "pooled":
                out[key] = value[rows]
            elif key == "taps":
                out[key] = {
                    t: torch.from_numpy(self._rows(v, rows, items)).float()
                    for t, v in value.items()
                }
            else:
                x = (
                    self._prepare(key, value, np.asarray(items))
                    if self.lazy and key != "pooled"
                    else value[rows]
                )
                out[key] = self._to_tensor(key, x)
        return out

    def _rows(self, v, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        if not self.lazy:
            return v[rows]
        return read_items(v, np.asarray(items))  # integer-array selection is 30x slower

    @staticmethod
    def _to_tensor(key: str, x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(x))
        if key == "image":
            return (t.float() / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        if key == "superpixels":
            return t.long()
        if key == "lesion_mask":
            return t.float()[:, :1] if t.ndim == 4 else t.float()
        return t.float()


def class_balanced_order(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Indices of one epoch with minority classes oversampled to the majority's count."""
    labels = labels.long()
    classes, counts = torch.unique(labels, return_counts=True)
    target = int(counts.max())
    picks = []
    for c in classes:
        members = torch.nonzero(labels == c).flatten()
        reps = torch.randint(len(members), (target,), generator=generator)
        picks.append(
            members[reps]
            if len(members) < target
            else members[torch.randperm(len(members), generator=generator)]
        )
    order = torch.cat(picks)
    return order[torch.randperm(len(order), generator=generator)]


def batches(
    inputs: RunInputs,
    items: np.ndarray,
    batch_size: int,
    *,
    generator: torch.Generator | None = None,
    oversample: bool = False,
):
    """Batches over ``items``: in order, shuffled, or class-balanced by oversampling."""
    items = np.asarray(items)
    if generator is None:
        order = torch.arange(len(items))
    elif oversample:
        rows = [inputs.row[int(i)] for i in items]
        order = class_balanced_order(inputs.labels[rows], generator)
    else:
        order = torch.randperm(len(items), generator=generator)
    for start in range(0, len(order), batch_size):
        yield inputs.batch(items[order[start : start + batch_size].numpy()])
