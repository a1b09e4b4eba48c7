"""Forward hooks that record tapped encoder outputs during the official forward pass.

``patch_embed`` is the output of ``ImageEncoderViT.patch_embed`` (before the absolute position
embedding is added, exactly what the module returns); ``block:<i>`` is the output of the i-th
transformer block (1-based, as in the papers: ViT-H's blocks 1, 16 and 32); ``neck`` is the
encoder's final output (the image embedding SAM's mask decoder reads). Every tap is returned
channels-first, (B, C, H, W).

Reading of seed 000 (Gu et al.): the paper gives every tapped output as 64 x 64 x 256, but in
ViT-H only the neck has 256 channels; the patch embedding and the blocks have 1280. The taps are
stored as the encoder produces them, and a head that needs 256 channels projects them itself.

When no tap needs the rest of the network, the forward pass stops after the deepest tapped
module instead of computing blocks whose output would be thrown away.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from samcache.features.specs import TapSpec


class _StopForward(Exception):
    pass


class TapRecorder:
    def __init__(self, encoder: nn.Module, taps: Sequence[TapSpec]) -> None:
        self.encoder = encoder
        self.taps = tuple(taps)
        self.modules: dict[str, nn.Module] = {}
        for t in self.taps:
            if t.name == "patch_embed":
                self.modules[t.name] = encoder.patch_embed
            elif t.name == "neck":
                self.modules[t.name] = encoder.neck
            else:
                self.modules[t.name] = encoder.blocks[t.block_index]
        order = {"patch_embed": -1, "neck": len(encoder.blocks)}
        self.last = max(self.taps, key=lambda t: order.get(t.name, t.block_index)).name
        self.outputs: dict[str, torch.Tensor] = {}

    def _hook(self, name: str):
        def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            out = output if name == "neck" else output.permute(0, 3, 1, 2)
            self.outputs[name] = out
            if name == self.last and name != "neck":
                raise _StopForward

        return hook

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.outputs = {}
        handles = [m.register_forward_hook(self._hook(n)) for n, m in self.modules.items()]
        try:
            self.encoder(x)
        except _StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        return {t.name: self.outputs[t.name] for t in self.taps}
