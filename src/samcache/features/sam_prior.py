"""SAMAug-C's segmentation prior maps, computed once per image into a resumable cache.

SAMAug-C (Gu et al., ISBI 2024, "Boosting medical image classification with segmentation
foundation model") runs SAM's automatic mask generator on each raw image; every predicted mask
contributes a segmentation prior map of the image's size that holds the mask's score inside the
mask and zero outside; the prior highlights the regions SAM segments, and the classifier is
trained on raw images and on images emphasised by that prior (``samcache.heads.samaug``). Here
the SAM part, the expensive one, runs once per image in its own rule, never per epoch.

What is stored, per image: the sum of the masks' prior maps divided by its maximum, so that the
most-covered pixels are 1 (``prior``, float16 in [0, 1]; all zero when SAM returns no mask), and
the number of masks (``n_masks``). Readings of what the paper leaves open:

* the mask's score is its stability score (``mask_weight: stability_score``), as in SAMAug
  (Zhang et al. 2023), the same group's input augmentation for segmentation that SAMAug-C
  adapts; ``predicted_iou`` and ``one`` (plain mask counts) are options;
* the automatic mask generator's settings default to SAMAug's public code (predicted-IoU
  threshold 0.5, box NMS 0.5) and segment-anything's defaults otherwise (32 x 32 points,
  stability threshold 0.95, offset 1.0);
* the per-image normalisation by the maximum (so that the prior is a weight in [0, 1]).

Layout of ``sam_prior.zarr``: ``prior`` (N, H, W) float16, ``n_masks`` (N,) int32, ``complete``
(N,) bool; attrs: cache key, settings, dataset fingerprint. Work is done in fixed units of
images; a unit's flags are written after its maps, so an interrupted run resumes where it
stopped. The encoder's weights follow ``feature_sets`` (``official``, ``random``, or a path).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from samcache.features.specs import digest, encoder_spec, weights_identity

log = logging.getLogger(__name__)

SAM_PRIOR_FORMAT = 1
MASK_WEIGHTS = ("stability_score", "predicted_iou", "one")


@dataclass(frozen=True)
class SamPriorParams:
    """Everything that changes a SAMAug-C prior cache (runtime settings excluded)."""

    encoder: str = "vit_h"
    weights: str = "official"
    seed: int = 0
    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.5
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.5
    mask_weight: str = "stability_score"
    checkpoint_sha256: str | None = None

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> SamPriorParams:
        params = cls(**{k: v for k, v in cfg.items() if k in cls.__dataclass_fields__})
        encoder_spec(params.encoder)  # an unknown encoder fails here, naming the choices
        if params.mask_weight not in MASK_WEIGHTS:
            raise ValueError(f"sam_priors: mask_weight must be one of {MASK_WEIGHTS}")
        return params

    def key(self, dataset_id: str) -> str:
        fields = asdict(self)
        fields.pop("points_per_batch")  # speed only
        fields.pop("checkpoint_sha256")
        fields["weights"] = weights_identity(
            self.encoder, self.weights, seed=self.seed, checkpoint_sha256=self.checkpoint_sha256
        )
        return digest({"format": SAM_PRIOR_FORMAT, "dataset": dataset_id, "amg": fields})


def sam_prior_key(cfg: dict[str, Any], dataset_id: str) -> str:
    return SamPriorParams.from_config(cfg).key(dataset_id)


def build_sam(params: SamPriorParams, checkpoint: str | Path | None = None):
    """A full SAM (encoder, prompt encoder, mask decoder) of the encoder's size, in eval mode.

    ``checkpoint`` is an official SAM checkpoint, loaded with ``weights_only=True``; without one
    the encoder gets the same random weights as the feature cache of that seed and the prompt
    encoder and decoder are drawn from ``seed + 1``.
    """
    import torch

    from samcache.features.encoders import build_encoder, sam_around

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(params.seed + 1)
        sam = sam_around(build_encoder(params.encoder, seed=params.seed), params.encoder)
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"SAM checkpoint '{path}' does not exist")
        sam.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    sam.eval()
    sam.requires_grad_(False)
    return sam


def prior_map(masks: list[dict[str, Any]], shape: tuple[int, int], weight: str) -> np.ndarray:
    """Sum of the masks' score-filled maps, divided by its maximum; zeros when there is none."""
    prior = np.zeros(shape, dtype=np.float32)
    for m in masks:
        prior[m["segmentation"]] += 1.0 if weight == "one" else float(m[weight])
    top = prior.max()
    return prior / top if top > 0 else prior


