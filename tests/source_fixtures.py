"""Small files in the real formats of MedMNIST and the ISIC challenges, built by the tests.

Member names, CSV columns, mask names and npz keys are those of the official files; the
pixels are chosen so that the expected store content can be computed independently:

* every image is one solid colour that encodes its position, so a row of the store can be
  traced back to its image id;
* masks are rectangles (or superpixel tiles) aligned to the grid of output pixels, so the
  expected mask at the store's size is a block average thresholded at one half (numpy).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

W, H = 64, 48  # full-resolution fixture images (non-square, as dermoscopy images are)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (W, H), colour).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def colour_of(k: int) -> tuple[int, int, int]:
    return (20 + 9 * k, 200 - 7 * k, 60 + 5 * (k % 7))


def rect_mask(k: int, size: int) -> np.ndarray:
    """A rectangle in output-pixel units (size x size), different per image."""
    m = np.zeros((size, size), bool)
    m[1 + k % 3 : size - 2, 2 : size - 1 - k % 4] = True
    return m


def upsample(mask: np.ndarray) -> np.ndarray:
    """An output-grid mask drawn at W x H: each output pixel becomes a (H/s) x (W/s) block."""
    s = mask.shape[0]
    return np.repeat(np.repeat(mask, H // s, axis=0), W // s, axis=1)


def block_mean(full: np.ndarray, size: int) -> np.ndarray:
    """The reference resize of a grid-aligned mask: block average >= 1/2."""
    h, w = full.shape
    return (full.reshape(size, h // size, size, w // size).mean(axis=(1, 3)) >= 0.5).astype(
        np.uint8
    )


@dataclass
class Truth:
    """What a store built from the fixture must contain, per image id."""

    ids: list[str] = field(default_factory=list)
    split: list[int] = field(default_factory=list)
    colour: list[tuple[int, int, int]] = field(default_factory=list)
    lesion: list[np.ndarray] = field(default_factory=list)  # full resolution
    attributes: list[list[np.ndarray]] = field(default_factory=list)  # full resolution
    labels: dict[str, list[int]] = field(default_factory=dict)


def _ids(start: int, n: int) -> list[str]:
    return [f"ISIC_{start + i:07d}" for i in range(n)]


# --- MedMNIST -------------------------------------------------------------------------------


def medmnist_npz(
    path: Path,
    *,
    rgb: bool,
    n_classes: int,
    size: int = 28,
    seed: int = 0,
    counts: tuple[int, int, int] = (12, 4, 6),
) -> Path:
    """``{split}_images`` / ``{split}_labels`` as MedMNIST ships them (labels (N, 1) uint8)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(("train", "val", "test"), counts, strict=True):
        shape = (n, size, size, 3) if rgb else (n, size, size)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        labels = np.arange(n) % n_classes  # every class in every split
        arrays[f"{split}_labels"] = rng.permutation(labels).astype(np.uint8)[:, None]
    np.savez_compressed(path, **arrays)
    return path


# --- ISIC 2016 ------------------------------------------------------------------------------


def isic2016(root: Path, size: int) -> Truth:
    t = Truth(labels={"melanoma": []})
    k = 0
    for split, stem, start, n in (("train", "Training", 0, 10), ("test", "Test", 100, 4)):
        images, masks, rows = {}, {}, []
        for i in _ids(start, n):
            mel = int(k % 3 == 0)
            images[f"ISBI2016_ISIC_Part3_{stem}_Data/{i}.jpg"] = jpeg_bytes(colour_of(k))
            full = upsample(rect_mask(k, size))
            masks[f"ISBI2016_ISIC_Part1_{stem}_GroundTruth/{i}_Segmentation.png"] = png_bytes(
                full.astype(np.uint8) * 255
            )
            # The training CSV names the class, the test CSV gives 0.0 / 1.0 (both headerless).
            value = ("malignant" if mel else "benign") if split == "train" else f"{mel:.1f}"
            rows.append([i, value])
            t.ids.append(i)
            t.split.append(0 if split == "train" else 2)
            t.colour.append(colour_of(k))
            t.lesion.append(full)
            t.labels["melanoma"].append(mel)
            k += 1
        write_zip(root / f"ISBI2016_ISIC_Part3_{stem}_Data.zip", images)
        write_zip(root / f"ISBI2016_ISIC_Part1_{stem}_GroundTruth.zip", masks)
        with open(root / f"ISBI2016_ISIC_Part3_{stem}_GroundTruth.csv", "w", newline="") as f:
            csv.writer(f).writerows(rows)
    return t


# --- ISIC 2017 ------------------------------------------------------------------------------

FEATURES_2017 = ("pigment_network", "negative_network", "milia_like_cyst", "streaks")
# Superpixels are 3 x 2-pixel tiles (512 of them, so G carries index bits); an output pixel's
# 3 x 4 block at 16 px holds exactly two, so marked tiles draw grid-aligned masks.
TILE_H, TILE_W = 3, 2


