"""The dataset-store contract every source converts into.

Layout of ``<name>.zarr`` (Zarr v3)::

    images              (N, H, W, 3) uint8      one image per chunk
    split               (N,) uint8              0 = train, 1 = val, 2 = test
    labels/<task>       (N,) int64, or (N, K) uint8 for multi-label and segmentation tasks
    masks/lesion        (N, H, W) uint8         optional, 0/1
    masks/attributes    (N, A, H, W) uint8      optional, 0/1, names in attrs
    attrs: name, source, tasks {task: {type, classes[, mask]}}, attribute_names, image_size,
           sources [{url, file, md5|sha256, origin}], fingerprint, samcache_version

A task of type ``segmentation`` names its target with ``mask`` (``masks/lesion`` or
``masks/attributes``; ``classes`` names the channels). Its ``labels/<task>`` holds the
image-level presence of each channel (1 where the mask has a foreground pixel), computed from the
stored masks when the store is written: it is what a training fraction stratifies on
(``DatasetStore.stratify_on``), and an image-level multi-label target where one is wanted.

One store holds every task defined on its images (ISIC 2017's melanoma and seborrheic-keratosis
labels, the demo's binary and 5-grade labels), so the frozen encoder runs once per image set
rather than once per task. Everything downstream of this module is dataset-agnostic.

A store is written to a temporary sibling directory and renamed into place when complete, so an
interrupted conversion never leaves a directory that opens as a valid store.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from samcache import __version__
from samcache.integrity import require_sound
from samcache.zarrio import StoreError, atomic_dir_path, create_item_array, open_group

SPLITS = ("train", "val", "test")
TASK_TYPES = ("binary", "multiclass", "ordinal", "multilabel", "segmentation")
MASK_ARRAYS = ("masks/lesion", "masks/attributes")
STORE_FORMAT = 1
REBUILD_ADVICE = (
    "Rebuild it: delete the store and run snakemake again (rule dataset), or `samcache dataset`"
)


@dataclass(frozen=True)
class TaskInfo:
    """One prediction task defined on a store's images."""

    name: str
    type: str
    classes: tuple[str, ...]
    mask: str | None = None  # segmentation tasks: the mask array they predict

    @property
    def n_outputs(self) -> int:
        return len(self.classes)

    @property
    def medmnist_task(self) -> str:
        """The task string ``medmnist.Evaluator`` uses for the same metric conventions."""
        if self.type == "segmentation":
            raise ValueError(f"task '{self.name}' is a segmentation task; medmnist has none")
        return {
            "binary": "binary-class",
            "multiclass": "multi-class",
            "ordinal": "ordinal-regression",
            "multilabel": "multi-label, binary-class",
        }[self.type]


