"""A deterministic generator of dermoscopy-like images for the embedded demo.

Each image shows skin (tone, uneven illumination, a dermoscope's dark rim, hairs) and one
pigmented lesion with an irregular border, one to three colours and up to five dermoscopic
attributes named as in ISIC 2018 task 2. The labels are functions of what is visible:

* ``melanoma`` (binary) is 1 when a *visible-risk score* exceeds a fixed threshold. The score
  rises with lesion size, darkness, number of colours, border irregularity, streaks and negative
  network (the ABCD rule and 7-point checklist cues) plus a little noise, so a model that sees the
  lesion can learn it and one that does not cannot.
* ``grade`` (ordinal, 5 classes) cuts the same score at four fixed points, a stand-in for
  RetinaMNIST's 5-level grading.

Every image is drawn from its own generator seeded with ``(seed, index)``, so the dataset is the
same whatever order or number of processes produce it, and image *i* does not depend on N.
The images are not medical data; they exist so the whole pipeline can run and be tested on a
laptop without downloads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from samcache.data.store import DatasetStore, write_dataset_store

ATTRIBUTES = ("pigment_network", "negative_network", "streaks", "milia_like_cyst", "globules")
GENERATOR_VERSION = 1

# Cut points of the visible-risk score. Chosen once so that about 35 % of images are melanoma
# and the five grades are all populated; fixed constants, not dataset statistics, so that an
# image's labels never depend on the rest of the dataset.
_MELANOMA_CUT = 0.75
_GRADE_CUTS = (-1.0, 0.0, 0.9, 1.7)


@dataclass(frozen=True)
class Lesion:
    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) uint8
    attributes: np.ndarray  # (A, H, W) uint8
    score: float
    melanoma: int
    grade: int


def _smooth_field(
    rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, n: int, freq: float
) -> np.ndarray:
    """A smooth random field in [-1, 1]: a sum of random low-frequency plane waves."""
    out = np.zeros_like(yy)
    for _ in range(n):
        theta = rng.uniform(0, np.pi)
        f = rng.uniform(0.5, 1.0) * freq
        out += np.cos(f * (np.cos(theta) * xx + np.sin(theta) * yy) + rng.uniform(0, 2 * np.pi))
    return out / n


def _disc(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float) -> np.ndarray:
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _segment_mask(yy, xx, p0, p1, width: float) -> np.ndarray:
    """Pixels within ``width`` of the segment p0-p1 (coordinates in the [-1, 1] frame)."""
    d = np.subtract(p1, p0)
    t = ((yy - p0[0]) * d[0] + (xx - p0[1]) * d[1]) / max(float(d @ d), 1e-9)
    t = np.clip(t, 0.0, 1.0)
    return (yy - (p0[0] + t * d[0])) ** 2 + (xx - (p0[1] + t * d[1])) ** 2 <= width * width


def render_lesion(seed: int, index: int, size: int) -> Lesion:
    """Draw image ``index`` of the dataset with base ``seed`` at ``size`` x ``size`` pixels."""
    rng = np.random.default_rng([seed, index, GENERATOR_VERSION])
    px = 2.0 / size  # one pixel in the [-1, 1] frame
    yy, xx = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    malignancy = rng.normal()

    # Skin: tone, illumination, texture, the dermoscope's dark rim.
    tone = np.array([222.0, 176.0, 148.0]) * rng.uniform(0.85, 1.05)
    light = 1.0 + 0.06 * _smooth_field(rng, yy, xx, 3, 2.0)
    img = tone[None, None, :] * light[..., None]
    # Pixel noise from its own stream, so the labels of image i are the same at every size.
    img += np.random.default_rng([seed, index, GENERATOR_VERSION, 1]).normal(0, 3.0, img.shape)
    rim = np.clip(1.0 - 3.0 * (np.hypot(yy, xx) - 1.05), 0.25, 1.0)

    # Lesion geometry: size and border irregularity grow with malignancy.
    radius = float(np.clip(0.38 + 0.09 * malignancy + rng.normal(0, 0.05), 0.16, 0.7))
    irregularity = float(np.clip(0.08 + 0.06 * malignancy + rng.normal(0, 0.04), 0.0, 0.3))
    cy, cx = rng.normal(0, 0.08, 2)
    r, th = np.hypot(yy - cy, xx - cx), np.arctan2(yy - cy, xx - cx)
    border = np.ones_like(th)
    for k in range(1, 7):
        border += (
            irregularity * rng.uniform(0.3, 1.0) / np.sqrt(k) * np.cos(k * th + rng.uniform(0, 6.3))
        )
    border *= radius
    inside = r < border
    alpha = np.clip((border - r) / (3 * px), 0.0, 1.0)

    # Lesion colours: darker and more variegated with malignancy.
    darkness = float(np.clip(0.55 + 0.15 * malignancy + rng.normal(0, 0.08), 0.2, 1.0))
    base = np.array([150.0, 100.0, 72.0]) * (1.15 - 0.6 * darkness)
    lesion = np.broadcast_to(base, img.shape).copy()
    lesion *= (1.0 + 0.08 * _smooth_field(rng, yy, xx, 4, 6.0))[..., None]
    n_colours = int(np.clip(round(1.3 + 0.7 * malignancy + rng.normal(0, 0.4)), 1, 3))
    palette = [
        np.array([55.0, 35.0, 30.0]),
        np.array([95.0, 105.0, 128.0]),
        np.array([160.0, 70.0, 60.0]),
    ]
    for c in rng.choice(len(palette), size=n_colours - 1, replace=False):
        blob = (_smooth_field(rng, yy, xx, 3, 4.0) > 0.25) & inside
        lesion[blob] = 0.3 * lesion[blob] + 0.7 * palette[c]

    # Dermoscopic attributes: each drawn into the lesion and recorded as a mask.
    masks = np.zeros((len(ATTRIBUTES), size, size), dtype=bool)
    p = 1.0 / (
        1.0 + np.exp(-np.array([0.3, 1.2 * malignancy - 1.0, 1.5 * malignancy - 0.8, -0.8, 0.2]))
    )
    present = rng.uniform(size=len(ATTRIBUTES)) < p
    region = inside & (_smooth_field(rng, yy, xx, 2, 3.0) > -0.2)
    if present[0]:  # pigment network: a dark mesh
        f = rng.uniform(18, 26)
        mesh = (np.abs(np.sin(f * xx)) < 0.3) | (np.abs(np.sin(f * yy + 1.0)) < 0.3)
        masks[0] = mesh & region & (r < 0.9 * border)
        lesion[masks[0]] *= 0.55
    if present[1]:  # negative network: a pale mesh
        f = rng.uniform(14, 20)
        mesh = (np.abs(np.sin(f * (xx + yy))) < 0.25) | (np.abs(np.sin(f * (xx - yy))) < 0.25)
        masks[1] = mesh & ~region & (r < 0.85 * border)
        lesion[masks[1]] = 0.4 * lesion[masks[1]] + 0.6 * np.array([225.0, 200.0, 185.0])
    if present[2]:  # streaks: radial lines across the border
        for a in rng.uniform(0, 2 * np.pi, rng.integers(5, 12)):
            rb = radius * (1 + irregularity)
            p0 = (cy + 0.75 * rb * np.sin(a), cx + 0.75 * rb * np.cos(a))
            p1 = (cy + 1.2 * rb * np.sin(a), cx + 1.2 * rb * np.cos(a))
            masks[2] |= _segment_mask(yy, xx, p0, p1, 0.9 * px)
        lesion[masks[2]] = np.array([45.0, 30.0, 25.0])
        alpha = np.maximum(alpha, masks[2].astype(float))
    if present[3]:  # milia-like cysts: small bright dots
        for _ in range(rng.integers(2, 6)):
            a, d = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.7) * radius
            masks[3] |= _disc(
                yy, xx, cy + d * np.sin(a), cx + d * np.cos(a), rng.uniform(1.2, 2.2) * px
            )
        lesion[masks[3]] = np.array([235.0, 228.0, 200.0])
    if present[4]:  # globules: round dark dots
        for _ in range(rng.integers(4, 10)):
            a, d = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.85) * radius
            masks[4] |= _disc(
                yy, xx, cy + d * np.sin(a), cx + d * np.cos(a), rng.uniform(2.0, 3.5) * px
            )
        lesion[masks[4]] *= 0.45
    masks &= (alpha > 0)[None]

    img = (1 - alpha[..., None]) * img + alpha[..., None] * lesion
    for _ in range(rng.integers(0, 4)):  # hairs: dark curves that carry no label information
        p0, p1 = rng.uniform(-1, 1, 2), rng.uniform(-1, 1, 2)
        img[_segment_mask(yy, xx, p0, p1, 0.7 * px)] = np.array([50.0, 38.0, 32.0])
    img = np.clip(img * rim[..., None], 0, 255).astype(np.uint8)

    score = (
        1.2 * (radius - 0.38) / 0.09
        + 1.0 * (darkness - 0.55) / 0.15
        + 0.6 * (n_colours - 1.5)
        + 0.6 * (irregularity - 0.08) / 0.06
        + 0.5 * present[2]
        + 0.4 * present[1]
    ) / 2.2 + rng.normal(0, 0.25)
    return Lesion(
        image=img,
        mask=inside.astype(np.uint8),
        attributes=masks.astype(np.uint8),
        score=float(score),
        melanoma=int(score > _MELANOMA_CUT),
        grade=int(np.searchsorted(_GRADE_CUTS, score)),
    )


def make_splits(n: int, seed: int, fractions: tuple[float, float, float]) -> np.ndarray:
    """A seeded random assignment of ``n`` items to train/val/test in the given proportions."""
    order = np.random.default_rng([seed, 7919]).permutation(n)
    n_train = round(fractions[0] * n)
    n_val = round(fractions[1] * n)
    split = np.full(n, 2, dtype=np.uint8)
    split[order[:n_train]] = 0
    split[order[n_train : n_train + n_val]] = 1
    return split


def write_synthetic_store(
    path: str | Path,
    *,
    name: str = "demo",
    n_images: int = 600,
    image_size: int = 128,
    seed: int = 0,
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
) -> DatasetStore:
    """Generate the demo dataset and write it as a dataset store."""
    if n_images < 10:
        raise ValueError("n_images must be at least 10 so every split has images")
    lesions = [render_lesion(seed, i, image_size) for i in range(n_images)]
    return write_dataset_store(
        path,
        name=name,
        source="synthetic",
        images=np.stack([x.image for x in lesions]),
        split=make_splits(n_images, seed, split_fractions),
        labels={
            "melanoma": np.array([x.melanoma for x in lesions], dtype=np.int64),
            "grade": np.array([x.grade for x in lesions], dtype=np.int64),
        },
        tasks={
            "melanoma": {"type": "binary", "classes": ["benign", "melanoma"]},
            "grade": {"type": "ordinal", "classes": ["0", "1", "2", "3", "4"]},
            # the lesion masks as a segmentation task (seeds 002 and 004's demo tables)
            "lesion": {"type": "segmentation", "classes": ["lesion"], "mask": "masks/lesion"},
            # the five attribute masks as one multi-label segmentation task (seed 003's demo)
            "attributes": {
                "type": "segmentation",
                "classes": list(ATTRIBUTES),
                "mask": "masks/attributes",
            },
        },
        lesion_mask=np.stack([x.mask for x in lesions]),
        attributes=np.stack([x.attributes for x in lesions]),
        attribute_names=ATTRIBUTES,
        extra_attrs={
            "generator": {
                "version": GENERATOR_VERSION,
                "seed": seed,
                "n_images": n_images,
                "image_size": image_size,
                "split_fractions": list(split_fractions),
            }
        },
    )
