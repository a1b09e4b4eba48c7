"""Reading the ISIC challenges' ground-truth files: classification CSVs and 2017 part 2 JSON.

See ``samcache.data.sources.isic`` for the formats and the reading of each.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from samcache.data.sources.imaging import opened


def _binary(value: str, path: Path, image_id: str) -> int:
    v = value.strip().lower()
    if v in ("benign", "malignant"):
        return int(v == "malignant")
    try:
        f = float(v)
    except ValueError:
        f = -1.0
    if f not in (0.0, 1.0):
        raise ValueError(
            f"{path.name}: label {value!r} of {image_id} is not 0/1 or benign/malignant"
        )
    return int(f)


def _add(out: dict[str, dict[str, int]], image_id: str, labels: dict[str, int], path: Path) -> None:
    """One row per image, as the challenge publishes it: a repeated image is refused (with two
    different labels, which one is right cannot be known)."""
    if image_id in out:
        what = "with other labels" if out[image_id] != labels else "again"
        raise ValueError(
            f"{path.name}: image {image_id} appears twice, {what} ({out[image_id]}, then "
            f"{labels}); the ground truth has one row per image. Is this the official file?"
        )
    out[image_id] = labels


def read_labels_2016(path: Path) -> dict[str, dict[str, int]]:
    """``ISIC_x,benign|malignant`` (training) or ``ISIC_x,0.0|1.0`` (test), no header."""
    out: dict[str, dict[str, int]] = {}
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if len(row) < 2 or not row[0].startswith("ISIC_"):
                continue
            _add(out, row[0], {"melanoma": _binary(row[1], path, row[0])}, path)
    return out


def read_labels_2017(path: Path) -> dict[str, dict[str, int]]:
    """``image_id,melanoma,seborrheic_keratosis`` with a header; values 0.0 or 1.0."""
    out: dict[str, dict[str, int]] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"image_id", "melanoma", "seborrheic_keratosis"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path.name}: no column(s) {sorted(missing)}")
        for row in reader:
            i = row["image_id"]
            labels = {
                "melanoma": _binary(row["melanoma"], path, i),
                "keratosis": _binary(row["seborrheic_keratosis"], path, i),
            }
            _add(out, i, labels, path)
    return out


def superpixel_feature_masks(
    superpixels: Path, features: Path, names: tuple[str, ...], expect: tuple[int, int]
) -> list[np.ndarray]:
    """Full-resolution boolean masks of ISIC 2017 part 2 features from superpixel labels."""
    with opened(superpixels) as im:
        if im.size != expect:
            raise ValueError(f"{superpixels.name}: {im.size}, its image is {expect}")
        rgb = np.asarray(im.convert("RGB"))
    index = rgb[..., 0].astype(np.uint32)
    index += rgb[..., 1].astype(np.uint32) << 8
    index += rgb[..., 2].astype(np.uint32) << 16
    data = json.loads(features.read_text())
    masks = []
    for name in names:
        if name not in data:
            raise ValueError(f"{features.name}: no feature '{name}' (has {sorted(data)})")
        marked = np.asarray(data[name], dtype=float) != 0
        if int(index.max()) >= len(marked):
            raise ValueError(
                f"{features.name}: {len(marked)} superpixels for '{name}', but "
                f"{superpixels.name} has index {int(index.max())}"
            )
        masks.append(marked[index])
    return masks