def compute_sam_priors(
    dataset: str | Path,
    out: str | Path,
    params: SamPriorParams,
    *,
    key: str,
    checkpoint: str | Path | None = None,
    device: str = "auto",
    unit: int = 16,
    progress: bool = True,
) -> Path:
    """Fill (or finish) the prior cache at ``out`` for every image of ``dataset``."""
    from samcache.data.store import DatasetStore
    from samcache.features.store import create_store_atomically, exclusive_writer, report_repairs
    from samcache.integrity import clear_damaged
    from samcache.zarrio import (
        ItemLedger,
        StoreError,
        create_item_array,
        open_group,
        remove_partial_files,
    )

    out = Path(out)
    ds = DatasetStore(dataset)
    h, w = ds.image_shape

    def build(g) -> None:
        n_unit = max(1, min(unit, ds.n_items))
        create_item_array(
            g,
            "prior",
            n_items=ds.n_items,
            item_shape=(h, w),
            dtype="float16",
            items_per_shard=n_unit,
        )
        create_item_array(
            g, "n_masks", n_items=ds.n_items, item_shape=(), dtype="int32", items_per_shard=n_unit
        )
        ItemLedger(g, ds.n_items, n_unit)
        g.attrs.update(
            {
                "cache_key": key,
                "amg": asdict(params),
                "dataset_fingerprint": ds.fingerprint,
                "dataset_path": str(ds.path),
                "unit": n_unit,
            }
        )

    with exclusive_writer(out):
        if (out / "zarr.json").is_file():
            g = open_group(out, "r+")
            if (
                g.attrs.get("cache_key") != key
                or g.attrs.get("dataset_fingerprint") != ds.fingerprint
            ):
                raise StoreError(f"{out}: holds SAM priors built with other settings; delete it")
            remove_partial_files(out)
        else:
            g = create_store_atomically(out, build)
        ledger = ItemLedger(g, ds.n_items, int(g.attrs["unit"]))
        report_repairs(out, clear_damaged(g, ledger))
        todo = ledger.missing_units()
        if todo:
            ds.verify_fingerprint()  # the images about to be segmented are the keyed ones
            _fill(g, ledger, todo, ds, params, checkpoint, device, progress)
    return out


def _fill(g, ledger, todo, ds, params, checkpoint, device, progress) -> None:
    """Run the automatic mask generator on the images of the units ``todo``."""
    import torch
    from segment_anything import SamAutomaticMaskGenerator

    from samcache.device import resolve_device
    from samcache.progress import progress_bar

    h, w = ds.image_shape
    sam = build_sam(params, checkpoint).to(resolve_device(device))
    amg = SamAutomaticMaskGenerator(
        sam,
        points_per_side=params.points_per_side,
        points_per_batch=params.points_per_batch,
        pred_iou_thresh=params.pred_iou_thresh,
        stability_score_thresh=params.stability_score_thresh,
        stability_score_offset=params.stability_score_offset,
        box_nms_thresh=params.box_nms_thresh,
    )
    bar = progress_bar(
        total=sum(b - a for a, b in todo), desc="SAM masks", unit="img", enable=progress
    )
    try:
        with torch.inference_mode():
            for a, b in todo:
                masks = [amg.generate(np.asarray(im)) for im in ds.images[a:b]]
                g["prior"][a:b] = np.stack(
                    [prior_map(m, (h, w), params.mask_weight) for m in masks]
                ).astype(np.float16)
                g["n_masks"][a:b] = np.array([len(m) for m in masks], dtype=np.int32)
                ledger.mark(a, b)
                bar.update(b - a)
    finally:
        bar.close()


def stored_key(path: str | Path) -> str:
    """The cache key a prior store was built with (run records keep it)."""
    from samcache.zarrio import open_group

    return str(open_group(path, "r").attrs["cache_key"])


def open_sam_priors(path: str | Path, *, expect_key: str | None = None):
    """The ``prior`` array of a complete cache (checked against ``expect_key``)."""
    from samcache.integrity import require_sound, resume_advice
    from samcache.zarrio import ItemLedger, StoreError, open_group

    g = open_group(path, "r")
    if expect_key is not None and g.attrs.get("cache_key") != expect_key:
        raise StoreError(f"{path}: SAM prior cache key differs from the expected {expect_key}")
    done, advice = ItemLedger.read(g), resume_advice("sam-prior")
    if not done.all():
        raise StoreError(
            f"{path}: SAM priors are incomplete ({int((~done).sum())} of {len(done)} images "
            f"missing). {advice}"
        )
    require_sound(g, path, done, advice)
    return g["prior"]
