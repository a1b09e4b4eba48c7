"""RetinaMNIST and BreastMNIST from MedMNIST (v2 at 28 pixels, MedMNIST+ at 64/128/224).

* **Files.** One ``.npz`` per dataset and size: ``<flag>.npz`` at 28 pixels, ``<flag>_<size>.npz``
  otherwise. Its URL and MD5 are read at run time from the installed medmnist package's metadata
  (``medmnist.info.INFO[flag]``: ``url``/``MD5`` at 28, ``url_<size>``/``MD5_<size>`` otherwise),
  never copied here, so a new medmnist release that moves or re-publishes a file is followed.
  The info module is loaded from its file on its own: ``import medmnist`` imports torch, which
  would cost the workflow seconds each time it plans downloads.
* **Contents.** Keys ``{train,val,test}_images`` ((N, S, S) greyscale or (N, S, S, 3) RGB,
  uint8) and ``{train,val,test}_labels`` ((N, 1)). MedMNIST's official train/val/test splits are
  kept. Greyscale images become RGB by repeating the channel (SAM and ImageNet backbones take
  three); images are resized to ``image_size`` (default 224) when the file's size differs.
* **RetinaMNIST**: task ``grade``, 5-level diabetic-retinopathy grade 0-4, ordinal regression.
* **BreastMNIST**: task ``diagnosis``, binary. Seed 000 "combines normal and benign as positive
  and classifies them against malignant as negative", which is medmnist's own labelling
  (``INFO['breastmnist']['label']`` is ``{'0': 'malignant', '1': 'normal, benign'}``): the label
  values are kept unchanged, the classes are ``('malignant', 'normal, benign')`` and the positive
  class (index 1, whose probability the AUC ranks, as medmnist's evaluator does) is normal +
  benign. The conversion stops if the installed medmnist ever labels it otherwise.

Reading of seed 000 left open: it "resizes all images to 224x224" without saying which MedMNIST
size it started from; the paper configuration uses the 224-pixel files (``size: 224``), so no
resampling happens; ``size: 28`` reproduces the MedMNIST v2 reading (upsampled to 224).
"""

from __future__ import annotations

import functools
import importlib.util
import pickle
import sys
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from samcache.data.sources import Source, register_source
from samcache.data.sources.raw import obtained, parallel_map, with_settings
from samcache.data.store import SPLITS, DatasetStore, write_dataset_store
from samcache.download import RemoteFile

SIZES = (28, 64, 128, 224)
TASKS = {
    "retinamnist": ("grade", "ordinal", None),
    "breastmnist": ("diagnosis", "binary", {"0": "malignant", "1": "normal, benign"}),
}


@functools.cache
def medmnist_info() -> dict[str, dict[str, Any]]:
    """``medmnist.info.INFO`` of the installed package, without importing torch."""
    if "medmnist.info" in sys.modules:
        return sys.modules["medmnist.info"].INFO
    spec = importlib.util.find_spec("medmnist")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the medmnist package is not installed (pip install medmnist)")
    path = Path(next(iter(spec.submodule_search_locations))) / "info.py"
    loader = importlib.util.spec_from_file_location("_samcache_medmnist_info", path)
    module = importlib.util.module_from_spec(loader)  # type: ignore[arg-type]
    loader.loader.exec_module(module)  # type: ignore[union-attr]
    return module.INFO


def npz_name(flag: str, size: int) -> str:
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def published_file(flag: str, size: int) -> RemoteFile:
    if size not in SIZES:
        raise ValueError(f"config key size: {size} is not one of MedMNIST's sizes {SIZES}")
    info = medmnist_info()[flag]
    suffix = "" if size == 28 else f"_{size}"
    return RemoteFile(info[f"url{suffix}"], npz_name(flag, size), md5=info[f"MD5{suffix}"])


def _class_names(flag: str) -> tuple[str, ...]:
    labels = medmnist_info()[flag]["label"]
    expected = TASKS[flag][2]
    if expected is not None and dict(labels) != expected:
        raise ValueError(
            f"medmnist's INFO['{flag}']['label'] is {labels}, not {expected}: the meaning of the "
            "labels changed, and the positive class of seed 000 must be checked before use"
        )
    return tuple(labels[str(i)] for i in range(len(labels)))


