"""Trainable classification backbones from timm, and the points where side inputs enter them.

A backbone is named by its timm name (``resnet152``, ``senet154``, ``swinv2_base_window8_256``,
or a tiny one such as ``test_resnet`` for the demo). It is never downloaded: ``checkpoint`` is
a local file (a timm/PyTorch state dict, ``.pth``/``.pt``/``.bin`` loaded with
``torch.load(weights_only=True)``, or ``.safetensors``); without one the weights are random,
which a method must ask for with ``init: random`` (``samcache.backbone_init``).

``StagedBackbone`` runs the model's own ``forward_features`` and lets a caller rewrite the output
of each *stage* on the way through (forward hooks that return a replacement). The stages are
timm's ``feature_info`` levels: for ResNet-like models the stem activation (stride 2) and the
four residual stages (strides 4 to 32), five in all; for Swin Transformer V2 the patch embedding
(stride 4) and the four stages. Each stage's output is handed to the rewrite channels-first
(B, C, h, w) whatever the model's own layout (Swin keeps NHWC), and converted back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

StageRewrite = Callable[[int, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Stage:
    module: str  # name of the submodule whose output is the stage's output
    channels: int
    grid: tuple[int, int]  # (h, w) of the stage's output for the run's image size
    channels_last: bool


def load_backbone_state(model: nn.Module, checkpoint: str | Path) -> None:
    """Load a local checkpoint into ``model``; classifier weights in the file are ignored."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(
            f"backbone checkpoint '{path}' does not exist; fix head_args.checkpoint or set it "
            "to null for random initialisation"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Mapping[str, Any] = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(state, Mapping) and wrapper in state and isinstance(state[wrapper], Mapping):
            state = state[wrapper]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shapes that differ
        raise ValueError(
            f"{path}: does not fit this backbone ({str(err).splitlines()[0]} ...); check "
            "head_args.backbone against the checkpoint"
        ) from None
    # num_classes=0 removes timm's classifier; the file's classifier is the only thing to skip.
    classifier = ("fc.", "head.", "classifier.", "last_linear.", "head.fc.")
    unexpected = [k for k in unexpected if not k.startswith(classifier)]
    if missing or unexpected:
        raise ValueError(
            f"{path}: does not fit this backbone (missing {missing[:5]}..., unexpected "
            f"{unexpected[:5]}...); check head_args.backbone against the checkpoint"
        )


def build_backbone(
    name: str, *, checkpoint: str | Path | None = None, **timm_args: Any
) -> nn.Module:
    """A timm model without classifier (``num_classes=0``), never fetched from a hub."""
    import timm

    if not timm.is_model(name):
        raise ValueError(f"head_args.backbone: '{name}' is not a timm model name")
    model = timm.create_model(name, pretrained=False, num_classes=0, **timm_args)
    if checkpoint:
        load_backbone_state(model, checkpoint)
        log.info("backbone %s: weights from %s", name, checkpoint)
    else:  # only methods that say init: random get here (samcache.backbone_init)
        log.info("backbone %s: random initialisation", name)
    return model


class StagedBackbone(nn.Module):
    """A timm backbone whose stage outputs can be rewritten during ``forward_features``."""

    def __init__(
        self, model: nn.Module, image_size: int, stage_modules: Sequence[str] | None = None
    ) -> None:
        super().__init__()
        self.model = model
        names = list(stage_modules or default_stage_modules(model))
        self.stages = probe_stages(model, names, image_size)
        self._rewrite: StageRewrite | None = None
        for i, stage in enumerate(self.stages):
            model.get_submodule(stage.module).register_forward_hook(self._hook(i))

    @property
    def num_features(self) -> int:
        return int(self.model.num_features)

    def _hook(self, index: int):
        def hook(module: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor | None:
            if self._rewrite is None:
                return None
            if self.stages[index].channels_last:
                return self._rewrite(index, out.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            return self._rewrite(index, out)

        return hook

    def forward(self, image: torch.Tensor, rewrite: StageRewrite | None = None) -> torch.Tensor:
        """The last stage's features (after the model's final norm), channels-first."""
        self._rewrite = rewrite
        try:
            feats = self.model.forward_features(image)
        finally:
            self._rewrite = None
        return feats.permute(0, 3, 1, 2) if self.stages[-1].channels_last else feats


def default_stage_modules(model: nn.Module) -> list[str]:
    """timm's feature levels; a patch embedding first when the model has only four levels."""
    names = [f["module"] for f in model.feature_info]
    if len(names) == 4 and hasattr(model, "patch_embed"):
        names.insert(0, "patch_embed")
    return names


@torch.no_grad()
def probe_stages(model: nn.Module, names: Sequence[str], image_size: int) -> list[Stage]:
    """Each stage's channels, grid and layout, from one forward pass of a blank image."""
    channels = {f["module"]: int(f["num_chs"]) for f in model.feature_info}
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [
        model.get_submodule(n).register_forward_hook(
            lambda m, a, o, n=n: shapes.__setitem__(n, tuple(o.shape))
        )
        for n in names
    ]
    was_training = model.training
    try:
        model.eval()
        model.forward_features(torch.zeros(1, 3, image_size, image_size))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    nhwc = getattr(model, "output_fmt", "NCHW") == "NHWC"
    stages = []
    for n in names:
        shape = shapes[n]
        c = channels.get(n)
        last = nhwc if c is None or shape[1] == shape[-1] else shape[-1] == c
        c = shape[-1] if last else shape[1]
        grid = (shape[1], shape[2]) if last else (shape[2], shape[3])
        stages.append(Stage(n, int(c), grid, last))
    return stages