class DatasetStore:
    """A validated, read-only view of a dataset store."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.group = open_group(self.path, "r")
        self.attrs = dict(self.group.attrs)
        self._validate()

    def _fail(self, what: str) -> None:
        raise StoreError(f"{self.path}: {what}. {REBUILD_ADVICE}")

    def _validate(self) -> None:
        g = self.group
        for key in ("images", "split"):
            if key not in g:
                self._fail(f"missing array '{key}'")
        img = g["images"]
        if img.ndim != 4 or img.shape[-1] != 3 or img.dtype != np.uint8:
            self._fail(f"'images' must be (N, H, W, 3) uint8, found {img.shape} {img.dtype}")
        n = img.shape[0]
        if g["split"].shape != (n,):
            self._fail(f"'split' has shape {g['split'].shape}, expected ({n},)")
        tasks = self.attrs.get("tasks")
        if not isinstance(tasks, dict) or not tasks:
            self._fail("attribute 'tasks' is missing or empty")
        for name, info in tasks.items():
            if info.get("type") not in TASK_TYPES:
                self._fail(
                    f"task '{name}' has type {info.get('type')!r}, expected one of {TASK_TYPES}"
                )
            key = f"labels/{name}"
            if key not in g:
                self._fail(f"task '{name}' has no array '{key}'")
            shape = g[key].shape
            k = len(info["classes"])
            want = (n, k) if info["type"] in ("multilabel", "segmentation") else (n,)
            if shape != want:
                self._fail(f"'{key}' has shape {shape}, expected {want}")
            if info["type"] == "segmentation":
                self._validate_segmentation(name, info)
        h, w = img.shape[1:3]
        if "fingerprint" not in self.attrs:
            self._fail("attribute 'fingerprint' is missing")
        if "masks/lesion" in g and g["masks/lesion"].shape != (n, h, w):
            self._fail(f"'masks/lesion' has shape {g['masks/lesion'].shape}, expected {(n, h, w)}")
        if "masks/attributes" in g:
            a = len(self.attrs.get("attribute_names", []))
            if g["masks/attributes"].shape != (n, a, h, w):
                self._fail(
                    f"'masks/attributes' has shape {g['masks/attributes'].shape}, expected {(n, a, h, w)}"
                )
        require_sound(g, self.path, np.ones(n, dtype=bool), REBUILD_ADVICE)

    def _validate_segmentation(self, name: str, info: Mapping[str, object]) -> None:
        mask = info.get("mask")
        if mask not in MASK_ARRAYS:
            self._fail(
                f"segmentation task '{name}' has mask {mask!r}, expected one of {MASK_ARRAYS}"
            )
        if mask not in self.group:
            self._fail(f"segmentation task '{name}' needs the array '{mask}'")
        channels = 1 if mask == "masks/lesion" else self.group[mask].shape[1]
        if len(info["classes"]) != channels:  # type: ignore[arg-type]
            self._fail(
                f"segmentation task '{name}' names {len(info['classes'])} classes for {channels} mask channels"
            )  # type: ignore[arg-type]

    def compute_fingerprint(self) -> str:
        """The content hash of every array, recomputed from the stored values.

        The same hash as ``write_dataset_store`` records, in the same order: it reads every
        pixel, so it is checked where images are read anyway (before a cache is built or
        resumed, and by ``samcache verify``), not on every open.
        """
        g, h = self.group, hashlib.sha256()
        labels = sorted(g["labels"].array_keys()) if "labels" in g else []
        for key in ("images", "split", *(f"labels/{t}" for t in labels), *MASK_ARRAYS):
            if key not in g:
                continue
            arr = g[key]
            h.update(f"{key}:{arr.dtype.str}:{arr.shape}".encode())
            step = (arr.shards or arr.chunks)[0]
            for start in range(0, max(arr.shape[0], 1), step):
                h.update(np.ascontiguousarray(arr[start : start + step]).tobytes())
        return h.hexdigest()[:16]

    def verify_fingerprint(self) -> None:
        """Raise ``StoreError`` unless the stored values still hash to the recorded fingerprint."""
        actual = self.compute_fingerprint()
        if actual != self.fingerprint:
            raise StoreError(
                f"{self.path}: its contents hash to {actual}, not to its recorded fingerprint "
                f"{self.fingerprint}: images, labels or masks changed after it was built. "
                f"{REBUILD_ADVICE}"
            )

    # --- contents -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.attrs.get("name", self.path.stem))

    @property
    def fingerprint(self) -> str:
        return str(self.attrs["fingerprint"])

    @property
    def n_items(self) -> int:
        return int(self.group["images"].shape[0])

    @property
    def image_shape(self) -> tuple[int, int]:
        return tuple(self.group["images"].shape[1:3])  # type: ignore[return-value]

    @property
    def images(self):  # zarr.Array, indexed lazily
        return self.group["images"]

    @property
    def tasks(self) -> dict[str, TaskInfo]:
        return {
            k: TaskInfo(k, v["type"], tuple(v["classes"]), v.get("mask"))
            for k, v in self.attrs["tasks"].items()
        }

    def task(self, name: str) -> TaskInfo:
        tasks = self.tasks
        if name not in tasks:
            raise StoreError(f"{self.path}: no task '{name}'; it has {sorted(tasks)}")
        return tasks[name]

    def labels(self, task: str) -> np.ndarray:
        self.task(task)
        return np.asarray(self.group[f"labels/{task}"][:])

    def stratify_on(self, task: str) -> np.ndarray:
        """What a training fraction of ``task`` is stratified on, one row per item.

        The class labels of a classification task; for a segmentation task the presence of
        each mask channel, so that a subsample keeps images with each attribute in proportion.
        """
        return self.labels(task)

    def mask(self, task: str):  # zarr.Array, (N, H, W) or (N, A, H, W)
        """The mask array a segmentation task predicts."""
        info = self.task(task)
        if info.mask is None:
            raise StoreError(f"{self.path}: task '{task}' is a {info.type} task, not segmentation")
        return self.group[info.mask]

    def split(self) -> np.ndarray:
        return np.asarray(self.group["split"][:])

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split() == SPLITS.index(split))

    @property
    def has_lesion_mask(self) -> bool:
        return "masks/lesion" in self.group

    @property
    def attribute_names(self) -> tuple[str, ...]:
        return tuple(self.attrs.get("attribute_names", ()))


def _hash_update(h: hashlib._Hash, name: str, arr: np.ndarray) -> None:
    arr = np.ascontiguousarray(arr)
    h.update(f"{name}:{arr.dtype.str}:{arr.shape}".encode())
    h.update(arr.tobytes())


def _mask_presence(
    tasks: Mapping[str, Mapping[str, object]],
    labels: Mapping[str, np.ndarray],
    lesion_mask: np.ndarray | None,
    attributes: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """Per-channel presence (N, K) of each segmentation task not given labels of its own."""
    masks = {"masks/lesion": lesion_mask, "masks/attributes": attributes}
    out = {}
    for task, info in tasks.items():
        if info.get("type") != "segmentation" or task in labels:
            continue
        m = masks.get(str(info.get("mask")))
        if m is None:
            raise ValueError(
                f"segmentation task '{task}' names mask {info.get('mask')!r}, not given"
            )
        m = np.asarray(m)
        out[task] = (
            (m.reshape(len(m), 1, -1) if m.ndim == 3 else m.reshape(*m.shape[:2], -1))
            .any(axis=2)
            .astype(np.uint8)
        )
    return out


def write_dataset_store(
    path: str | Path,
    *,
    name: str,
    source: str,
    images: np.ndarray,
    split: np.ndarray,
    labels: Mapping[str, np.ndarray],
    tasks: Mapping[str, Mapping[str, object]],
    lesion_mask: np.ndarray | None = None,
    attributes: np.ndarray | None = None,
    attribute_names: Sequence[str] = (),
    extra_attrs: Mapping[str, object] | None = None,
    items_per_shard: int = 64,
) -> DatasetStore:
    """Write a complete store at ``path`` (replacing one that is there) and return it validated.

    The content fingerprint hashes every array, so a feature cache built from this store can
    later prove it was built from these exact pixels and labels.
    """
    path = Path(path)
    n = images.shape[0]
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be (N, H, W, 3) uint8, got {images.shape} {images.dtype}")
    split = np.asarray(split, dtype=np.uint8)
    if split.shape != (n,) or split.max(initial=0) > 2:
        raise ValueError("split must be (N,) with values 0 (train), 1 (val), 2 (test)")
    labels = {**labels, **_mask_presence(tasks, labels, lesion_mask, attributes)}
    tmp = atomic_dir_path(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        g = open_group(tmp, "w")
        h = hashlib.sha256()
        shard = max(1, min(items_per_shard, n))

        def put(key: str, arr: np.ndarray) -> None:
            a = create_item_array(
                g, key, n_items=n, item_shape=arr.shape[1:], dtype=arr.dtype, items_per_shard=shard
            )
            for start in range(0, n, shard):  # shard-aligned writes: no read-modify-write
                a[start : start + shard] = arr[start : start + shard]
            _hash_update(h, key, arr)

        put("images", images)
        g.create_array("split", data=split, chunks=(n,))
        _hash_update(h, "split", split)
        for task, values in sorted(labels.items()):
            values = np.asarray(values)
            g.create_array(f"labels/{task}", data=values, chunks=values.shape)
            _hash_update(h, f"labels/{task}", values)
        if lesion_mask is not None:
            put("masks/lesion", np.asarray(lesion_mask, dtype=np.uint8))
        if attributes is not None:
            put("masks/attributes", np.asarray(attributes, dtype=np.uint8))
        g.attrs.update(
            {
                "name": name,
                "source": source,
                "format": STORE_FORMAT,
                "tasks": {k: dict(v) for k, v in tasks.items()},
                "attribute_names": list(attribute_names),
                "image_size": list(images.shape[1:3]),
                "split_names": list(SPLITS),
                "split_counts": {s: int((split == i).sum()) for i, s in enumerate(SPLITS)},
                "fingerprint": h.hexdigest()[:16],
                "samcache_version": __version__,
                **dict(extra_attrs or {}),
            }
        )
        store = DatasetStore(tmp)  # validate before it becomes visible under its final name
        del store
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    except BaseException:  # a full disk, a bad array: leave nothing half-written behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return DatasetStore(path)
