"""Device selection."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """A batch dict with every tensor (and every tensor in a nested dict, e.g. taps) on device."""
    return {
        k: ({n: t.to(device) for n, t in v.items()} if isinstance(v, dict) else v.to(device))
        for k, v in batch.items()
    }
