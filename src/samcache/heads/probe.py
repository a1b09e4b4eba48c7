"""Probes on pooled tapped features: the simplest heads, and the demo's.

Each tapped map is averaged over space and the results are concatenated, so the probe sees what
every tapped block knows about the image as a whole. ``linear_probe`` is one linear layer (the
classic measure of a frozen representation); ``mlp_probe`` adds one hidden layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from samcache.heads.base import Head, register_head


@register_head("linear_probe")
class LinearProbe(Head):
    requires = frozenset({"pooled"})

    def __init__(self, in_features: int, n_outputs: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, n_outputs)

    @classmethod
    def from_shapes(
        cls, *, n_outputs: int, input_shapes: Mapping[str, Any], dropout: float = 0.0
    ) -> Head:
        return cls(int(input_shapes["pooled"][0]), n_outputs, dropout=dropout)

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return {"logits": self.fc(self.dropout(batch["pooled"]))}


@register_head("mlp_probe")
class MLPProbe(Head):
    requires = frozenset({"pooled"})

    def __init__(
        self, in_features: int, n_outputs: int, hidden: int = 256, dropout: float = 0.2
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_outputs),
        )

    @classmethod
    def from_shapes(
        cls,
        *,
        n_outputs: int,
        input_shapes: Mapping[str, Any],
        hidden: int = 256,
        dropout: float = 0.2,
    ) -> Head:
        return cls(int(input_shapes["pooled"][0]), n_outputs, hidden=hidden, dropout=dropout)

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return {"logits": self.net(batch["pooled"])}
