"""Recompute a table's metrics from the runs' stored predictions (``samcache rescore``).

For every record: ACC, AUC and AP from the stored class probabilities (``samcache.metrics``),
each attention map's Jaccard index from the maps in the prediction store against the dataset
store's lesion masks (from the stored per-image values when the dataset store is not at hand),
and any further scorer given as ``name=module:function``. A scorer is called as
``function(labels, scores)``: the positive class's probabilities (N,) for a binary task, the
(N, K) probabilities otherwise; this is how an external scorer, such as a challenge's official
one, runs on samcache's results. For a segmentation run the metrics come from the predicted masks
in its prediction store against the dataset store's masks (``samcache.segmentation``; each
channel named as its ``masks/<class>`` array, so the task-2 metrics keep their class names), and a
scorer is called as ``function(true_masks, predicted_masks)``, both boolean (N, K, H, W).
A recomputed metric that the record also holds must equal it:
a difference means the predictions are not those the metrics came from, and is an error that
names the record.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from samcache.metrics import compute_metrics
from samcache.predictions import Predictions, load_predictions

log = logging.getLogger(__name__)

Scorer = Callable[[np.ndarray, np.ndarray], float]
TOLERANCE = 1e-9


def parse_scorer(text: str) -> tuple[str, Scorer]:
    """``name=module:function`` to (name, function)."""
    name, sep, target = text.partition("=")
    module, colon, attr = target.partition(":")
    if not (sep and colon and name and module and attr):
        raise ValueError(f"--metric '{text}': expected name=module:function")
    try:
        return name, getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"--metric '{text}': cannot import {target} ({err})") from None


def jaccard_from_maps(pred: Predictions, dataset: str | Path) -> dict[str, np.ndarray]:
    """Per-image Jaccard index of every stored map against the dataset's lesion masks."""
    import torch

    from samcache.data.store import DatasetStore
    from samcache.features.store import read_items
    from samcache.localisation import binarise, jaccard_per_image, maps_to_mask_frame

    maps = pred.maps()
    if not maps:
        return {}
    frame = pred.open_store().attrs.get("frame", "image")
    masks = read_items(DatasetStore(dataset).group["masks/lesion"], pred.items) > 0
    out = {}
    for name, m in maps.items():
        up = maps_to_mask_frame(torch.from_numpy(m[:, None]), masks.shape[1:], frame).numpy()
        out[f"jaccard_{name}"] = jaccard_per_image(binarise(up), masks)
    return out


def masks_from_store(pred: Predictions, dataset: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A segmentation run's true and predicted masks, (N, K, H, W) boolean, in channel order."""
    from samcache.data.store import DatasetStore
    from samcache.features.store import read_items

    g = pred.open_store()
    targets = dict(g.attrs.get("mask_targets") or {})
    ds = DatasetStore(dataset)
    truth, predicted = [], []
    for name, target in targets.items():
        array, _, channel = target.partition(":")
        values = read_items(ds.group[array], pred.items)
        truth.append(values[:, int(channel)] if channel else values)
        predicted.append(np.asarray(g["masks"][name][:]))
    return np.stack(truth, axis=1) > 0, np.stack(predicted, axis=1) > 0


def rescore_segmentation(
    rec: Mapping[str, Any], pred: Predictions, scorers: Mapping[str, Scorer] | None
) -> dict[str, float]:
    from samcache.segmentation import segmentation_metrics

    dataset = rec.get("dataset_path")
    if not (pred.store is not None and dataset and Path(dataset).exists()):
        raise ValueError(
            f"{pred.record}: a segmentation run is rescored from its predicted masks and the "
            f"dataset store's masks; the dataset store {dataset} or the prediction store is "
            "missing"
        )
    truth, predicted = masks_from_store(pred, dataset)
    classes = list(pred.open_store().attrs.get("mask_targets") or {})  # masks_from_store's order
    out, _ = segmentation_metrics(predicted, truth, classes)
    for name, f in (scorers or {}).items():
        out[name] = float(f(truth, predicted))
    return out


def rescore_record(
    rec: Mapping[str, Any], path: str | Path, scorers: Mapping[str, Scorer] | None = None
) -> dict[str, float]:
    """The test metrics of one run, recomputed from its stored predictions."""
    pred = load_predictions(rec, path)
    if pred.task_type == "segmentation":
        return _checked(rec, path, rescore_segmentation(rec, pred, scorers))
    probs = pred.probabilities.astype(np.float64)
    out = compute_metrics(pred.labels, probs, pred.task_type)
    per_image = dict(pred.per_image)
    dataset = rec.get("dataset_path")
    if pred.store is not None and dataset and Path(dataset).exists():
        per_image |= jaccard_from_maps(pred, dataset)
    elif pred.store is not None:
        log.warning("%s: dataset store %s not found; Jaccard indices from the stored per-image "
                    "values", path, dataset)  # fmt: skip
    out |= {name: float(np.mean(v)) for name, v in per_image.items()}
    scores = probs[:, -1] if pred.task_type == "binary" else probs
    for name, f in (scorers or {}).items():
        out[name] = float(f(pred.labels, scores))
    return _checked(rec, path, out)


def _checked(rec: Mapping[str, Any], path: str | Path, out: dict[str, float]) -> dict[str, float]:
    """``out``, once every metric the record also holds is found equal to it."""
    recorded = rec.get("metrics", {}).get("test", {})
    for name, value in out.items():
        if name in recorded and not abs(recorded[name] - value) <= TOLERANCE:
            raise ValueError(
                f"run record {path}: its stored predictions give {name} = {value!r}, the record "
                f"says {recorded[name]!r}; the predictions are not those its metrics came from"
            )
    return out


def rescore_records(
    records: Sequence[dict[str, Any]], scorers: Mapping[str, Scorer] | None = None
) -> list[dict[str, Any]]:
    """Copies of ``records`` (as ``samcache.tables.load_records`` reads them) whose test
    metrics are recomputed from their predictions."""
    out = []
    for rec in records:
        test = rescore_record(rec, rec.get("_path", "?"), scorers)
        out.append({**rec, "metrics": {**rec["metrics"], "test": test}})
    return out
