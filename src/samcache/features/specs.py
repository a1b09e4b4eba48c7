"""Descriptions of encoders, taps and feature sets, and the cache key derived from them.

This module imports neither torch nor segment-anything, so the Snakefile can compute cache paths
while it builds the DAG without paying for those imports.

The cache key hashes everything that changes the numbers in a feature cache: the dataset, the
encoder and the identity of its weights, the preprocessing (input size, pixel mean and std,
resize and pad rules), the compute precision, the taps and each tap's storage grid and dtype.
It does not hash what only changes speed (batch size, device, workers), so those can be tuned
without rebuilding the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

CACHE_FORMAT = 1


@dataclass(frozen=True)
class EncoderSpec:
    name: str
    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    img_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    out_chans: int = 256
    checkpoint_url: str | None = None
    checkpoint_sha256: str | None = None
    checkpoint_bytes: int | None = None
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    notes: str = field(default="", compare=False)

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size

    @property
    def checkpoint_filename(self) -> str | None:
        return self.checkpoint_url.rsplit("/", 1)[-1] if self.checkpoint_url else None

    def tap_channels(self, tap: str) -> int:
        return self.out_chans if tap == "neck" else self.embed_dim


_OFFICIAL = "https://dl.fbaipublicfiles.com/segment_anything/"

ENCODERS: dict[str, EncoderSpec] = {
    "vit_h": EncoderSpec(
        "vit_h",
        1280,
        32,
        16,
        (7, 15, 23, 31),
        checkpoint_url=_OFFICIAL + "sam_vit_h_4b8939.pth",
        checkpoint_sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        checkpoint_bytes=2564550879,
    ),
    "vit_l": EncoderSpec(
        "vit_l",
        1024,
        24,
        16,
        (5, 11, 17, 23),
        checkpoint_url=_OFFICIAL + "sam_vit_l_0b3195.pth",
        checkpoint_sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        checkpoint_bytes=1249550879,
    ),
    "vit_b": EncoderSpec(
        "vit_b",
        768,
        12,
        12,
        (2, 5, 8, 11),
        checkpoint_url=_OFFICIAL + "sam_vit_b_01ec64.pth",
        checkpoint_sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        checkpoint_bytes=375042383,
    ),
    "vit_tiny": EncoderSpec(
        "vit_tiny",
        128,
        4,
        4,
        (1, 3),
        img_size=128,
        window_size=4,
        out_chans=64,
        notes="demo only: random weights, 128 px input, 8x8 token grid",
    ),
}


def encoder_spec(name: str) -> EncoderSpec:
    try:
        return ENCODERS[name]
    except KeyError:
        raise KeyError(f"unknown encoder '{name}'; choose one of {sorted(ENCODERS)}") from None


_TAP_RE = re.compile(r"^(patch_embed|neck|block:(\d+))$")
_REF_RE = re.compile(r"^(?P<name>[^@]+)(@(?P<grid>\d+))?$")


def split_tap_ref(ref: str) -> tuple[str, int | None]:
    """``"block:16@28"`` -> ``("block:16", 28)``; ``"neck"`` -> ``("neck", None)``."""
    m = _REF_RE.match(ref)
    if not m:
        raise ValueError(f"tap '{ref}' is not '<tap>' or '<tap>@<grid>'")
    return m.group("name"), int(m.group("grid")) if m.group("grid") else None


@dataclass(frozen=True)
class TapSpec:
    """One tapped module output: ``patch_embed``, ``block:<i>`` (1-based) or ``neck``.

    ``grid`` is the stored spatial size: ``None`` keeps the encoder's native token grid (64 for
    the official encoders); a smaller one average-pools before storing (``avg_pool2d`` when it
    divides the native grid, ``adaptive_avg_pool2d`` otherwise). Pooling first is exact for a
    head that begins with that same pool onto that grid (SLCA's local pooling onto a stage),
    up to where the float16 rounding happens. One module may be stored at several grids; each
    is referred to as ``<tap>@<grid>`` (``block:16@28``), the native one by its name alone.
    """

    name: str
    grid: int | None = None
    dtype: str = "float16"

    @property
    def block_index(self) -> int | None:
        m = _TAP_RE.match(self.name)
        return int(m.group(2)) - 1 if m and m.group(2) else None

    @property
    def ref(self) -> str:
        return self.name if self.grid is None else f"{self.name}@{self.grid}"

    @property
    def array_name(self) -> str:
        base = self.name.replace(":", "_")
        return base if self.grid is None else f"{base}_g{self.grid}"

    def validate(self, enc: EncoderSpec) -> None:
        if not _TAP_RE.match(self.name):
            raise ValueError(
                f"tap '{self.name}' is not one of 'patch_embed', 'block:<i>' (1-based), 'neck'"
            )
        i = self.block_index
        if i is not None and not 0 <= i < enc.depth:
            raise ValueError(f"tap '{self.name}': encoder {enc.name} has blocks 1..{enc.depth}")
        if self.grid is not None and not 1 <= self.grid <= enc.grid:
            raise ValueError(
                f"tap '{self.ref}': grid {self.grid} must lie in 1..{enc.grid} (the native grid)"
            )
        if self.dtype not in ("float16", "float32"):
            raise ValueError(f"tap '{self.name}': storage dtype must be float16 or float32")

    def stored_grid(self, enc: EncoderSpec) -> int:
        return self.grid or enc.grid


def parse_taps(
    taps: Sequence[str | Mapping[str, Any]],
    default_grid: int | None = None,
    default_dtype: str = "float16",
) -> tuple[TapSpec, ...]:
    out = []
    for t in taps:
        if isinstance(t, str):
            name, grid = split_tap_ref(t)
            out.append(TapSpec(name, grid or default_grid, default_dtype))
        else:
            out.append(
                TapSpec(t["name"], t.get("grid", default_grid), t.get("dtype", default_dtype))
            )
    refs = [t.ref for t in out]
    if len(set(refs)) != len(refs):
        raise ValueError(f"taps repeat a tap at the same grid: {refs}")
    return tuple(out)


@dataclass(frozen=True)
class FeatureSetSpec:
    """Everything that determines the contents of one feature cache."""

    encoder: str
    taps: tuple[TapSpec, ...]
    weights: str  # "official", "random", or a checkpoint path
    weights_id: str  # "sha256:<hex>" or "random:seed=<n>"
    compute_dtype: str = "float32"  # float32 | bfloat16 | float16 (autocast on CUDA)
    dataset_id: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)
    views: tuple[str, ...] = ("identity",)  # samcache.views: extra views of training images

    def __post_init__(self) -> None:
        from samcache.views import check_views  # numpy only

        enc = encoder_spec(self.encoder)
        for t in self.taps:
            t.validate(enc)
        check_views(self.views)

    @property
    def spec(self) -> EncoderSpec:
        return encoder_spec(self.encoder)

    def key_fields(self) -> dict[str, Any]:
        enc = self.spec
        return {
            "format": CACHE_FORMAT,
            "dataset": self.dataset_id,
            "encoder": {
                "name": enc.name,
                "embed_dim": enc.embed_dim,
                "depth": enc.depth,
                "num_heads": enc.num_heads,
                "window_size": enc.window_size,
                "global_attn_indexes": list(enc.global_attn_indexes),
            },
            "weights": self.weights_id,
            "preprocess": {
                "img_size": enc.img_size,
                "patch_size": enc.patch_size,
                "resize": "ResizeLongestSide",
                "pad": "bottom-right zeros after normalisation",
                "pixel_mean": list(enc.pixel_mean),
                "pixel_std": list(enc.pixel_std),
            },
            "compute_dtype": self.compute_dtype,
            "taps": [
                {"name": t.name, "grid": t.stored_grid(enc), "dtype": t.dtype} for t in self.taps
            ],
            **({"extra": dict(self.extra)} if self.extra else {}),
            # views beyond the identity, of the training split's images (absent: identity only,
            # so caches without views keep their keys)
            **(
                {"views": {"names": list(self.views), "items": "train split"}}
                if self.views != ("identity",)
                else {}
            ),
        }

    def key(self) -> str:
        return digest(self.key_fields())


def digest(obj: Any, n: int = 12) -> str:
    """A short, stable hash of a JSON-able object (keys sorted)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_jsonable)
    return hashlib.sha256(blob.encode()).hexdigest()[:n]


