"""How a method's trainable backbone starts: from a named ImageNet checkpoint, or ``init: random``.

Both papers fine-tune ImageNet weights. samcache downloads nothing at run time, so a method whose
head has a trainable backbone names a local file in ``head_args.checkpoint``; a method that means
to start from random weights says ``init: random`` (the demo does). Anything else is refused
before a job runs (the workflow calls ``check_methods`` while it builds the plan) and again when
a run starts (``check_method``), with a message that names the file to place and where.

This module imports neither torch nor timm, so the Snakefile can call it while it plans.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INITS = ("pretrained", "random")

#: Heads with a trainable backbone that the papers start from ImageNet weights. A test checks
#: this list against the heads' ``pretrained_backbone`` class attribute.
BACKBONE_HEADS = frozenset(
    {
        "backbone",
        "samaug_c",
        "sam_add",
        "sam_sigmoid",
        "sam_slca",
        "sam_slca_projector",
        "vgg16",
        "vgg16_gap",
        "mel_cnn",
        "attnmel_cnn",
        "attnmel_cnn_lesion",
        "attnmel_cnn_dermo",
        "attnmel_cnn_bkg",
        "aernet",
        "aernet_sam",
        "sanet_resunet",
        "sanet",
        "sanet_deeplab",
        "sanet_danet",
        "thwin_deeplabv3",
    }
)


@dataclass(frozen=True)
class KnownCheckpoint:
    source: str
    sha256: str | None = None  # the full published SHA-256
    sha256_prefix: str | None = None  # torchvision publishes the first 8 hex digits (file name)


#: The ImageNet checkpoints the paper configuration names, by file name.
KNOWN_CHECKPOINTS = {
    "vgg16_bn-6c64b313.pth": KnownCheckpoint(
        "https://download.pytorch.org/models/vgg16_bn-6c64b313.pth (torchvision VGG16_BN_Weights"
        ".IMAGENET1K_V1)",
        sha256_prefix="6c64b313",
    ),
    "resnet152.a1h_in1k.safetensors": KnownCheckpoint(
        "https://huggingface.co/timm/resnet152.a1h_in1k, file model.safetensors (timm's default "
        "ImageNet-1k weights of resnet152)"
    ),
    "senet154.gluon_in1k.safetensors": KnownCheckpoint(
        "https://huggingface.co/timm/senet154.gluon_in1k, file model.safetensors (timm's default "
        "ImageNet-1k weights of senet154)"
    ),
    **{
        f"{name}.safetensors": KnownCheckpoint(
            f"https://huggingface.co/timm/{name}, file model.safetensors ({what})"
        )
        for name, what in (
            ("tf_efficientnet_b1.aa_in1k", "the TensorFlow EfficientNet-B1 ImageNet weights"),
            ("tf_efficientnet_b0.aa_in1k", "the TensorFlow EfficientNet-B0 ImageNet weights"),
            ("tf_efficientnet_b3.aa_in1k", "the TensorFlow EfficientNet-B3 ImageNet weights"),
            ("legacy_seresnext101_32x4d.in1k", "Cadene's SE-ResNeXt101 32x4d ImageNet weights"),
            ("legacy_seresnet152.in1k", "Cadene's SE-ResNet152 ImageNet weights"),
            ("resnet50.tv_in1k", "torchvision's ResNet-50 ImageNet weights"),
            ("resnet101.tv_in1k", "torchvision's ResNet-101 ImageNet weights"),
        )
    },
    "swinv2_base_window8_256.ms_in1k.safetensors": KnownCheckpoint(
        "https://huggingface.co/timm/swinv2_base_window8_256.ms_in1k, file model.safetensors "
        "(timm's default ImageNet-1k weights of swinv2_base_window8_256)"
    ),
}


class InitError(ValueError):
    """A method's initialisation cannot be honoured as configured."""


def method_init(name: str, method: Mapping[str, Any]) -> str:
    """``random``, ``pretrained`` or ``none`` (no trainable backbone); refuses contradictions."""
    head = method["head"]
    init = method.get("init")
    checkpoint = (method.get("head_args") or {}).get("checkpoint")
    if head not in BACKBONE_HEADS:
        if init is not None:
            raise InitError(
                f"method '{name}': head '{head}' has no trainable backbone to initialise; "
                "remove 'init'"
            )
        return "none"
    if init is not None and init not in INITS:
        raise InitError(f"method '{name}': init must be one of {INITS}, not '{init}'")
    if init == "random":
        if checkpoint:
            raise InitError(
                f"method '{name}' says init: random but names head_args.checkpoint "
                f"{checkpoint}; keep one of the two"
            )
        return "random"
    return "pretrained"


def missing_checkpoint(
    name: str, method: Mapping[str, Any], root: Path | None = None
) -> str | None:
    """Why a pretrained method cannot start (the file to place and where), or None."""
    if method_init(name, method) != "pretrained":
        return None
    checkpoint = (method.get("head_args") or {}).get("checkpoint")
    if not checkpoint:
        return (
            f"head '{method['head']}' starts from ImageNet weights as the papers do, but the "
            "method names no head_args.checkpoint: name the local file there (the README's "
            "checkpoint table lists them), or set 'init: random' to train from random weights "
            "on purpose"
        )
    path = Path(checkpoint).expanduser()
    where = path if path.is_absolute() else (root or Path.cwd()) / path
    if where.is_file():
        return None
    known = KNOWN_CHECKPOINTS.get(path.name)
    source = f" (source: {known.source})" if known else ""
    return (
        f"the ImageNet checkpoint is missing: place {path.name}{source} at {where}, or set "
        "'init: random' on the method to train from random weights on purpose (samcache "
        "downloads nothing at run time)"
    )


def check_methods(
    methods: Iterable[tuple[str, Mapping[str, Any]]], root: Path | None = None
) -> None:
    """Raise one ``InitError`` listing every problem once, with the methods it stops."""
    problems: dict[str, list[str]] = {}
    for name, method in methods:
        try:
            why = missing_checkpoint(name, method, root)
        except InitError as err:
            why = str(err)
        if why:
            problems.setdefault(why, []).append(name)
    if problems:
        lines = [
            f"method{'s' if len(ms) > 1 else ''} {', '.join(dict.fromkeys(ms))}: {why}"
            for why, ms in problems.items()
        ]
        raise InitError(lines[0] if len(lines) == 1 else "\n  " + "\n  ".join(lines))


def check_method(name: str, method: Mapping[str, Any]) -> None:
    check_methods([(name, method)])


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verified_sha256(path: str | Path) -> str:
    """The file's SHA-256, checked against what is published for its file name."""
    path = Path(path)
    digest = file_sha256(path)
    known = KNOWN_CHECKPOINTS.get(path.name)
    if known is not None:
        expected = known.sha256 or known.sha256_prefix
        if expected and not digest.startswith(expected):
            raise InitError(
                f"{path}: SHA-256 {digest} does not match the published "
                f"{'hash' if known.sha256 else 'hash prefix'} {expected} of {path.name}; "
                f"fetch it again from {known.source}"
            )
    return digest


def init_info(checkpoint: str | Path | None) -> dict[str, str]:
    """What a run record says about its backbone's start (``head_info``)."""
    if not checkpoint:
        return {"backbone_init": "random"}
    return {
        "backbone_init": f"checkpoint {Path(checkpoint).name}",
        "checkpoint_sha256": verified_sha256(checkpoint),
    }
