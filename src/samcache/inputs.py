"""The inputs of a run: what a head ``requires``, read from the stores for the run's items.

Each input array is prepared once per process (``samcache.resident``): tapped maps stay float16
as cached, images and masks are uint8 at the head's input size, pooled taps float32. The run
takes the rows of its items from those resident blocks; a block that does not fit the process's
memory budget is instead read from Zarr batch by batch (``streamed``), with the next batch read
in a background thread while the current one trains. Both paths give the same values.

Batch tensors: ``pooled`` (B, D) float32, standardised with the training subsample's statistics;
``taps`` {name: (B, C, g, g) float32}; ``image`` (B, 3, S, S) float32 normalised with the
ImageNet mean and std (timm backbones' convention); ``lesion_mask`` (B, 1, S, S) and
``attributes`` (B, A, S, S) float32 in {0, 1}; ``superpixels`` (B, S, S) int64; ``sam_prior``
(B, 1, S, S) float32 in [0, 1] (SAMAug-C's cached prior maps); ``label``; for a segmentation
task, ``target`` (B, K, S, S) float32 in {0, 1}: the task's masks at the head's input size (the
same resident block as ``lesion_mask`` or ``attributes`` when a head reads those too).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from samcache.data.store import DatasetStore
from samcache.features.store import FeatureStore, read_items
from samcache.resident import Resident, ResidentCache

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


def _resize_labels(x: np.ndarray, size: int | None) -> np.ndarray:
    """(N, H, W) integer label maps resized by nearest neighbour, as int64."""
    if size is None or x.shape[-2:] == (size, size):
        return x.astype(np.int64)
    t = torch.from_numpy(x[:, None]).float()
    return F.interpolate(t, size=(size, size), mode="nearest-exact").long().numpy()[:, 0]


@dataclass(frozen=True)
class Source:
    """One prepared input array: its identity, how to read rows, and the bytes of one row."""

    key: tuple
    load: Callable[[np.ndarray], np.ndarray]
    row_bytes: int


def _row_bytes(shape: Sequence[int], itemsize: int) -> int:
    return int(np.prod(shape)) * itemsize


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
        cache: ResidentCache | None = None,
        target: str | None = None,
    ) -> None:
        self.requires = requires
        self.target = target  # a segmentation task's mask array (masks/lesion, masks/attributes)
        self.items = np.asarray(items)
        self.row = {int(i): r for r, i in enumerate(self.items)}
        self.labels = torch.from_numpy(np.asarray(labels)[self.items])
        self.taps = list(taps)
        self.image_size = image_size
        self.ds, self.fs = ds, features
        self.train_items = np.asarray(train_items)
        self.cache = cache if cache is not None else ResidentCache()
        if ({"taps", "pooled"} & requires) and features is None:
            raise ValueError("this head reads cached features but the run has no feature store")
        self.resident: dict[str, Resident] = {}
        self.streamed: dict[str, Source] = {}
        self.pooled: torch.Tensor | None = None
        try:
            self._open(requires, train_items, superpixels, sam_prior)
        except BaseException:
            self.close()
            raise

    # --- sources ------------------------------------------------------------------------------

    def _open(self, requires, train_items, superpixels, sam_prior) -> None:
        ds, fs, size = self.ds, self.fs, self.image_size
        side = size or ds.image_shape[0]
        sources: dict[str, Source] = {}
        if "taps" in requires:
            for t in self.taps:
                arr = fs.array(t)
                sources[f"taps/{t}"] = Source(
                    ("tap", str(fs.path), fs.key, t),
                    lambda idx, arr=arr: read_items(arr, idx),
                    _row_bytes(arr.shape[1:], arr.dtype.itemsize),
                )
        if "image" in requires:
            sources["image"] = Source(
                ("image", str(ds.path), ds.fingerprint, size),
                lambda idx: _resize_uint8(
                    np.ascontiguousarray(read_items(ds.images, idx).transpose(0, 3, 1, 2)),
                    size,
                    "bilinear",
                ),
                3 * side * side,
            )
        if "lesion_mask" in requires:
            self._need("lesion_mask")
            arr = ds.group["masks/lesion"]
            sources["lesion_mask"] = Source(
                ("lesion_mask", str(ds.path), ds.fingerprint, size),
                lambda idx, arr=arr: _resize_uint8(read_items(arr, idx)[:, None], size, "nearest"),
                side * side,
            )
        if "attributes" in requires:
            self._need("attributes")
            arr = ds.group["masks/attributes"]
            sources["attributes"] = Source(
                ("attributes", str(ds.path), ds.fingerprint, size),
                lambda idx, arr=arr: _resize_uint8(read_items(arr, idx), size, "nearest"),
                arr.shape[1] * side * side,
            )
        if self.target is not None:
            arr = ds.group[self.target]
            kind = "lesion_mask" if self.target == "masks/lesion" else "attributes"
            sources["target"] = Source(
                (kind, str(ds.path), ds.fingerprint, size),
                lambda idx, arr=arr, kind=kind: _resize_uint8(
                    read_items(arr, idx)[:, None]
                    if kind == "lesion_mask"
                    else read_items(arr, idx),
                    size,
                    "nearest",
                ),
                (1 if arr.ndim == 3 else arr.shape[1]) * side * side,
            )
        if "superpixels" in requires:
            if superpixels is None:
                raise ValueError(
                    "this head reads superpixels but the method names no superpixel set"
                )
            from samcache.features.superpixels import open_superpixels

            arr = open_superpixels(superpixels)
            sources["superpixels"] = Source(
                ("superpixels", str(superpixels), size),
                lambda idx, arr=arr: _resize_labels(read_items(arr, idx), size),
                side * side * 8,
            )
        if "sam_prior" in requires:
            if sam_prior is None:
                raise ValueError(
                    "this head reads SAMAug-C prior maps but the method names no sam_prior"
                )
            from samcache.features.sam_prior import open_sam_priors

            arr = open_sam_priors(sam_prior)
            sources["sam_prior"] = Source(
                ("sam_prior", str(sam_prior), size),
                lambda idx, arr=arr: _resize_float16(read_items(arr, idx)[:, None], size),
                side * side * 2,
            )
        for name, src in sources.items():
            block = self.cache.get(src.key, self.ds.n_items, self.items, src.load, src.row_bytes)
            if block is None:
                self.streamed[name] = src
            else:
                self.resident[name] = block
        if "pooled" in requires:
            self.pooled = self._pooled(train_items)

    def _pooled(self, train_items: np.ndarray) -> torch.Tensor:
        """Each tap averaged over space, concatenated, standardised on the training subsample."""
        parts = []
        for t in self.taps:
            arr = self.fs.array(t)
            src = Source(
                ("pooled", str(self.fs.path), self.fs.key, t),
                lambda idx, arr=arr: read_items(arr, idx).astype(np.float32).mean(axis=(2, 3)),
                arr.shape[1] * 4,
            )
            block = self.cache.get(src.key, self.ds.n_items, self.items, src.load, src.row_bytes)
            if block is None:
                parts.append(src.load(self.items))
            else:
                parts.append(block.take(self.items).cpu().numpy())
                self.cache.release(block)
        pooled = np.concatenate(parts, axis=1)
        tr = pooled[[self.row[int(i)] for i in train_items]]
        return torch.from_numpy((pooled - tr.mean(0)) / (tr.std(0) + 1e-6))

    def _need(self, key: str) -> None:
        if key == "lesion_mask" and not self.ds.has_lesion_mask:
            raise ValueError(f"{self.ds.path}: this head needs lesion masks and the store has none")
        if key == "attributes" and "masks/attributes" not in self.ds.group:
            raise ValueError(
                f"{self.ds.path}: this head needs attribute masks and the store has none"
            )

    @property
    def lazy(self) -> bool:
        """Whether any input is streamed from Zarr per batch instead of held resident."""
        return bool(self.streamed)

    def close(self) -> None:
        """Let the process's cache evict this run's blocks again."""
        for block in self.resident.values():
            self.cache.release(block)
        self.resident = {}

    def __enter__(self) -> RunInputs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- batches ------------------------------------------------------------------------------

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

    def _rows_of(self, name: str, items: np.ndarray) -> torch.Tensor:
        if name in self.resident:
            return self.resident[name].take(items)
        src = self.streamed[name]
        rows = src.load(items)
        self.cache.stats.add(str(src.key[0]), rows)
        return torch.from_numpy(np.ascontiguousarray(rows))

    def batch(self, items: np.ndarray) -> dict[str, object]:
        items = np.asarray(items)
        rows = np.array([self.row[int(i)] for i in items])
        out: dict[str, object] = {
            "label": self.labels[rows],
            "item": torch.as_tensor(np.array(items)),
        }
        if self.pooled is not None:
            out["pooled"] = self.pooled[rows]
        if "taps" in self.requires:
            out["taps"] = {t: self._rows_of(f"taps/{t}", items).float() for t in self.taps}
        for key in ("image", "target", "lesion_mask", "attributes", "superpixels", "sam_prior"):
            if key in self.resident or key in self.streamed:
                out[key] = self._to_tensor(key, self._rows_of(key, items))
        return out

    @staticmethod
    def _to_tensor(key: str, t: torch.Tensor) -> torch.Tensor:
        if key == "image":
            mean, std = IMAGENET_MEAN.to(t.device), IMAGENET_STD.to(t.device)
            return (t.float() / 255.0 - mean) / std
        if key == "superpixels":
            return t.long()
        return t.float()

    def view_taps(self) -> Callable[[object, Sequence[str]], dict[str, torch.Tensor]]:
        """The run's taps under the feature cache's views (``samcache.views``), for training
        items: ``(items, views) -> {tap: (B, C, g, g)}``, row i taken from view ``views[i]``.

        The views' arrays join the run's resident inputs (or stream, above the budget); the
        identity view is the run's own taps.
        """
        views = self.fs.views
        train = np.asarray(self.train_items)
        for t in self.taps:
            for v in views[1:]:
                name = f"taps/{t}/{v}"
                if name in self.resident or name in self.streamed:
                    continue
                arr = self.fs.array(t, v)
                src = Source(
                    ("tap", str(self.fs.path), self.fs.key, t, v),
                    lambda idx, arr=arr: read_items(arr, idx),
                    _row_bytes(arr.shape[1:], arr.dtype.itemsize),
                )
                block = self.cache.get(src.key, self.ds.n_items, train, src.load, src.row_bytes)
                if block is None:
                    self.streamed[name] = src
                else:
                    self.resident[name] = block

        def taps_under(items: object, names: Sequence[str]) -> dict[str, torch.Tensor]:
            items, names = np.asarray(items), np.asarray(names)
            missing = sorted(set(names.tolist()) - set(views))
            if missing:
                raise ValueError(
                    f"the feature cache holds no taps of views {missing} (it holds "
                    f"{list(views)}); add them to the feature set's views or draw no such "
                    "transform"
                )
            out = {}
            for t in self.taps:
                rows = None
                for v in dict.fromkeys(names.tolist()):
                    sel = np.flatnonzero(names == v)
                    part = self._rows_of(
                        f"taps/{t}" if v == views[0] else f"taps/{t}/{v}", items[sel]
                    )
                    if rows is None:
                        rows = part.new_empty((len(items), *part.shape[1:]))
                    rows[torch.from_numpy(sel).to(part.device)] = part
                out[t] = rows.float()
            return out

        return taps_under

    def lesion_masks(self, items: np.ndarray) -> np.ndarray:
        """Lesion masks of ``items`` at the stored size, as a boolean (N, H, W) array."""
        return self.stored_masks("masks/lesion", items)

    def stored_masks(self, name: str, items: np.ndarray) -> np.ndarray:
        """Masks ``name`` (``masks/lesion`` (N, H, W), ``masks/attributes`` (N, A, H, W)) of
        ``items`` at the stored size, boolean: what predictions are scored against."""
        arr = self.ds.group[name]
        src = Source(
            (f"{name}_stored", str(self.ds.path), self.ds.fingerprint),
            lambda idx: read_items(arr, idx) > 0,
            _row_bytes(arr.shape[1:], 1),
        )
        block = self.cache.get(src.key, self.ds.n_items, items, src.load, src.row_bytes)
        if block is None:
            return src.load(np.asarray(items))
        try:
            return block.take(items).cpu().numpy()
        finally:
            self.cache.release(block)


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
) -> Iterator[dict[str, object]]:
    """Batches over ``items``: in order, shuffled, or class-balanced by oversampling.

    When an input is streamed, the next batch is read in a background thread while the caller
    trains on the current one (the order is drawn up front, so prefetching changes no value).
    """
    items = np.asarray(items)
    if generator is None:
        order = torch.arange(len(items))
    elif oversample:
        rows = [inputs.row[int(i)] for i in items]
        order = class_balanced_order(inputs.labels[rows], generator)
    else:
        order = torch.randperm(len(items), generator=generator)
    chunks = [items[order[s : s + batch_size].numpy()] for s in range(0, len(order), batch_size)]
    if not inputs.streamed:
        for chunk in chunks:
            yield inputs.batch(chunk)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="prefetch") as pool:
        pending = pool.submit(inputs.batch, chunks[0]) if chunks else None
        for k in range(len(chunks)):
            batch = pending.result()
            pending = pool.submit(inputs.batch, chunks[k + 1]) if k + 1 < len(chunks) else None
            yield batch