def _jsonable(o: Any) -> Any:
    if hasattr(o, "__dataclass_fields__"):
        return asdict(o)
    raise TypeError(f"not JSON-able: {type(o)}")


def weights_identity(
    encoder: str, weights: str, *, seed: int = 0, checkpoint_sha256: str | None = None
) -> str:
    """How a cache key names an encoder's weights.

    ``official``: the published checkpoint's SHA-256. ``random``: the seed of the random draw.
    A path to a checkpoint: ``checkpoint_sha256`` when the config gives it, else the file's hash
    (computed once and remembered beside the file, keyed on its size and modification time).
    """
    spec = encoder_spec(encoder)
    if weights == "official":
        if not spec.checkpoint_sha256:
            raise ValueError(f"encoder '{encoder}' has no official checkpoint; use weights: random")
        return f"sha256:{spec.checkpoint_sha256}"
    if weights == "random":
        return f"random:seed={seed}"
    if checkpoint_sha256:
        return f"sha256:{checkpoint_sha256.lower()}"
    return f"sha256:{_cached_file_sha256(weights)}"


def _cached_file_sha256(path: str) -> str:
    import os
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"checkpoint '{path}' does not exist; place the file there or set weights: official"
        )
    st = os.stat(p)
    memo = p.with_name(p.name + ".sha256.json")
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):  # unreadable: re-hash
        saved = json.loads(memo.read_text())
        if {k: saved.get(k) for k in stamp} == stamp and len(saved["sha256"]) == 64:
            return saved["sha256"]
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    with contextlib.suppress(OSError):  # a read-only folder only costs a re-hash next time
        from samcache.atomic import write_text_atomic

        write_text_atomic(memo, json.dumps({**stamp, "sha256": h.hexdigest()}))
    return h.hexdigest()


