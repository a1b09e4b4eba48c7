"""Per-image test predictions of a run: in its record, and in a prediction store beside it.

Every run keeps what it predicted for each test image, so that any metric can be recomputed
(``samcache rescore``), two methods compared image by image (``samcache.compare``) and
predictions shown (``samcache.gallery``) without training again.

In the record (``record["predictions"]``, JSON): the test ``items`` (dataset-store indices, in
order), their ``labels``, the class ``probabilities`` (float32 values, written as the shortest
decimal that reads back as the same float32, so a recomputed metric equals the recorded one
exactly) and ``per_image`` values of the metrics that are means over images (``jaccard_<map>``
of attention heads).

Beside the record (``<record name>.zarr``, for heads that produce images): ``items`` (N,),
``maps/<name>`` (N, h, w) float32, the attention maps and CAM as the head gives them (before any
upsampling; ``attrs["frame"]`` says which region of the image they cover, see
``samcache.localisation``), and ``masks/<name>`` (N, H, W) uint8, predicted masks of
segmentation heads (``attrs["mask_targets"]`` names the store mask each is compared with). The
record holds the store's name and a digest of its arrays, the store holds the same digest: a
store that does not belong to its record is an error, never read. A store is built aside and
renamed into place before its record is written; ``samcache.sweep`` moves both together.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from samcache.sweep import companion_path, write_json_atomic

PREDICTION_STORE_FORMAT = 1


def shortest_float32(values: np.ndarray) -> list:
    """Nested lists of the shortest decimals that read back as the same float32 values."""
    arr = np.asarray(values, dtype=np.float32)
    if arr.ndim == 0:
        return float(str(arr[()]))
    return [shortest_float32(v) for v in arr]


def arrays_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 of arrays by name, dtype, shape and bytes: the same arrays, the same digest."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def record_predictions(
    items: np.ndarray,
    labels: np.ndarray,
    probabilities: np.ndarray,
    per_image: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """The ``predictions`` entry of a record (the store fields are filled in by ``write_run``)."""
    return {
        "split": "test",
        "items": [int(i) for i in np.asarray(items)],
        "labels": np.asarray(labels).tolist(),
        "probabilities": shortest_float32(probabilities),
        "per_image": {k: [float(x) for x in np.asarray(v)] for k, v in (per_image or {}).items()},
        "store": None,
        "store_digest": None,
    }


def _remove_dir(path: Path) -> None:
    """Renamed aside first, so that ``path`` is gone at once even if the deletion is cut off."""
    if path.exists():
        aside = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, aside)
        shutil.rmtree(aside)


def write_prediction_store(
    path: str | Path,
    items: np.ndarray,
    *,
    maps: Mapping[str, np.ndarray] | None = None,
    masks: Mapping[str, np.ndarray] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> str:
    """Write a prediction store at ``path`` (built aside, then renamed); returns its digest."""
    from samcache.zarrio import DEFAULT_COMPRESSOR, open_group

    path = Path(path)
    arrays = {"items": np.asarray(items, dtype=np.int64)}
    for prefix, group in (("maps", maps or {}), ("masks", masks or {})):
        for name, arr in group.items():
            arr = np.asarray(arr, dtype=np.float32 if prefix == "maps" else np.uint8)
            if arr.shape[0] != len(arrays["items"]):
                raise ValueError(
                    f"{prefix}/{name}: {arr.shape[0]} predictions for {len(arrays['items'])} items"
                )
            arrays[f"{prefix}/{name}"] = arr
    digest = arrays_digest(arrays)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    g = open_group(tmp, "w")
    for name, arr in arrays.items():
        chunks = (min(64, max(1, arr.shape[0])), *arr.shape[1:])
        g.create_array(name, data=arr, chunks=chunks, compressors=DEFAULT_COMPRESSOR)
    g.attrs.update(
        {**dict(attrs or {}), "format": PREDICTION_STORE_FORMAT, "split": "test", "digest": digest}
    )
    _remove_dir(path)
    os.replace(tmp, path)
    return digest


def write_run(
    out: str | Path,
    record: dict[str, Any],
    *,
    maps: Mapping[str, np.ndarray] | None = None,
    masks: Mapping[str, np.ndarray] | None = None,
    store_attrs: Mapping[str, Any] | None = None,
) -> None:
    """Write a run's prediction store (when it has maps or masks), then its record.

    The record is validated first (``samcache.records``: a record that a table would refuse is
    never written). An earlier record at ``out`` is removed first: a record is never in place
    beside a store that is not its own.
    """
    from samcache.records import validate_record

    validate_record(json.loads(json.dumps(record)), out, check_path=False)
    out = Path(out)
    store = companion_path(out)
    out.unlink(missing_ok=True)
    pred = record.get("predictions")
    if pred is not None and (maps or masks):
        items = pred["items"]
        pred["store"] = store.name
        pred["store_digest"] = write_prediction_store(
            store,
            items,
            maps=maps,
            masks=masks,
            attrs={**dict(store_attrs or {}), "record": out.name},
        )
    else:
        _remove_dir(store)
    write_json_atomic(out, record)


# --- reading ---------------------------------------------------------------------------------


@dataclass
class Predictions:
    """A run's stored test predictions."""

    record: Path
    task_type: str
    items: np.ndarray
    labels: np.ndarray
    probabilities: np.ndarray
    per_image: dict[str, np.ndarray] = field(default_factory=dict)
    store: Path | None = None
    store_digest: str | None = None

    def open_store(self):
        """The prediction store beside the record (a zarr group), checked against the record."""
        from samcache.zarrio import StoreError, open_group

        if self.store is None:
            raise StoreError(f"{self.record}: this run has no prediction store (no maps or masks)")
        g = open_group(self.store, "r")
        if g.attrs.get("digest") != self.store_digest:
            raise StoreError(
                f"{self.store}: prediction store of another run (digest "
                f"{g.attrs.get('digest')}, its record {self.record} names {self.store_digest}); "
                "train the run again"
            )
        return g

    def maps(self) -> dict[str, np.ndarray]:
        """Attention maps and CAMs by name, (N, h, w) float32; {} without a store."""
        if self.store is None:
            return {}
        g = self.open_store()
        return {name: np.asarray(a[:]) for name, a in g["maps"].arrays()} if "maps" in g else {}


def load_predictions(rec: Mapping[str, Any], path: str | Path) -> Predictions:
    """The test predictions a record holds; an error naming the record when it has none."""
    path = Path(path)
    pred = rec.get("predictions")
    if not pred:
        raise ValueError(
            f"run record {path} holds no per-image predictions (written by an older samcache, "
            f"record schema {rec.get('schema')}); train the run again to compare or rescore it"
        )
    n = len(pred["items"])
    probs = np.asarray(pred["probabilities"], dtype=np.float32)
    labels = np.asarray(pred["labels"])
    if probs.shape[0] != n or labels.shape[0] != n:
        raise ValueError(f"run record {path}: predictions of {n} items hold {probs.shape[0]} rows")
    return Predictions(
        record=path,
        task_type=rec["task_type"],
        items=np.asarray(pred["items"], dtype=np.int64),
        labels=labels,
        probabilities=probs,
        per_image={k: np.asarray(v, dtype=np.float64) for k, v in pred["per_image"].items()},
        store=path.parent / pred["store"] if pred.get("store") else None,
        store_digest=pred.get("store_digest"),
    )
