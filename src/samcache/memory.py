"""How much GPU memory one training step of a method takes, estimated without a GPU.

Seed 000 trains with "the maximum batch size allowed by the GPU" (a 32 GB V100). The estimate
builds the method's head on PyTorch's ``meta`` device (shapes only, no numbers, no memory), runs
one forward pass and the loss on a batch of the method's input shapes, and adds up:

* the tensors autograd saves for the backward pass (``saved_tensors_hooks``), per sample;
* the batch itself (images and tapped maps as float32 on the device);
* the parameters, their gradients and the optimiser's state (AdamW: two tensors per parameter,
  SGD with momentum: one).

It leaves out the allocator's fragmentation, cuDNN's workspaces and the transient buffers of the
backward pass, which ``HEADROOM`` covers. ``largest_batch`` is the largest multiple of 8 whose
estimate fits a card's memory after that headroom.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

GiB = 2**30
HEADROOM = 0.75  # the share of a card's memory the estimate may fill


def _saved_bytes(fn) -> int:
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def step_bytes(
    method: Mapping[str, Any],
    batch_size: int,
    *,
    image_size: int,
    tap_shapes: Mapping[str, tuple[int, int, int]] | None = None,
    n_outputs: int = 2,
) -> int:
    """Estimated bytes of one training step of ``method`` at ``batch_size`` on a GPU."""
    from samcache.heads import build_head, head_class

    cls = head_class(method["head"])
    shapes: dict[str, Any] = {}
    if "image" in cls.requires:
        shapes["image"] = (3, image_size, image_size)
    if "sam_prior" in cls.requires:
        shapes["sam_prior"] = (1, image_size, image_size)
    if "lesion_mask" in cls.requires:
        shapes["lesion_mask"] = (1, image_size, image_size)
    if "taps" in cls.requires:
        shapes["taps"] = dict(tap_shapes or {})
    args = {k: v for k, v in (method.get("head_args") or {}).items() if k != "checkpoint"}
    with torch.device("meta"):
        head = build_head(method["head"], n_outputs=n_outputs, input_shapes=shapes, **args)
        head.train()
        batch: dict[str, Any] = {"label": torch.zeros(batch_size, dtype=torch.long)}
        for key, shape in shapes.items():
            if key == "taps":
                batch[key] = {t: torch.zeros(batch_size, *s) for t, s in shape.items()}
            else:
                batch[key] = torch.zeros(batch_size, *shape)
        saved = _saved_bytes(lambda: head.loss(head(batch), batch, "binary"))
    inputs = sum(
        x.numel() * 4 for v in batch.values() for x in (v.values() if isinstance(v, dict) else [v])
    )
    params = sum(p.numel() * 4 for p in head.parameters() if p.requires_grad)
    optimiser = (method.get("train") or {}).get("optimizer", "adamw")
    # per parameter: SGD's momentum; Adam's two moments; AMSGrad's maximum of the second too
    states = {"sgd": 1, "amsgrad": 3}.get(optimiser, 2)
    return saved + inputs + params * (2 + states)


def largest_batch(
    method: Mapping[str, Any],
    card_gib: float,
    *,
    image_size: int,
    tap_shapes: Mapping[str, tuple[int, int, int]] | None = None,
) -> int:
    """The largest multiple of 8 whose estimate fits ``HEADROOM`` of a ``card_gib`` card."""
    kw = dict(image_size=image_size, tap_shapes=tap_shapes)
    one, two = step_bytes(method, 8, **kw), step_bytes(method, 16, **kw)
    per8 = two - one  # activations and inputs of 8 samples
    fixed = one - per8
    budget = HEADROOM * card_gib * GiB - fixed
    return max(0, int(budget // per8)) * 8
