"""The interface every head answers, and the registry of heads by name."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

#: Inputs a head may ask for. ``pooled``: (B, D) concatenation of the chosen taps, each averaged
#: over space and standardised with the training subset's statistics. ``taps``: a dict of
#: (B, C, g, g) tapped maps in the order the method lists them. ``image``: (B, 3, H, W) float.
#: ``lesion_mask`` (B, 1, H, W), ``attributes`` (B, A, H, W), ``superpixels`` (B, H, W) int.
#: ``sam_prior`` (B, 1, H, W) float in [0, 1]: SAMAug-C's cached segmentation prior map.
#: Runs of segmentation tasks also give every head ``target`` (B, K, H, W) float in {0, 1}: the
#: task's masks at the head's input size (not requested: it is the label of such a task).
INPUTS = frozenset(
    {"pooled", "taps", "image", "lesion_mask", "attributes", "superpixels", "sam_prior"}
)


class Head(nn.Module):
    """A trainable model over cached inputs.

    Subclasses set ``requires`` (a subset of ``INPUTS``), implement ``from_shapes`` (build from
    the number of outputs and the shapes of the required inputs, plus the method's ``head_args``)
    and ``forward`` (a batch dict to a dict with at least ``logits``).
    """

    requires: ClassVar[frozenset[str]] = frozenset()
    #: ``head_args`` the shared constructor takes but this variant does not use: refused by name
    #: (``build_head``), since a setting accepted and ignored looks as if it changed something.
    unused_args: ClassVar[frozenset[str]] = frozenset()
    #: True for heads with a trainable backbone that starts from an ImageNet checkpoint unless
    #: the method says ``init: random`` (``samcache.backbone_init``).
    pretrained_backbone: ClassVar[bool] = False
    #: True for heads that predict masks: ``logits`` (B, K, H, W) at the size of the run's
    #: ``target`` (the segmentation task's masks), trained on segmentation tasks only.
    dense: ClassVar[bool] = False

    @classmethod
    def from_shapes(cls, *, n_outputs: int, input_shapes: Mapping[str, Any], **kwargs: Any) -> Head:
        raise NotImplementedError

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def loss(
        self, outputs: Mapping[str, Any], batch: Mapping[str, Any], task_type: str
    ) -> torch.Tensor:
        """The training loss; cross-entropy (binary cross-entropy for multi-label tasks).

        Heads with another objective (focal loss, attention regularisers) override this.
        """
        logits, labels = outputs["logits"], batch["label"]
        if task_type == "multilabel":
            return nn.functional.binary_cross_entropy_with_logits(logits, labels.float())
        return nn.functional.cross_entropy(logits, labels.long())


HEADS: dict[str, type[Head]] = {}


def register_head(name: str) -> Callable[[type[Head]], type[Head]]:
    def deco(cls: type[Head]) -> type[Head]:
        if name in HEADS:
            raise ValueError(f"head '{name}' is registered twice")
        unknown = cls.requires - INPUTS
        if unknown:
            raise ValueError(f"head '{name}' requires unknown inputs {sorted(unknown)}")
        HEADS[name] = cls
        return cls

    return deco


def head_class(name: str) -> type[Head]:
    try:
        return HEADS[name]
    except KeyError:
        raise KeyError(f"unknown head '{name}'; registered heads: {sorted(HEADS)}") from None


def _init_settings(cls: type) -> set[str]:
    """Keyword-only settings of every ``__init__`` in the MRO that passes ``**kwargs`` on."""
    accepted: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(vars(klass)["__init__"]).parameters.values()
        accepted |= {p.name for p in params if p.kind is p.KEYWORD_ONLY}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return accepted


def head_arguments(name: str) -> set[str]:
    """The ``head_args`` a head accepts: the keyword arguments of its ``from_shapes`` and, where
    that passes ``**kwargs`` on to the constructor, the constructor's keyword-only settings."""
    cls = head_class(name)
    params = inspect.signature(cls.from_shapes).parameters.values()
    named = {
        p.name
        for p in params
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in _SHAPE_ARGS
    }
    if any(p.kind is p.VAR_KEYWORD for p in params):
        named |= _init_settings(cls)
    return named


_SHAPE_ARGS = {"n_outputs", "input_shapes"}


def check_head_args(cls: type, kwargs: Mapping[str, Any]) -> None:
    """Name unknown ``head_args`` keys and the accepted ones (a typo is not silently ignored)."""
    accepted = _init_settings(cls)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(
            f"head_args {unknown} are not settings of {cls.__name__}; it takes {sorted(accepted)}"
        )


def build_head(
    name: str, *, n_outputs: int, input_shapes: Mapping[str, Any], **kwargs: Any
) -> Head:
    """Build head ``name`` for ``n_outputs`` logits from inputs of the given shapes."""
    cls = head_class(name)
    refuse_unused_args(name, cls, kwargs)
    return cls.from_shapes(n_outputs=n_outputs, input_shapes=input_shapes, **kwargs)


def refuse_unused_args(name: str, cls: type[Head], kwargs: Mapping[str, Any]) -> None:
    """Refuse ``head_args`` that head ``name`` accepts through a shared constructor but ignores."""
    ignored = sorted(cls.unused_args & set(kwargs))
    if ignored:
        raise ValueError(
            f"head '{name}' does not use head_args {ignored}; remove them from the method "
            "(they would change nothing)"
        )
