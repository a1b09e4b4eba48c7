"""VGG-16 as a trainable image backbone: torchvision's layers, any width, stage outputs by name.

The convolutional part is built with torchvision's own ``make_layers`` from VGG-16's layer list
(configuration "D"), so at ``width = 1`` the module and its parameter names are exactly
torchvision's ``vgg16`` / ``vgg16_bn`` ``features`` and a torchvision ImageNet checkpoint loads
into it. ``width < 1`` scales every stage's channels (the demo's fast, reduced-width VGG).

Weights start random (torchvision's VGG initialisation). Seed 001 fine-tunes an ImageNet
checkpoint; samcache never downloads at run time, so a checkpoint is a local file named in the
method's ``head_args.checkpoint`` (e.g. torchvision's ``vgg16_bn-6c64b313.pth``), read with
``torch.load(weights_only=True)``. A named file that is absent is an error; random weights
are for methods that say ``init: random`` (``samcache.backbone_init``). The run record's
``head_info`` says which.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from samcache.backbone_init import init_info

log = logging.getLogger(__name__)

#: Stage outputs a VGG-16 backbone returns: the feature maps after its 3rd, 4th and 5th pooling.
STAGES = ("pool3", "pool4", "pool5")


def vgg16_layers(width: float) -> list[int | str]:
    """VGG-16's layer list (torchvision configuration "D") with channels scaled by ``width``."""
    from torchvision.models.vgg import cfgs  # imported on use: torchvision costs seconds to load

    if not 0 < width <= 1:
        raise ValueError(f"VGG width must be in (0, 1], got {width}")
    return [v if v == "M" else max(1, round(int(v) * width)) for v in cfgs["D"]]


def init_vgg(module: nn.Module) -> None:
    """torchvision's VGG initialisation (He-normal convolutions, N(0, 0.01) linear layers)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


class VGGBackbone(nn.Module):
    """VGG-16's convolutional stages; ``forward`` returns ``{"pool3", "pool4", "pool5"}``."""

    def __init__(self, width: float = 1.0, batch_norm: bool = True) -> None:
        super().__init__()
        from torchvision.models.vgg import make_layers

        layers = vgg16_layers(width)
        self.features = make_layers(layers, batch_norm=batch_norm)
        init_vgg(self.features)
        pools = [i for i, m in enumerate(self.features) if isinstance(m, nn.MaxPool2d)]
        self._stage_end = dict(zip(STAGES, pools[2:], strict=True))
        widths = [v for v in layers if v != "M"]
        self.channels = {"pool3": widths[6], "pool4": widths[9], "pool5": widths[12]}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out, ends = {}, {i: name for name, i in self._stage_end.items()}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in ends:
                out[ends[i]] = x
        return out


def load_checkpoint_into(
    modules: Mapping[str, nn.Module], checkpoint: str | Path | None, *, key: str
) -> dict[str, Any]:
    """Load a local torchvision-style state dict into named submodules; report what happened.

    ``modules`` maps a key prefix of the checkpoint (``features``, ``classifier.0``) to the
    module that receives the tensors under it. A file that exists but does not fit (missing
    tensors, other shapes: e.g. a ``vgg16`` file for a batch-norm backbone, or a width other
    than 1) is an error naming the file, and so is an absent file.
    """
    if checkpoint is None:  # only methods that say init: random get here
        return init_info(None)
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"{key}: checkpoint {path} does not exist; place the file there (samcache downloads "
            "nothing at run time) or set 'init: random' on the method"
        )
    info = init_info(path)  # refuses a file whose hash differs from the published one
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    for prefix, module in modules.items():
        part = {k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(prefix + ".")}
        try:
            module.load_state_dict(part, strict=True)
        except RuntimeError as err:
            raise ValueError(
                f"{key}: checkpoint {path} does not fit the backbone's '{prefix}' layers "
                f"(is it a VGG-16 file with the same batch_norm setting and width 1?): {err}"
            ) from None
    return info
