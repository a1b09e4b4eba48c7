"""One training run: one head on one dataset task, at one training fraction and seed.

The run reads the dataset store and the feature cache, never the encoder. It trains with AdamW,
evaluates on the validation split after every epoch, keeps the epoch with the best validation
AUC (the earliest on ties), evaluates that epoch on the test split and writes a JSON record with
the metrics and everything needed to trace them: the method's full configuration, seed,
fraction, the digest of the training subsample, the code version and the cache key.

On a CPU the same seed gives the same record (up to wall time): every random draw comes from
generators seeded by the run's seed and torch runs deterministic kernels with the thread count
fixed by the configuration.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import platform
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from samcache import __version__, code_version
from samcache.data.fractions import fraction_subsample, subsample_digest
from samcache.data.store import DatasetStore, TaskInfo
from samcache.device import resolve_device
from samcache.features.store import FeatureStore
from samcache.heads import build_head, head_class
from samcache.metrics import compute_metrics

log = logging.getLogger(__name__)
RECORD_SCHEMA = 1


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 100
    lr: float = 1e-4  # seed 000
    weight_decay: float = 0.005  # seed 000
    batch_size: int = 32
    device: str = "auto"
    threads: int = 1
    select_metric: str = "auc"


def seed_everything(seed: int, threads: int) -> None:
    torch.manual_seed(seed)  # every other draw uses generators seeded explicitly
    torch.set_num_threads(max(1, threads))
    torch.use_deterministic_algorithms(True, warn_only=True)


def pooled_features(fs: FeatureStore, taps: Sequence[str], indices: np.ndarray) -> np.ndarray:
    """(len(indices), sum C) float32: each tap averaged over space, concatenated in tap order."""
    parts = [fs.read(t, indices).astype(np.float32).mean(axis=(2, 3)) for t in taps]
    return np.concatenate(parts, axis=1)


class RunData:
    """In-memory tensors of the inputs a head requires, for the train subset, val and test."""

    def __init__(
        self,
        ds: DatasetStore,
        fs: FeatureStore,
        task: TaskInfo,
        taps: Sequence[str],
        requires: frozenset[str],
        splits: Mapping[str, np.ndarray],
    ) -> None:
        unsupported = requires - {"pooled"}
        if unsupported:
            raise NotImplementedError(
                f"inputs {sorted(unsupported)} are not supported by this trainer yet"
            )
        labels = ds.labels(task.name)
        self.splits: dict[str, dict[str, torch.Tensor]] = {}
        pooled = {name: pooled_features(fs, taps, idx) for name, idx in splits.items()}
        mean = pooled["train"].mean(axis=0, keepdims=True)
        std = pooled["train"].std(axis=0, keepdims=True) + 1e-6
        for name, idx in splits.items():
            self.splits[name] = {
                "pooled": torch.from_numpy((pooled[name] - mean) / std),
                "label": torch.from_numpy(labels[idx]),
            }
        self.input_shapes = {"pooled": tuple(self.splits["train"]["pooled"].shape[1:])}

    def batches(self, split: str, batch_size: int, generator: torch.Generator | None = None):
        data = self.splits[split]
        n = len(data["label"])
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        for start in range(0, n, batch_size):
            sel = order[start : start + batch_size]
            yield {k: v[sel] for k, v in data.items()}


def _loss(task: TaskInfo, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if task.type == "multilabel":
        return nn.functional.binary_cross_entropy_with_logits(logits, labels.float())
    return nn.functional.cross_entropy(logits, labels.long())


def _probabilities(task: TaskInfo, logits: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(logits) if task.type == "multilabel" else torch.softmax(logits, dim=1)


@torch.inference_mode()
def evaluate(
    head: nn.Module,
    data: RunData,
    split: str,
    task: TaskInfo,
    device: torch.device,
    batch_size: int,
) -> dict[str, float]:
    head.eval()
    probs, labels = [], []
    for batch in data.batches(split, batch_size):
        out = head({k: v.to(device) for k, v in batch.items()})
        probs.append(_probabilities(task, out["logits"]).float().cpu())
        labels.append(batch["label"])
    return compute_metrics(torch.cat(labels).numpy(), torch.cat(probs).numpy(), task.type)


def train_run(
    *,
    dataset: str | Path,
    features: str | Path,
    task: str,
    method_name: str,
    method: Mapping[str, Any],
    fraction: float,
    seed: int,
    out: str | Path,
    expect_cache_key: str | None = None,
) -> dict[str, Any]:
    """Train and evaluate one run, write its record to ``out`` and return it."""
    t0 = time.perf_counter()
    started = datetime.now(UTC).isoformat(timespec="seconds")
    settings = TrainSettings(**dict(method.get("train", {})))
    seed_everything(seed, settings.threads)
    device = resolve_device(settings.device)

    ds = DatasetStore(dataset)
    info = ds.task(task)
    fs = FeatureStore(features, expect_key=expect_cache_key, expect_dataset=ds.fingerprint)
    taps = list(method.get("taps") or fs.taps)
    train_all = ds.indices("train")
    labels = ds.labels(task)
    subset = fraction_subsample(train_all, labels[train_all], fraction, seed)
    splits = {"train": subset, "val": ds.indices("val"), "test": ds.indices("test")}

    head_args = dict(method.get("head_args", {}))
    data = RunData(ds, fs, info, taps, head_class(method["head"]).requires, splits)
    head = build_head(
        method["head"], n_outputs=info.n_outputs, input_shapes=data.input_shapes, **head_args
    ).to(device)
    opt = torch.optim.AdamW(head.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    gen = torch.Generator().manual_seed(seed)

    history, best, best_state, best_epoch = [], -np.inf, None, -1
    for epoch in range(1, settings.epochs + 1):
        head.train()
        losses = []
        for batch in data.batches("train", settings.batch_size, gen):
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = _loss(info, head(batch)["logits"], batch["label"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        val = evaluate(head, data, "val", info, device, settings.batch_size)
        history.append(
            {
                "epoch": epoch,
                "train_loss": float(np.mean(losses)),
                **{f"val_{k}": v for k, v in val.items()},
            }
        )
        score = val[settings.select_metric]
        if np.isfinite(score) and score > best:
            best, best_epoch, best_state = score, epoch, copy.deepcopy(head.state_dict())
    if best_state is not None:
        head.load_state_dict(best_state)
    test = evaluate(head, data, "test", info, device, settings.batch_size)
    val = evaluate(head, data, "val", info, device, settings.batch_size)

    record = {
        "schema": RECORD_SCHEMA,
        "dataset": ds.name,
        "dataset_path": str(ds.path),
        "dataset_fingerprint": ds.fingerprint,
        "task": task,
        "task_type": info.type,
        "method": method_name,
        "config": dict(method),
        "train_settings": asdict(settings),
        "taps": taps,
        "fraction": fraction,
        "seed": seed,
        "n_train": int(len(subset)),
        "n_val": int(len(splits["val"])),
        "n_test": int(len(splits["test"])),
        "subsample_digest": subsample_digest(subset),
        "best_epoch": best_epoch,
        "metrics": {"test": test, "val": val},
        "history": history,
        "cache_key": fs.key,
        "features_path": str(fs.path),
        "code_version": code_version(),
        "samcache_version": __version__,
        "torch_version": torch.__version__,
        "device": str(device),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "started": started,
        "wall_time_s": round(time.perf_counter() - t0, 3),
    }
    write_json_atomic(out, record)
    return record


def write_json_atomic(path: str | Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=False) + "\n")
    tmp.replace(path)