def superpixel_rgb() -> tuple[np.ndarray, np.ndarray]:
    """ISIC's superpixel PNG (index = R + 256 G + 65536 B) and the index map it encodes."""
    rows, cols = np.indices((H, W))
    index = (rows // TILE_H) * (W // TILE_W) + cols // TILE_W
    rgb = np.stack([index & 255, (index >> 8) & 255, index >> 16], axis=-1).astype(np.uint8)
    return rgb, index


def isic2017(root: Path, size: int) -> Truth:
    t = Truth(labels={"melanoma": [], "keratosis": []})
    rgb, index = superpixel_rgb()
    n_sp = int(index.max()) + 1
    k = 0
    for split, stem, start, n in (
        ("train", "Training", 0, 8),
        ("val", "Validation", 200, 3),
        ("test", "Test_v2", 300, 4),
    ):
        data, p1, p2 = {}, {}, {}
        rows = [["image_id", "melanoma", "seborrheic_keratosis"]]
        for i in _ids(start, n):
            data[f"ISIC-2017_{stem}_Data/{i}.jpg"] = jpeg_bytes(colour_of(k))
            data[f"ISIC-2017_{stem}_Data/{i}_superpixels.png"] = png_bytes(rgb)
            full = upsample(rect_mask(k, size))
            p1[f"ISIC-2017_{stem}_Part1_GroundTruth/{i}_segmentation.png"] = png_bytes(
                full.astype(np.uint8) * 255
            )
            # Each feature marks the superpixels inside one output-grid block rectangle.
            features, masks = {}, []
            for j, name in enumerate(FEATURES_2017):
                region = np.zeros((size, size), bool)
                if (k + j) % 3:  # some features absent from some images
                    region[j : j + 3 + k % 2, 2 * j : 2 * j + 4] = True
                full_f = upsample(region)
                marked = np.zeros(n_sp, int)
                marked[np.unique(index[full_f])] = 1
                features[name] = marked.tolist()
                masks.append(full_f)
            p2[f"ISIC-2017_{stem}_Part2_GroundTruth/{i}_features.json"] = json.dumps(
                features
            ).encode()
            mel, sk = int(k % 4 == 1), int(k % 4 == 2)
            rows.append([i, f"{mel:.1f}", f"{sk:.1f}"])
            t.ids.append(i)
            t.split.append(("train", "val", "test").index(split))
            t.colour.append(colour_of(k))
            t.lesion.append(full)
            t.attributes.append(masks)
            t.labels["melanoma"].append(mel)
            t.labels["keratosis"].append(sk)
            k += 1
        data[f"ISIC-2017_{stem}_Data/ISIC-2017_{stem}_Data_metadata.csv"] = b"image_id,age,sex\n"
        write_zip(root / f"ISIC-2017_{stem}_Data.zip", data)
        write_zip(root / f"ISIC-2017_{stem}_Part1_GroundTruth.zip", p1)
        write_zip(root / f"ISIC-2017_{stem}_Part2_GroundTruth.zip", p2)
        with open(root / f"ISIC-2017_{stem}_Part3_GroundTruth.csv", "w", newline="") as f:
            csv.writer(f).writerows(rows)
    return t


# --- ISIC 2018 ------------------------------------------------------------------------------

ATTRIBUTES_2018 = ("pigment_network", "negative_network", "streaks", "milia_like_cyst", "globules")


def isic2018(root: Path, size: int) -> Truth:
    t = Truth()
    k = 0
    for split, stem, v3, start, n in (
        ("train", "Training", "_v3", 0, 7),
        ("val", "Validation", "", 12255, 2),
        ("test", "Test", "", 12169, 3),
    ):
        inputs = {
            f"ISIC2018_Task1-2_{stem}_Input/LICENSE.txt": b"CC-0",
            f"ISIC2018_Task1-2_{stem}_Input/ATTRIBUTION.txt": b"ISIC",
        }
        task1, task2 = {}, {}
        for i in _ids(start, n):
            inputs[f"ISIC2018_Task1-2_{stem}_Input/{i}.jpg"] = jpeg_bytes(colour_of(k))
            full = upsample(rect_mask(k, size))
            task1[f"ISIC2018_Task1_{stem}_GroundTruth/{i}_segmentation.png"] = png_bytes(
                full.astype(np.uint8) * 255
            )
            masks = []
            for j, name in enumerate(ATTRIBUTES_2018):
                region = np.zeros((size, size), bool)
                if (k + j) % 2:
                    region[j : j + 2, k % 5 : k % 5 + 3 + j] = True
                full_a = upsample(region)
                task2[f"ISIC2018_Task2_{stem}_GroundTruth{v3}/{i}_attribute_{name}.png"] = (
                    png_bytes(full_a.astype(np.uint8) * 255)
                )
                masks.append(full_a)
            t.ids.append(i)
            t.split.append(("train", "val", "test").index(split))
            t.colour.append(colour_of(k))
            t.lesion.append(full)
            t.attributes.append(masks)
            k += 1
        write_zip(root / f"ISIC2018_Task1-2_{stem}_Input.zip", inputs)
        write_zip(root / f"ISIC2018_Task1_{stem}_GroundTruth.zip", task1)
        write_zip(root / f"ISIC2018_Task2_{stem}_GroundTruth{v3}.zip", task2)
    return t


BUILDERS = {"isic2016": isic2016, "isic2017": isic2017, "isic2018": isic2018}
