"""ISIC 2016, 2017 and 2018 challenge data, from the official archives, one store per image set.

Files come from ``https://isic-challenge-data.s3.amazonaws.com/<year>/`` under their official
names; members are found by name anywhere inside an archive (``ISIC_<7 digits>.jpg``,
``..._segmentation.png`` in any case, ``..._superpixels.png``, ``..._features.json``,
``..._attribute_<name>.png``), and every image must have each of its ground-truth files.

* **isic2016** (ISBI 2016, parts 1 and 3; 900 training and 379 test images): task ``melanoma``
  (binary: benign / malignant; the training CSV says ``benign``/``malignant``, the test CSV
  ``0.0``/``1.0``), task ``lesion`` (segmentation, part 1 masks). Images from part 3's
  archives (the same images as part 1's). The challenge had no validation set: a stratified
  (on melanoma) validation set of ``val_fraction`` (default 0.2) of the training images is drawn
  with ``split_seed``; seed 001 speaks of the challenge's validation set, which for 2016 did not
  exist, so this is the reading taken.
* **isic2017** (2000 / 150 / 600 images, the official training, validation and test sets):
  tasks ``melanoma`` (task 3A, melanoma vs. the rest) and ``keratosis`` (task 3B, seborrheic
  keratosis vs. the rest) from the part 3 CSVs (``image_id,melanoma,seborrheic_keratosis``),
  ``lesion`` (part 1 masks) and ``attributes``: the four part 2 dermoscopic features
  (``pigment_network``, ``negative_network``, ``milia_like_cyst``, ``streaks``) as pixel masks.
  Their ground truth is per superpixel: ``ISIC_x_features.json`` holds, for each feature, one 0/1
  entry per superpixel, and ``ISIC_x_superpixels.png`` (in the image archives) encodes each
  pixel's superpixel index as ``R + 256 G + 65536 B``; a pixel belongs to a feature's mask when
  its superpixel is marked, the conversion seed 001 uses for its dermoscopic-feature ROIs (its
  AttnMel-CNN-Dermo takes their union).
* **isic2018** (2594 / 100 / 1000 images, tasks 1 and 2): ``lesion`` (task 1 masks) and
  ``attributes`` (task 2: ``pigment_network``, ``negative_network``, ``streaks``,
  ``milia_like_cyst``, ``globules``, one 0/255 PNG each). The validation and test ground truth
  of both tasks has been released, so all three official splits are used; with
  ``test_from_training: f`` (seed 004's 80/20 split) a seeded share f of the training images is
  the test split instead, and the official test images are left out.

Checksums: ISIC publishes none. SHA-256 values published by others for the same files are used
where found (cited below); every other file is verified against a pin in the dataset's config
key ``checksums`` or, failing that, the checksum recorded at its first download
(``samcache.download``).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from samcache.data.fractions import fraction_subsample
from samcache.data.sources import Source, register_source
from samcache.data.sources.imaging import image_size_of, load_image, load_mask, resize_mask
from samcache.data.sources.isic_groundtruth import (
    read_labels_2016,
    read_labels_2017,
    superpixel_feature_masks,
)
from samcache.data.sources.raw import (
    carve_validation,
    extracted,
    find_members,
    obtained,
    parallel_map,
    require,
    with_settings,
)
from samcache.data.store import SPLITS, DatasetStore, write_dataset_store
from samcache.download import RemoteFile

BASE = "https://isic-challenge-data.s3.amazonaws.com"
IMAGE = r"(ISIC_\d{7})\.jpe?g"
LESION = r"(ISIC_\d{7})_segmentation\.png"
SUPERPIXELS = r"(ISIC_\d{7})_superpixels\.png"
FEATURES = r"(ISIC_\d{7})_features\.json"
FEATURES_2017 = ("pigment_network", "negative_network", "milia_like_cyst", "streaks")
ATTRIBUTES_2018 = ("pigment_network", "negative_network", "streaks", "milia_like_cyst", "globules")

# SHA-256 of official files as published by others (ISIC publishes none):
# ISIC 2016 part 3 training files: OpenNN's ISIC 2016 example data notice;
# ISIC 2018 task 1 files: torch-em, torch_em/data/datasets/medical/isic.py.
PUBLISHED = {
    "ISBI2016_ISIC_Part3_Training_Data.zip": "d78bd1de08511b514e58784c91fd2d8dab24e407cafd023a7debbceb9155ffb2",
    "ISBI2016_ISIC_Part3_Training_GroundTruth.csv": "0ffadd63b7cec650cddfbe5df54d1d3167453fe6004c2bbf05824184b0c4d405",
    "ISIC2018_Task1-2_Training_Input.zip": "80f98572347a2d7a376227fa9eb2e4f7459d317cb619865b8b9910c81446675f",
    "ISIC2018_Task1-2_Validation_Input.zip": "0ea920fcfe512d12a6e620b50b50233c059f67b10146e1479c82be58ff15a797",
    "ISIC2018_Task1-2_Test_Input.zip": "e59ae1f69f4ed16f09db2cb1d76c2a828487b63d28f6ab85997f5616869b127d",
    "ISIC2018_Task1_Training_GroundTruth.zip": "99f8b2bb3c4d6af483362010715f7e7d5d122d9f6c02cac0e0d15bef77c7604c",
    "ISIC2018_Task1_Validation_GroundTruth.zip": "f6911e9c0a64e6d687dd3ca466ca927dd5e82145cb2163b7a1e5b37d7a716285",
    "ISIC2018_Task1_Test_GroundTruth.zip": "2e8f6edce454a5bdee52485e39f92bd6eddf357e81f39018d05512175238ef82",
}


@dataclass(frozen=True)
class SplitFiles:
    """The official files of one split: image archive, ground truth archives and CSV."""

    split: str
    images: str
    lesion: str
    labels: str | None = None  # classification CSV
    features: str | None = None  # 2017 part 2: per-superpixel JSON
    attributes: str | None = None  # 2018 task 2: one PNG per attribute

    @property
    def archives(self) -> list[str]:
        return [n for n in (self.images, self.lesion, self.features, self.attributes) if n]

    @property
    def names(self) -> list[str]:
        return self.archives + ([self.labels] if self.labels else [])


@dataclass(frozen=True)
class Edition:
    name: str
    year: int
    splits: tuple[SplitFiles, ...]
    label_tasks: Mapping[str, Mapping[str, Any]]
    read_labels: Callable[[Path], dict[str, dict[str, int]]] | None = None
    attribute_names: tuple[str, ...] = ()
    # An edition without an official validation set: the task whose labels stratify the
    # validation split drawn from its training images.
    validation_from_training: str | None = None

    def files(self, spec: Mapping[str, Any]) -> list[RemoteFile]:
        out = []
        for sf in self.splits:
            for name in sf.names:
                url = f"{BASE}/{self.year}/{name}"
                sha = PUBLISHED.get(name)
                out.append(
                    RemoteFile(url, name, sha256=sha) if sha else RemoteFile.unpublished(url, name)
                )
        return out


@dataclass(frozen=True)
class Item:
    split: int
    image_id: str
    image: Path
    lesion: Path
    superpixels: Path | None = None
    features: Path | None = None
    attributes: tuple[Path, ...] = ()
    files: SplitFiles | None = None  # the archives the item's files come from


def collect_split(
    edition: Edition, sf: SplitFiles, roots: Mapping[str, Path], paths: Mapping[str, Path]
) -> tuple[list[Item], list[dict[str, int]]]:
    """The items of one split with their ground-truth files and classification labels."""
    images = find_members(roots[sf.images], IMAGE, sf.images)
    if not images:
        raise ValueError(f"{sf.images}: no images named ISIC_<7 digits>.jpg in the archive")
    ids = sorted(images)
    lesions = require(
        find_members(roots[sf.lesion], LESION, sf.lesion), ids, "lesion mask", sf.lesion
    )
    n = len(ids)
    superpixels, features, attributes = [None] * n, [None] * n, [()] * n
    if sf.features:
        found = find_members(roots[sf.images], SUPERPIXELS, sf.images)
        superpixels = require(found, ids, "superpixel map", sf.images)
        found = find_members(roots[sf.features], FEATURES, sf.features)
        features = require(found, ids, "feature file", sf.features)
    if sf.attributes:
        per_name = [
            require(
                find_members(
                    roots[sf.attributes], rf"(ISIC_\d{{7}})_attribute_{a}\.png", sf.attributes
                ),
                ids,
                f"'{a}' mask",
                sf.attributes,
            )
            for a in edition.attribute_names
        ]
        attributes = [tuple(p) for p in zip(*per_name, strict=True)]
    labels: list[dict[str, int]] = [{}] * n
    if sf.labels and edition.read_labels:
        labels = require(edition.read_labels(paths[sf.labels]), ids, "label row", sf.labels)
    split = SPLITS.index(sf.split)
    items = [
        Item(split, i, images[i], lesions[k], superpixels[k], features[k], attributes[k], sf)
        for k, i in enumerate(ids)
    ]
    return items, labels


@contextlib.contextmanager
def from_archive(archive: str | None) -> Iterator[None]:
    """Name the archive a bad member comes from, and what to do about it."""
    try:
        yield
    except ValueError as err:
        if archive is None:
            raise
        raise ValueError(
            f"{archive}: member {err}. Is this the official archive? Replace it with an intact "
            "copy (delete it to download it again)"
        ) from None


def _load_all(
    items: list[Item], names: tuple[str, ...], size: int, crop: float | None, threads: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    n = len(items)
    images = np.empty((n, size, size, 3), np.uint8)
    lesion = np.empty((n, size, size), np.uint8)
    attrs = np.empty((n, len(names), size, size), np.uint8) if names else None

    def load(k: int) -> None:
        it = items[k]
        sf = it.files
        with from_archive(sf.images if sf else None):
            full = image_size_of(it.image)
            images[k] = load_image(it.image, size, crop)
        with from_archive(sf.lesion if sf else None):
            lesion[k] = load_mask(it.lesion, size, crop, expect=full)
        if attrs is None:
            return
        if it.features is not None and it.superpixels is not None:
            with from_archive(f"{sf.images} or {sf.features}" if sf else None):
                masks = superpixel_feature_masks(it.superpixels, it.features, names, full)
            attrs[k] = [resize_mask(m, size, crop) for m in masks]
        else:
            with from_archive(sf.attributes if sf else None):
                attrs[k] = [load_mask(p, size, crop, expect=full) for p in it.attributes]

    parallel_map(load, list(range(n)), threads, f"images at {size} px")
    return images, lesion, attrs


def build_edition(
    edition: Edition,
    name: str,
    spec: Mapping[str, Any],
    raw_dir: Path,
    out: Path,
    *,
    threads: int = 1,
) -> DatasetStore:
    files = with_settings(edition.files(spec), spec)
    folder = Path(raw_dir) / edition.name
    with obtained(files, folder, spec) as (paths, provenance):
        return _convert(edition, name, spec, folder, paths, provenance, out, threads)


def _convert(
    edition: Edition,
    name: str,
    spec: Mapping[str, Any],
    folder: Path,
    paths: Mapping[str, Path],
    provenance: list[dict[str, object]],
    out: Path,
    threads: int,
) -> DatasetStore:
    size = int(spec.get("image_size", 224))
    crop = spec.get("center_crop")
    archives = {a: paths[a] for sf in edition.splits for a in sf.archives}
    items, rows = [], []
    with extracted(archives, folder) as roots:
        for sf in edition.splits:
            split_items, split_rows = collect_split(edition, sf, roots, paths)
            items += split_items
            rows += split_rows
        holdout = spec.get("test_from_training")
        if holdout:  # the official test images are not used: the test split comes from training
            keep = [k for k, it in enumerate(items) if it.split != 2]
            items, rows = [items[k] for k in keep], [rows[k] for k in keep]
        images, lesion, attrs = _load_all(items, edition.attribute_names, size, crop, threads)
    split = np.array([it.split for it in items], dtype=np.uint8)
    labels = {t: np.array([r[t] for r in rows], dtype=np.int64) for t in edition.label_tasks}
    split_origin = "official"
    task = edition.validation_from_training
    if task is not None:
        frac, seed = float(spec.get("val_fraction", 0.2)), int(spec.get("split_seed", 0))
        train = np.flatnonzero(split == 0)
        split[carve_validation(train, labels[task][train], frac, seed)] = 1
        split_origin = (
            f"official training/test; validation = {frac:g} of training, "
            f"stratified on {task}, seed {seed}"
        )
    if holdout:
        frac, seed = float(holdout), int(spec.get("split_seed", 0))
        if not 0 < frac < 1:
            raise ValueError(f"config key test_from_training: {frac} is not in (0, 1)")
        train = np.flatnonzero(split == 0)
        split[fraction_subsample(train, np.zeros(len(train)), 100.0 * frac, seed)] = 2
        split_origin = (
            f"test = {frac:g} of the official training images (seed {seed}), the rest "
            "training; official validation; official test images not used"
        )
    tasks: dict[str, dict[str, Any]] = {k: dict(v) for k, v in edition.label_tasks.items()}
    tasks["lesion"] = {"type": "segmentation", "classes": ["lesion"], "mask": "masks/lesion"}
    if edition.attribute_names:
        tasks["attributes"] = {
            "type": "segmentation",
            "classes": list(edition.attribute_names),
            "mask": "masks/attributes",
        }
    return write_dataset_store(
        out,
        name=name,
        source=edition.name,
        images=images,
        split=split,
        labels=labels,
        tasks=tasks,
        lesion_mask=lesion,
        attributes=attrs,
        attribute_names=edition.attribute_names,
        extra_attrs={
            "sources": provenance,
            "split_origin": split_origin,
            "image_ids": [it.image_id for it in items],
            "preprocessing": {"image_size": size, "center_crop": crop, "resize": "bilinear"},
        },
    )


EDITIONS = (
    Edition(
        "isic2016",
        2016,
        tuple(
            SplitFiles(
                split,
                images=f"ISBI2016_ISIC_Part3_{stem}_Data.zip",
                lesion=f"ISBI2016_ISIC_Part1_{stem}_GroundTruth.zip",
                labels=f"ISBI2016_ISIC_Part3_{stem}_GroundTruth.csv",
            )
            for split, stem in (("train", "Training"), ("test", "Test"))
        ),
        {"melanoma": {"type": "binary", "classes": ["benign", "malignant"]}},
        read_labels_2016,
        validation_from_training="melanoma",
    ),
    Edition(
        "isic2017",
        2017,
        tuple(
            SplitFiles(
                split,
                images=f"ISIC-2017_{stem}_Data.zip",
                lesion=f"ISIC-2017_{stem}_Part1_GroundTruth.zip",
                features=f"ISIC-2017_{stem}_Part2_GroundTruth.zip",
                labels=f"ISIC-2017_{stem}_Part3_GroundTruth.csv",
            )
            for split, stem in (("train", "Training"), ("val", "Validation"), ("test", "Test_v2"))
        ),
        {
            "melanoma": {"type": "binary", "classes": ["not melanoma", "melanoma"]},
            "keratosis": {
                "type": "binary",
                "classes": ["not seborrheic keratosis", "seborrheic keratosis"],
            },
        },
        read_labels_2017,
        FEATURES_2017,
    ),
    Edition(
        "isic2018",
        2018,
        tuple(
            SplitFiles(
                split,
                images=f"ISIC2018_Task1-2_{stem}_Input.zip",
                lesion=f"ISIC2018_Task1_{stem}_GroundTruth.zip",
                attributes=f"ISIC2018_Task2_{stem}_GroundTruth{v3}.zip",
            )
            for split, stem, v3 in (
                ("train", "Training", "_v3"),
                ("val", "Validation", ""),
                ("test", "Test", ""),
            )
        ),
        {},
        None,
        ATTRIBUTES_2018,
    ),
)

for _edition in EDITIONS:
    register_source(
        Source(
            _edition.name,
            files=_edition.files,
            build=functools.partial(build_edition, _edition),
            description=f"ISIC {_edition.year} challenge data",
        )
    )