def feature_set_from_config(cfg: Mapping[str, Any], dataset_id: str) -> FeatureSetSpec:
    """A ``FeatureSetSpec`` from one ``feature_sets`` entry of the workflow config."""
    weights = cfg.get("weights", "official")
    return FeatureSetSpec(
        encoder=cfg["encoder"],
        taps=parse_taps(cfg["taps"], cfg.get("grid"), cfg.get("dtype", "float16")),
        weights=weights,
        weights_id=weights_identity(
            cfg["encoder"],
            weights,
            seed=cfg.get("seed", 0),
            checkpoint_sha256=cfg.get("checkpoint_sha256"),
        ),
        compute_dtype=cfg.get("compute_dtype", "float32"),
        dataset_id=dataset_id,
        views=tuple(cfg.get("views", ("identity",))),
    )


# Dataset settings that change where files come from, not what they contain.
DOWNLOAD_ONLY_KEYS = ("mirror", "first_download")


def dataset_identity(name: str, cfg: Mapping[str, Any]) -> str:
    """How cache keys name a dataset: its config name and a hash of its config entry.

    Settings that only say how the source files are obtained are left out, so switching to a
    mirror does not invalidate caches built from the same verified files.
    """
    content = {k: v for k, v in cfg.items() if k not in DOWNLOAD_ONLY_KEYS}
    return f"{name}:{digest(content)}"


SUPERPIXEL_FORMAT = 1


@dataclass(frozen=True)
class SlicParams:
    """Arguments of ``skimage.segmentation.slic`` that change its output.

    ``slic_zero``: SLIC-zero (Achanta et al.'s SLICO, scikit-image's ``slic_zero``), which adapts
    the compactness to each superpixel; ISIC's attribute ground truth was drawn on SLIC-zero
    superpixels.
    """

    n_segments: int = 100
    compactness: float = 10.0
    sigma: float = 1.0
    max_num_iter: int = 10
    enforce_connectivity: bool = True
    slic_zero: bool = False

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> SlicParams:
        return cls(**{k: v for k, v in cfg.items() if k in cls.__dataclass_fields__})

    def key(self, dataset_id: str) -> str:
        slic = asdict(self)
        if not self.slic_zero:  # caches built before the option existed keep their key
            del slic["slic_zero"]
        return digest({"format": SUPERPIXEL_FORMAT, "dataset": dataset_id, "slic": slic})


def superpixel_key(cfg: Mapping[str, Any], dataset_id: str) -> str:
    return SlicParams.from_config(cfg).key(dataset_id)
