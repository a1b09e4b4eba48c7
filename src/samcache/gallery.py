"""Galleries of a table's predictions, drawn from the runs' prediction stores (``samcache gallery``).

Per block of a table, from the runs of its first seed at its largest fraction:

* ``attention_<dataset>_<task>.jpg``: test images with the lesion outline, then, for every row
  whose runs expose attention maps (and CAMs), each map over the image with the outline, as
  seed 001's figure of attention maps. The images span the first such map's per-image Jaccard
  index from best to worst.
* ``segmentation_<method>_<dataset>_<task>.jpg``: for a row whose runs predict masks, the best,
  median and worst test image by Jaccard index: the prediction over the image against the
  ground truth's outline.
* ``sam_prior_<dataset>_<task>.jpg``: for SAMAug-C rows, test images, SAM's prior maps and the
  augmented images the head sees.

Galleries are JPEG images. A table without such rows gets no gallery (an empty folder).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from samcache.predictions import Predictions, load_predictions

log = logging.getLogger(__name__)


def _spread(order: np.ndarray, n: int) -> np.ndarray:
    """``n`` entries of ``order`` evenly spaced from its first to its last."""
    if len(order) <= n:
        return order
    return order[np.round(np.linspace(0, len(order) - 1, n)).astype(int)]


def _image_and_masks(
    dataset: str | Path, items: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    from samcache.data.store import DatasetStore
    from samcache.features.store import read_items

    ds = DatasetStore(dataset)
    images = read_items(ds.images, items)
    masks = read_items(ds.group["masks/lesion"], items) > 0 if ds.has_lesion_mask else None
    return images, masks


def _upsampled(maps: np.ndarray, size: tuple[int, int], frame: str) -> np.ndarray:
    import torch

    from samcache.localisation import maps_to_mask_frame

    return maps_to_mask_frame(torch.from_numpy(maps[:, None]), size, frame).numpy()


def _axes(n_rows: int, n_cols: int, side: float = 1.7):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        n_rows,
        n_cols,
        figsize=(side * n_cols + 1.6, side * n_rows + 0.6),
        squeeze=False,
        layout="constrained",  # leaves room for the title above the top row
    )
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def _outline(ax, mask: np.ndarray | None, color: str = "lime") -> None:
    if mask is not None and mask.any() and not mask.all():
        ax.contour(mask.astype(float), levels=[0.5], colors=color, linewidths=1.0)


def _save(fig, path: Path, title: str) -> Path:
    import matplotlib.pyplot as plt

    fig.suptitle(title, fontsize=9)
    # JPEG: photographs and heat maps as PNG make a report of many megabytes
    fig.savefig(path, dpi=110, pil_kwargs={"quality": 88})
    plt.close(fig)
    return path


def attention_gallery(
    rows: Sequence[tuple[str, Predictions]], dataset: str | Path, path: Path, title: str, n: int
) -> Path:
    """Images with the lesion outline, then each row's maps over them (see module doc)."""
    maps = [
        (label, pred, pred.maps(), pred.open_store().attrs.get("frame", "image"))
        for label, pred in rows
    ]
    first_label, first, first_maps, _ = maps[0]
    key = f"jaccard_{next(iter(first_maps))}"
    ranking = np.argsort(-first.per_image[key], kind="stable")
    pick = _spread(ranking, n)
    images, masks = _image_and_masks(dataset, first.items[pick])
    n_maps = sum(len(m) for _, _, m, _ in maps)
    fig, axes = _axes(1 + n_maps, len(pick))
    for j in range(len(pick)):
        axes[0][j].imshow(images[j])
        _outline(axes[0][j], None if masks is None else masks[j])
        axes[0][j].set_title(f"test item {first.items[pick[j]]}", fontsize=7)
    axes[0][0].set_ylabel("image", fontsize=8)
    r = 1
    for label, pred, named, frame in maps:
        if not np.array_equal(pred.items, first.items):
            raise ValueError(f"{pred.record} and {first.record} were tested on other images")
        for name, m in named.items():
            up = _upsampled(m[pick], images.shape[1:3], frame)
            jac = pred.per_image.get(f"jaccard_{name}")
            for j in range(len(pick)):
                ax = axes[r][j]
                ax.imshow(images[j])
                ax.imshow(up[j], cmap="jet", alpha=0.45)
                _outline(ax, None if masks is None else masks[j], "white")
                if jac is not None:
                    ax.set_title(f"J = {jac[pick[j]]:.2f}", fontsize=7)
            axes[r][0].set_ylabel(f"{label}\n{name}", fontsize=7)
            r += 1
    return _save(fig, path, title)


