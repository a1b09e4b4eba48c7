"""A fused attention path for SAM's image encoder, equal to the original within rounding.

segment-anything's ``Attention.forward`` materialises the full score matrix, adds the decomposed
relative-position bias (``add_decomposed_rel_pos``), applies softmax and multiplies by the
values: three passes over a (B*heads, HW, HW) tensor, 4096 x 4096 per head in ViT-H's global
blocks. ``SdpaAttention`` computes the same bias and hands it to
``torch.nn.functional.scaled_dot_product_attention`` as an additive ``attn_mask``, which lets
PyTorch pick a fused kernel (memory-efficient attention on CUDA, the flash kernel on CPU).

The bias is exactly segment-anything's: ``rel_h[q, kh] + rel_w[q, kw]`` with ``rel_h`` and
``rel_w`` from the *unscaled* query and ``get_rel_pos`` (the library's own function). The two
paths differ only in the order of floating-point operations; ``attention_error`` measures that
difference on real inputs and ``choose_attention`` uses the fused path only where it is no less
accurate than the original one at the same compute precision.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, get_rel_pos
from torch import nn

log = logging.getLogger(__name__)

ATTENTION_IMPLEMENTATIONS = ("auto", "sdpa", "original")

#: float32 compute: the fused path may differ from the original by this much (relative to the
#: output's largest magnitude); both are float32 sums of the same terms in another order.
FP32_RELATIVE_TOLERANCE = 1e-4


def decomposed_rel_pos_bias(
    q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """The additive bias of ``add_decomposed_rel_pos`` as a (B, heads, HW, HW) tensor.

    ``q``: the unscaled queries, (B, heads, H*W, head_dim).
    """
    b, n_heads, _, dim = q.shape
    h, w = size
    rh = get_rel_pos(h, h, rel_pos_h)  # (h, h, dim)
    rw = get_rel_pos(w, w, rel_pos_w)  # (w, w, dim)
    r_q = q.reshape(b * n_heads, h, w, dim)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, rh)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, rw)
    bias = rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]
    return bias.reshape(b, n_heads, h * w, h * w)


class SdpaAttention(Attention):
    """segment-anything's ``Attention`` with the scores, bias and softmax fused by SDPA.

    Same parameters and state dict as ``Attention``; ``use_sdpa`` switches modules to it in place.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, HW, head_dim)
        bias = None
        if self.use_rel_pos:
            bias = decomposed_rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, (h, w)).to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        out = out.view(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
        return self.proj(out)


def _attention_modules(encoder: nn.Module) -> list[nn.Module]:
    return [m for m in encoder.modules() if isinstance(m, Attention)]


@contextlib.contextmanager
def use_sdpa(encoder: nn.Module, enable: bool = True) -> Iterator[nn.Module]:
    """Switch every ``Attention`` of ``encoder`` to ``SdpaAttention`` (or back) for a while."""
    modules = _attention_modules(encoder)
    before = [m.__class__ for m in modules]
    for m in modules:
        m.__class__ = SdpaAttention if enable else Attention
    try:
        yield encoder
    finally:
        for m, cls in zip(modules, before, strict=True):
            m.__class__ = cls


def set_attention(encoder: nn.Module, implementation: str) -> None:
    """Make ``encoder`` use ``"sdpa"`` or ``"original"`` attention from now on."""
    if implementation not in ("sdpa", "original"):
        raise ValueError(f"attention must be 'sdpa' or 'original', not {implementation!r}")
    for m in _attention_modules(encoder):
        m.__class__ = SdpaAttention if implementation == "sdpa" else Attention


def _relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.float()
    return float((got.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


@torch.inference_mode()
def attention_error(
    forward: Callable[[torch.Tensor], torch.Tensor],
    encoder: nn.Module,
    x: torch.Tensor,
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> tuple[float, float]:
    """Errors of the original and the fused path at the compute precision, against float32.

    ``forward(x)`` runs the encoder (or the part of it that is tapped) and returns one tensor;
    ``autocast()`` enters the compute precision (``contextlib.nullcontext`` for float32).
    Returns the largest absolute deviation from the float32 original, relative to the
    reference's largest magnitude, for the original path and for the fused path.
    """
    with use_sdpa(encoder, False):
        reference = forward(x)
        if autocast is contextlib.nullcontext:  # float32: the original path is the reference
            original = reference
        else:
            with autocast():
                original = forward(x)
    with use_sdpa(encoder, True), autocast():
        fused = forward(x)
    return _relative_error(original, reference), _relative_error(fused, reference)


def sdpa_is_exact_enough(original_error: float, fused_error: float) -> bool:
    """The fused path is used when it is no less accurate than the original one.

    At float32 both errors are rounding noise, so the fused path must stay within
    ``FP32_RELATIVE_TOLERANCE``; at a lower compute precision it may not be more than 1.5 times
    further from the float32 result than the original path is (plus the float32 allowance).
    """
    return fused_error <= 1.5 * original_error + FP32_RELATIVE_TOLERANCE
