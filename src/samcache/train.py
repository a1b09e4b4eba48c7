"""One training run: one head on one dataset task, at one training fraction and seed.

The run reads the dataset store and the feature cache, never the encoder. It trains with AdamW,
evaluates on the validation split after every epoch, keeps the epoch with the best validation
AUC (the earliest on ties; ``select_metric``), evaluates that epoch on the test split and writes a JSON record with
the metrics and everything needed to trace them: the method's full configuration, seed,
fraction, the digest of the training subsample, the code version and the cache key. The record
also keeps the per-image test predictions; attention maps go into a prediction store beside it
(``samcache.predictions``). A segmentation task trains a dense head (``Head.dense``) on the
task's masks (``target``) and scores its predicted masks (``samcache.mask_eval``): the record
holds the segmentation metrics, their per-image values and confusion counts, the store the
binary masks.

On a CPU the same seed gives the same record (up to wall time): every random draw comes from
generators seeded by the run's seed and torch runs deterministic kernels with the thread count
fixed by the configuration.
"""

from __future__ import annotations

import copy
import logging
import platform
import socket
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from samcache import __version__, code_version
from samcache.augment import augment, evaluation_view
from samcache.backbone_init import check_method
from samcache.data.fractions import fraction_subsample, subsample_digest
from samcache.data.store import DatasetStore, TaskInfo
from samcache.device import resolve_device, to_device
from samcache.features.sam_prior import stored_key
from samcache.features.store import FeatureStore
from samcache.heads import Head, build_head, head_class
from samcache.inputs import RunInputs, batches
from samcache.localisation import localisation_per_image
from samcache.mask_eval import evaluate_masks, mask_store_contents
from samcache.metrics import compute_metrics
from samcache.predictions import record_predictions, write_run
from samcache.resident import ResidentCache
from samcache.segmentation import SEGMENTATION_METRICS
from samcache.sweep import RECORD_SCHEMA, write_json_atomic
from samcache.views import augmentation_for_run

log = logging.getLogger(__name__)

__all__ = ["RECORD_SCHEMA", "TrainSettings", "make_optimizer", "train_run", "write_json_atomic"]


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 100
    lr: float = 1e-4  # seed 000
    weight_decay: float = 0.005  # seed 000
    batch_size: int = 32
    device: str = "auto"
    threads: int = 1
    select_metric: str = "auc"
    augment: bool | dict = True  # flips and crops, applied to every spatial input alike
    tap_augment: str = "warp"  # how cached taps follow the image: warp, views or none
    oversample: bool = False  # minority classes drawn as often as the majority (seed 001)
    optimizer: str = "adamw"  # adam (seeds 002, 004), amsgrad (seed 003), sgd (seed 001)
    momentum: float = 0.9  # sgd only
    nesterov: bool = True  # sgd only
    lr_step: int = 0  # multiply the learning rate by lr_gamma every lr_step epochs (0: constant)
    lr_gamma: float = 0.1
    poly_power: float = 0.0  # > 0: lr * (1 - epoch / epochs) ** poly_power after each epoch


def make_optimizer(
    params: list[torch.nn.Parameter], s: TrainSettings
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    """AdamW (seed 000), Adam (seeds 002, 004), AMSGrad (seed 003: Adam with ``amsgrad``, β1 =
    0.9, its "momentum", and L2 weight decay as torch's Adam applies it) or SGD with momentum
    (seed 001); optionally a step decay or a polynomial decay per epoch (seed 003: power 0.9,
    ``torch.optim.lr_scheduler.PolynomialLR`` over the run's epochs)."""
    if s.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    elif s.optimizer in ("adam", "amsgrad"):
        amsgrad = s.optimizer == "amsgrad"
        opt = torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay, amsgrad=amsgrad)
    elif s.optimizer == "sgd":
        opt = torch.optim.SGD(
            params, lr=s.lr, momentum=s.momentum, nesterov=s.nesterov, weight_decay=s.weight_decay
        )
    else:
        raise ValueError(
            f"train.optimizer: unknown optimizer '{s.optimizer}' (adamw, adam, amsgrad or sgd)"
        )
    if s.lr_step and s.poly_power:
        raise ValueError(
            "train.lr_step and train.poly_power are two learning-rate schedules; set one of them"
        )
    sched: torch.optim.lr_scheduler.LRScheduler | None = None
    if s.lr_step:
        sched = torch.optim.lr_scheduler.StepLR(opt, s.lr_step, s.lr_gamma)
    elif s.poly_power:
        sched = torch.optim.lr_scheduler.PolynomialLR(opt, s.epochs, s.poly_power)
    return opt, sched