def _to_rgb(images: np.ndarray, path: Path, key: str) -> np.ndarray:
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise ValueError(f"{path.name}: '{key}' is {images.shape} {images.dtype}, not uint8 images")
    if images.ndim == 3:
        return np.repeat(images[..., None], 3, axis=3)
    if images.shape[-1] == 1:
        return np.repeat(images, 3, axis=3)
    return images


def _resized(images: np.ndarray, size: int, threads: int) -> np.ndarray:
    if images.shape[1:3] == (size, size):
        return images

    def one(x: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(x).resize((size, size), Image.Resampling.BILINEAR))

    return np.stack(parallel_map(one, list(images), threads, f"resize to {size}"))


def _npz_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of an npz; a file numpy cannot read (truncated, corrupt, not an npz, or
    holding pickled objects) is one error that names it."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (
        zipfile.BadZipFile,
        zlib.error,
        EOFError,
        OSError,
        ValueError,
        pickle.UnpicklingError,
    ) as err:
        raise ValueError(
            f"{path}: not a readable npz file ({type(err).__name__}: {err}). Delete it and "
            "download it again (or place an intact copy there)"
        ) from None


def read_npz(path: Path, n_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images (N, S, S, 3), labels (N,) and split (N,) of a MedMNIST npz, splits in order."""
    npz = _npz_arrays(path)
    images, labels, split = [], [], []
    for s, name in enumerate(SPLITS):
        for key in (f"{name}_images", f"{name}_labels"):
            if key not in npz:
                raise ValueError(f"{path}: no array '{key}' (has {sorted(npz)})")
        x = _to_rgb(npz[f"{name}_images"], path, f"{name}_images")
        if len(npz[f"{name}_labels"]) != len(x):
            raise ValueError(
                f"{path}: {len(npz[f'{name}_labels'])} '{name}_labels' for {len(x)} images"
            )
        y = npz[f"{name}_labels"].reshape(len(x), -1)
        if y.shape[1] != 1 or y.min(initial=0) < 0 or y.max(initial=0) >= n_classes:
            raise ValueError(f"{path}: '{name}_labels' is not one class in 0..{n_classes - 1}")
        images.append(x)
        labels.append(y[:, 0].astype(np.int64))
        split.append(np.full(len(x), s, dtype=np.uint8))
    return np.concatenate(images), np.concatenate(labels), np.concatenate(split)


def _files(flag: str, spec: Mapping[str, Any]) -> list[RemoteFile]:
    return [published_file(flag, int(spec.get("size", 224)))]


def _build(
    flag: str,
    name: str,
    spec: Mapping[str, Any],
    raw_dir: Path,
    out: Path,
    *,
    threads: int = 1,
) -> DatasetStore:
    task, task_type, _ = TASKS[flag]
    classes = _class_names(flag)
    files = with_settings(_files(flag, spec), spec)
    with obtained(files, Path(raw_dir) / flag, spec) as (paths, provenance):
        images, labels, split = read_npz(paths[files[0].filename], len(classes))
    size = int(spec.get("image_size", 224))
    return write_dataset_store(
        out,
        name=name,
        source=flag,
        images=_resized(images, size, threads),
        split=split,
        labels={task: labels},
        tasks={task: {"type": task_type, "classes": list(classes)}},
        extra_attrs={
            "sources": provenance,
            "split_origin": "official (MedMNIST train/val/test)",
            "preprocessing": {"medmnist_size": int(spec.get("size", 224)), "image_size": size},
            "medmnist": {"flag": flag, "task": medmnist_info()[flag]["task"]},
        },
    )


for _flag, _what in (
    ("retinamnist", "RetinaMNIST: fundus images, 5-level diabetic-retinopathy grade"),
    ("breastmnist", "BreastMNIST: breast ultrasound, normal+benign vs malignant"),
):
    register_source(
        Source(
            _flag,
            files=functools.partial(_files, _flag),
            build=functools.partial(_build, _flag),
            description=_what,
        )
    )
