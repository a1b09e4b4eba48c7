"""What a forward pass of an encoder costs, and how long it will take here.

``encoder_flops`` counts the floating-point operations of segment-anything's ``ImageEncoderViT``
analytically (two per multiply-add, the convention of ``torch.utils.flop_counter``, which the
tests use as the reference). ``cpu_time_estimate`` turns it into a wall-time estimate from a
short matrix-multiply probe, so that a user who is about to run ViT-H on a CPU learns before the
first batch how many hours that is.
"""

from __future__ import annotations

import math
import time

import torch

from samcache.features.specs import EncoderSpec


def encoder_flops(spec: EncoderSpec, blocks: int | None = None, neck: bool = True) -> int:
    """FLOPs of one image through patch embedding, the first ``blocks`` blocks and the neck.

    Counts matrix multiplications and convolutions (what ``FlopCounterMode`` counts); norms,
    softmax, GELU and additions are a few percent and are left out, as in every MFU figure.
    Windowed blocks pad the token grid to a multiple of the window, so their attention layers
    run on the padded grid while the MLP runs on the original one, as in ``Block.forward``.
    """
    g, d, p = spec.grid, spec.embed_dim, spec.patch_size
    tokens = g * g
    depth = spec.depth if blocks is None else blocks
    macs = tokens * 3 * p * p * d  # patch embedding: a p x p convolution with stride p
    for i in range(depth):
        if i in spec.global_attn_indexes:
            side, n_windows = g, 1
        else:
            side = spec.window_size
            n_windows = math.ceil(g / side) ** 2
        t = side * side  # tokens per window
        attn_tokens = n_windows * t
        macs += attn_tokens * 4 * d * d  # qkv and output projection
        macs += n_windows * 2 * t * t * d  # scores and the weighted sum of values, all heads
        macs += n_windows * 2 * t * side * d  # decomposed relative position (rows and columns)
        macs += tokens * 8 * d * d  # MLP with ratio 4
    if neck:
        c = spec.out_chans
        macs += tokens * d * c + tokens * 9 * c * c  # 1x1 then 3x3 convolution
    return 2 * macs


def matmul_tflops(
    device: torch.device, dtype: torch.dtype = torch.float32, seconds: float = 0.3
) -> float:
    """Dense matrix-multiply throughput measured here (TFLOP/s): a practical ceiling."""
    n = 2048 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    (a @ b).sum().item()  # warm-up (and CUDA context)
    done, start = 0, time.perf_counter()
    while True:
        c = a @ b
        done += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
    del c
    return done * 2 * n**3 / elapsed / 1e12


def cpu_time_estimate(spec: EncoderSpec, n_images: int, blocks: int | None = None) -> str:
    """A sentence: FLOPs per image, this CPU's measured rate, and the least time it will take."""
    flops = encoder_flops(spec, blocks)
    rate = matmul_tflops(torch.device("cpu")) * 1e12
    per_image = flops / rate
    total = per_image * n_images
    return (
        f"{spec.name} on a CPU: {flops / 1e12:.2f} TFLOP per image; this CPU multiplies matrices "
        f"at {rate / 1e9:.0f} GFLOP/s, so expect at least {per_image:.0f} s per image and "
        f"{_duration(total)} for {n_images} images. A CUDA GPU is typically 100x faster: run the "
        "features rule where one is available (it asks for resources: gpu=1)."
    )


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