def segmentation_gallery(
    label: str, pred: Predictions, dataset: str | Path, path: Path, title: str
) -> Path:
    """Best, median and worst test image by Jaccard index of each predicted mask.

    ``attrs["mask_targets"]`` of the prediction store names, per mask, the dataset store's mask
    it is scored against: ``masks/lesion`` (the default) or ``masks/attributes:<channel>``.
    """
    from samcache.data.store import DatasetStore
    from samcache.features.store import read_items
    from samcache.localisation import jaccard_per_image

    g = pred.open_store()
    targets = dict(g.attrs.get("mask_targets") or {})
    names = [name for name, _ in g["masks"].arrays()]
    ds = DatasetStore(dataset)
    fig, axes = _axes(len(names), 3, side=2.2)
    for r, name in enumerate(names):
        array, _, channel = targets.get(name, "masks/lesion").partition(":")
        if array not in ds.group:
            raise ValueError(
                f"{pred.store}: masks/{name} is scored against {array}, not in {dataset}"
            )
        truth = read_items(ds.group[array], pred.items) > 0
        if truth.ndim == 4:
            if not channel:
                raise ValueError(
                    f"{pred.store}: mask_targets.{name} must name a channel of {array}"
                )
            truth = truth[:, int(channel)]
        predicted = np.asarray(g["masks"][name][:]) > 0
        if predicted.shape != truth.shape:
            raise ValueError(
                f"{pred.store}: masks/{name} has shape {predicted.shape}, the dataset's masks "
                f"{truth.shape}; predicted masks are stored at the dataset's mask size"
            )
        jac = jaccard_per_image(predicted, truth)
        order = np.argsort(-jac, kind="stable")
        picks = zip(("best", "median", "worst"), order[[0, len(order) // 2, -1]], strict=True)
        for j, (what, k) in enumerate(picks):
            ax = axes[r][j]
            ax.imshow(read_items(ds.images, pred.items[[k]])[0])
            ax.imshow(np.ma.masked_where(~predicted[k], predicted[k]), cmap="autumn", alpha=0.45)
            _outline(ax, truth[k])
            ax.set_title(f"{what}: J = {jac[k]:.2f} (item {pred.items[k]})", fontsize=7)
        axes[r][0].set_ylabel(f"{label}\n{name}", fontsize=7)
    return _save(fig, path, title)


def sam_prior_panels(
    rec: Mapping[str, Any], pred: Predictions, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """Test items, their images (uint8), SAM prior maps and SAMAug-C images (floats in [0, 1])
    as the head builds them (``samcache.heads.samaug``), and the head's ``floor``."""
    import torch

    from samcache.data.store import DatasetStore
    from samcache.features.sam_prior import open_sam_priors
    from samcache.features.store import read_items
    from samcache.heads.samaug import samaug_c_image
    from samcache.inputs import IMAGENET_MEAN, IMAGENET_STD

    items = pred.items[_spread(np.arange(len(pred.items)), n)]
    images = read_items(DatasetStore(rec["dataset_path"]).images, items)
    prior = read_items(open_sam_priors(rec["sam_prior_path"]), items).astype(np.float32)
    floor = float((rec.get("config", {}).get("head_args") or {}).get("floor", 0.0))
    x = (
        torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0 - IMAGENET_MEAN
    ) / IMAGENET_STD
    aug = samaug_c_image(x, torch.from_numpy(prior)[:, None], floor) * IMAGENET_STD + IMAGENET_MEAN
    return items, images, prior, aug.clamp(0, 1).permute(0, 2, 3, 1).numpy(), floor


def sam_prior_gallery(
    rec: Mapping[str, Any], pred: Predictions, path: Path, title: str, n: int
) -> Path:
    """Test images, their SAM prior maps and the SAMAug-C images the head sees."""
    items, images, prior, aug, floor = sam_prior_panels(rec, pred, n)
    _, masks = _image_and_masks(rec["dataset_path"], items)
    fig, axes = _axes(3, len(items))
    for j in range(len(items)):
        axes[0][j].imshow(images[j])
        _outline(axes[0][j], None if masks is None else masks[j])
        axes[0][j].set_title(f"test item {items[j]}", fontsize=7)
        axes[1][j].imshow(prior[j], cmap="viridis", vmin=0, vmax=1)
        axes[2][j].imshow(aug[j])
    for r, what in enumerate(("image", "SAM prior", f"SAMAug-C input\n(floor {floor:g})")):
        axes[r][0].set_ylabel(what, fontsize=8)
    return _save(fig, path, title)


def write_galleries(
    spec: Mapping[str, Any],
    record_paths: Sequence[str | Path],
    out: str | Path,
    *,
    n_images: int = 6,
) -> list[Path]:
    """Every gallery of the table ``spec`` into the folder ``out``; returns the files written."""
    from samcache.tables import block_label, load_records, normalise_rows, record_key

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    by_key = {record_key(r): r for r in load_records(record_paths)}
    seed, frac = int(spec["seeds"][0]), float(max(spec["fractions"]))
    rows = normalise_rows(spec["rows"])
    written = []
    for block in spec["blocks"]:
        stem = f"{block['dataset']}_{block['task']}"
        where = f"{block_label(block)}, seed {seed}, {frac:g}% of the training data"
        chosen = []
        for row in rows:
            rec = by_key.get((block["dataset"], block["task"], row["method"], frac, seed))
            if rec is None:
                raise ValueError(f"no run record of {row['method']} on {stem} at f{frac:g} s{seed}")
            chosen.append((row, rec, load_predictions(rec, rec["_path"])))
        attention = [(row["label"], pred) for row, _, pred in chosen if pred.maps()]
        if attention:
            path = out / f"attention_{stem}.jpg"
            title = f"Attention maps over test images, lesion outlined ({where})"
            written.append(
                attention_gallery(attention, chosen[0][1]["dataset_path"], path, title, n_images)
            )
        for row, rec, pred in chosen:
            if pred.store is not None and "masks" in pred.open_store():
                path = out / f"segmentation_{row['method']}_{stem}.jpg"
                title = f"{row['label']}: predicted masks, ground truth outlined ({where})"
                written.append(
                    segmentation_gallery(row["label"], pred, rec["dataset_path"], path, title)
                )
        samaug = [(row, rec, pred) for row, rec, pred in chosen if rec.get("sam_prior_path")]
        if samaug:
            row, rec, pred = samaug[0]
            path = out / f"sam_prior_{stem}.jpg"
            title = f"SAMAug-C: SAM's prior maps and the augmented images ({row['label']}, {where})"
            written.append(sam_prior_gallery(rec, pred, path, title, n_images))
    log.info("wrote %d galleries into %s", len(written), out)
    return written