def seed_everything(seed: int, threads: int) -> None:
    torch.manual_seed(seed)  # every other draw uses generators seeded explicitly
    torch.set_num_threads(max(1, threads))
    torch.use_deterministic_algorithms(True, warn_only=True)


def probabilities(task_type: str, logits: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(logits) if task_type == "multilabel" else torch.softmax(logits, dim=1)


@torch.inference_mode()
def predict(
    head: Head,
    inputs: RunInputs,
    items: np.ndarray,
    task: TaskInfo,
    device: torch.device,
    batch_size: int,
    view=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and predicted probabilities of ``items``, in order (``view``: e.g. a centre crop)."""
    head.eval()
    probs, labels = [], []
    for batch in batches(inputs, items, batch_size):
        out = head(to_device(view(batch) if view else batch, device))
        probs.append(probabilities(task.type, out["logits"]).float().cpu())
        labels.append(batch["label"])
    return torch.cat(labels).numpy(), torch.cat(probs).numpy()


def evaluate(
    head: Head,
    inputs: RunInputs,
    items: np.ndarray,
    task: TaskInfo,
    device: torch.device,
    batch_size: int,
    view=None,
) -> dict[str, float]:
    if head.dense:
        return evaluate_masks(head, inputs, items, task, device, batch_size)[0]
    y, p = predict(head, inputs, items, task, device, batch_size, view)
    return compute_metrics(y, p, task.type)


CLASSIFICATION_METRICS = ("auc", "acc", "ap")


def check_task(head_name: str, cls: type[Head], info: TaskInfo, settings: TrainSettings) -> None:
    """A dense head trains on segmentation tasks only, and its run on their metrics."""
    seg = info.type == "segmentation"
    if seg != cls.dense:
        what = "predicts masks" if cls.dense else "predicts image labels"
        raise ValueError(
            f"head '{head_name}' {what}; task '{info.name}' is a {info.type} task. Use a "
            f"{'segmentation' if cls.dense else 'classification'} task, or another head"
        )
    allowed = SEGMENTATION_METRICS if seg else CLASSIFICATION_METRICS
    if seg and info.mask and len(info.classes) > 1:
        allowed = (*allowed, "task2_jaccard", "task2_dice")
    if settings.select_metric not in allowed:
        raise ValueError(
            f"train.select_metric: '{settings.select_metric}' is not a metric of a {info.type} "
            f"task; set it to one of {list(allowed)}"
        )
    if seg and settings.oversample:
        raise ValueError(
            "train.oversample draws minority classes more often; a segmentation task has no "
            "image classes. Set train.oversample: false"
        )


def fit(
    head: Head,
    inputs: RunInputs,
    splits: Mapping[str, np.ndarray],
    info: TaskInfo,
    settings: TrainSettings,
    device: torch.device,
    seed: int,
    augmentation: tuple = (None, None, None),
) -> tuple[list[dict[str, float]], int]:
    """Train ``head``, validating after every epoch; leaves it at its best epoch's weights.

    ``augmentation``: the run's ``AugmentSpec`` (or None), the cached views its taps come from
    (``tap_augment: views``, else None) and the evaluation view (a centre crop, or None).
    Returns the per-epoch history and the best epoch (by ``select_metric``, earliest on ties).
    """
    trainable = [p for p in head.parameters() if p.requires_grad]
    opt, sched = make_optimizer(trainable, settings)
    gen = torch.Generator().manual_seed(seed)
    aug, view_taps, view = augmentation
    history, best, best_state, best_epoch = [], -np.inf, None, -1
    for epoch in range(1, settings.epochs + 1):
        head.train()
        losses = []
        for batch in batches(
            inputs,
            splits["train"],
            settings.batch_size,
            generator=gen,
            oversample=settings.oversample,
        ):
            if head.dense and len(batch["label"]) == 1:
                # a lone image: batch norm of DeepLabV3's image-pooling branch (one value per
                # channel) is undefined; the dense heads skip it (the draw order is unchanged)
                continue
            if aug is not None:
                batch = augment(batch, aug, gen, view_taps=view_taps)
            batch = to_device(batch, device)
            loss = head.loss(head(batch), batch, info.type)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        if sched is not None:
            sched.step()
        val = evaluate(head, inputs, splits["val"], info, device, settings.batch_size, view)
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
    return history, best_epoch


def train_run(
    *,
    dataset: str | Path,
    features: str | Path | None,
    task: str,
    method_name: str,
    method: Mapping[str, Any],
    fraction: float,
    seed: int,
    out: str | Path,
    expect_cache_key: str | None = None,
    superpixels: str | Path | None = None,
    sam_prior: str | Path | None = None,
    cache: ResidentCache | None = None,
) -> dict[str, Any]:
    """Train and evaluate one run, write its record to ``out`` and return it.

    ``cache`` holds the inputs that runs of this process share (a new one per run when
    omitted): whether a run finds its inputs resident or reads them itself changes no value.
    """
    t0 = time.perf_counter()
    started = datetime.now(UTC).isoformat(timespec="seconds")
    check_method(method_name, method)  # a pretrained backbone needs its checkpoint file
    settings = TrainSettings(**dict(method.get("train", {})))
    seed_everything(seed, settings.threads)
    device = resolve_device(settings.device)

    ds = DatasetStore(dataset)
    info = ds.task(task)
    fs = (
        FeatureStore(features, expect_key=expect_cache_key, expect_dataset=ds.fingerprint)
        if features is not None
        else None
    )
    taps = list(method.get("taps") or (fs.taps if fs is not None else []))
    train_all = ds.indices("train")
    labels = ds.labels(task)
    # Classification tasks stratify on their labels, segmentation tasks on mask presence.
    subset = fraction_subsample(train_all, ds.stratify_on(task)[train_all], fraction, seed)
    splits = {"train": subset, "val": ds.indices("val"), "test": ds.indices("test")}

    cls = head_class(method["head"])
    check_task(method["head"], cls, info, settings)
    with RunInputs(
        ds,
        cls.requires,
        np.concatenate(list(splits.values())),
        subset,
        labels=labels,
        features=fs,
        taps=taps,
        superpixels=superpixels,
        sam_prior=sam_prior,
        image_size=method.get("image_size"),
        cache=cache,
        target=info.mask if info.type == "segmentation" else None,
    ) as inputs:
        head = build_head(
            method["head"],
            n_outputs=info.n_outputs,
            input_shapes=inputs.input_shapes(),
            **dict(method.get("head_args", {})),
        ).to(device)
        aug, view_taps = augmentation_for_run(  # view_taps: tap_augment: views
            settings.augment, settings.tap_augment, cls.requires, fs, source=inputs.view_taps
        )
        view = evaluation_view(aug)  # the centre window of augment.crop_size, or None
        if cls.dense and view is not None:
            raise ValueError(
                "train.augment.crop_size tests on a centre window; segmentation runs are scored "
                "on whole masks. Use crop_scale (random crops resized back) instead"
            )
        history, best_epoch = fit(
            head, inputs, splits, info, settings, device, seed, (aug, view_taps, view)
        )
        bs = settings.batch_size
        if cls.dense:
            test, per_image, pred = evaluate_masks(head, inputs, splits["test"], info, device, bs)
            y_test, p_test = labels[splits["test"]], np.zeros((len(splits["test"]), 0))
            masks, store_attrs = mask_store_contents(info, pred)
            maps, frame = {}, "image"
        else:
            y_test, p_test = predict(head, inputs, splits["test"], info, device, bs, view)
            test = compute_metrics(y_test, p_test, info.type)
            frame = getattr(head, "attention_frame", "image")
            maps_per_image, maps = localisation_per_image(  # seed 001's Table 3; {} without maps
                lambda b: head(to_device(view(b) if view else b, device)),
                inputs,
                splits["test"],
                task_type=info.type,
                batch_size=bs,
                frame=frame,
                crop=aug.crop_size if view else None,  # masks in the frame the head is tested on
            )
            test |= {f"jaccard_{name}": float(v.mean()) for name, v in maps_per_image.items()}
            per_image = {f"jaccard_{name}": v for name, v in maps_per_image.items()}
            masks, store_attrs = {}, {}
        val = evaluate(head, inputs, splits["val"], info, device, bs, view)

    slic_key = None
    if superpixels is not None:  # scikit-image is imported only by runs that read superpixels
        from samcache.features.superpixels import stored_key as superpixel_key

        slic_key = superpixel_key(superpixels)
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
        "head_info": dict(getattr(head, "info", {})),
        "metrics": {"test": test, "val": val},
        "predictions": record_predictions(splits["test"], y_test, p_test, per_image),
        "history": history,
        "cache_key": fs.key if fs is not None else None,
        "features_path": str(fs.path) if fs is not None else None,
        "superpixels_path": str(superpixels) if superpixels is not None else None,
        "superpixels_key": slic_key,
        "sam_prior_path": str(sam_prior) if sam_prior is not None else None,
        "sam_prior_key": stored_key(sam_prior) if sam_prior is not None else None,
        "code_version": code_version(),
        "samcache_version": __version__,
        "torch_version": torch.__version__,
        "device": str(device),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "started": started,
        "wall_time_s": round(time.perf_counter() - t0, 3),
    }
    write_run(
        out,
        record,
        maps=maps,
        masks=masks,
        store_attrs={"frame": frame, "dataset": ds.name, **store_attrs},
    )
    return record
