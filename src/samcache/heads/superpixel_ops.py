"""Seed 003 (SANet): superpixel average pooling and unpooling, the superpixel attention module
(SAM) and the random shuffle module (RSM), batched on the tensors' device.

Superpixel pooling (paper eq. 1): ``R_i = Σ_{p ∈ S_i} F(p) / |S_i|``. Label maps are (B, H, W)
SLIC labels at image resolution (ids from 0; ids that do not occur have ``|S_i| = 0`` and
``R_i = 0``); feature maps are (B, C, h, w) on a grid no finer than the labels. Resampling rule:
pixel (y, x) belongs to the feature cell that covers it, row ``floor(y h / H)`` and column
``floor(x w / W)``. With ``overlap(i, c)`` the number of pixels of superpixel i in cell c:

* ``pool(F)_i = Σ_c overlap(i, c) F(c) / |S_i|``: the superpixel mean of F nearest-upsampled to
  the pixel grid;
* ``unpool(R)_c = Σ_i overlap(i, c) R_i / |c|``: every pixel given its superpixel's R, then
  averaged over each cell's pixels. Where the grid divides the labels these are the windows of
  ``avg_pool2d`` (the windows of the exact pooled caches); otherwise the cells are the floor-rule
  partition above, not ``adaptive_avg_pool2d``'s overlapping windows.

At h = H, w = W both are the plain segment mean and broadcast, computed directly (a
``scatter_add`` over the pixels and a gather). On a coarser grid only the nonzero entries of
the overlap matrix are formed (one ``unique`` over the pixels' (superpixel, cell) pairs: a
superpixel covers a few cells), and pooling and unpooling are ``index_add`` over them, so
neither the upsampled (B, C, H, W) features nor the dense (B, N, h w) matrix exist (at 1000
superpixels, 10 images and a 256 x 256 grid that matrix would be 2.5 GiB;
``benchmarks/superpixel_pool.py``). ``superpixel_overlap`` gives the dense matrix, for checks.

SAM (eq. 1 of the SAM section): ``P = w ∗ [Unpool(Pool(F)) ⊕ F]``. The text describes a
concatenation of the input and the superpixel features followed by "a matrix convolution"
(``mode="concat"``); the printed equation adds them, ``w ∗ (Unpooling(R) + F)``
(``mode="sum"``). ``w`` is read as a 1x1 convolution: the paper calls it a matrix that
"recalibrates" the two feature sets and gives no kernel size, and a per-pixel channel mix adds
no spatial context beyond the superpixels' own.

RSM: the image is cut into n x n cells (n = 7 in the paper) that are shuffled "with their
nearest neighbours according to uniform distribution in a row-major order", i.e. Destruction and
Construction Learning (Chen et al. 2019, sec. 3.1): in each row of cells, cell j gets the key
``j + r_j`` with ``r_j ~ U(-k, k)`` and the row is reordered by sorting the keys; then the same
in each column. Since ``r_i - r_j < 2k`` a cell can only be overtaken by cells fewer than 2k
places away, so each pass moves a cell by at most ``ceil(2k) - 1`` places (1 for k = 1) and the
whole shuffle moves it at most that far along each axis. The same permutation is applied to
the image, its masks and label maps; mixing shuffled and original images 1:1 in a batch is the
caller's (an identity permutation ``arange(n * n)`` leaves an image as it is).
"""

from __future__ import annotations

import math

import torch
from torch import nn

MODES = ("concat", "sum")


def _check_labels(labels: torch.Tensor, n: int | None) -> tuple[torch.Tensor, int]:
    """``labels`` as int64 and the number of superpixel ids N, after checking both."""
    if labels.dim() != 3:
        raise ValueError(f"superpixel labels must be (B, H, W); got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"superpixel labels must be integers; got {labels.dtype}")
    labels = labels.long()
    if labels.numel() == 0:
        return labels, int(n or 0)
    lo, hi = (int(v) for v in torch.aminmax(labels))  # one device sync for both checks
    if lo < 0:
        raise ValueError(f"superpixel labels must be >= 0 (SLIC with start_label=0); found {lo}")
    if n is None:
        return labels, hi + 1
    if hi >= n:
        raise ValueError(f"superpixel label {hi} does not fit n={n} superpixels")
    return labels, int(n)


def _check_grid(labels: torch.Tensor, grid: tuple[int, int]) -> tuple[int, int]:
    h, w = (int(g) for g in grid)
    H, W = labels.shape[-2:]
    if not (0 < h <= H and 0 < w <= W):
        raise ValueError(
            f"feature grid {h}x{w} must be non-empty and no finer than the {H}x{W} labels "
            "(every cell must cover at least one pixel)"
        )
    return h, w


def _overlap(labels: torch.Tensor, h: int, w: int, n: int) -> torch.Tensor:
    """(B, n, h*w) float32 counts; ``labels`` already checked int64."""
    B, H, W = labels.shape
    dev = labels.device
    rows = torch.arange(H, device=dev) * h // H
    cols = torch.arange(W, device=dev) * w // W
    cell = rows[:, None] * w + cols[None, :]  # (H, W)
    seg = labels + torch.arange(B, device=dev)[:, None, None] * n  # (B, H, W)
    flat = (seg * (h * w) + cell).reshape(-1)
    counts = torch.bincount(flat, minlength=B * n * h * w)
    return counts.reshape(B, n, h * w).float()


def superpixel_overlap(
    labels: torch.Tensor, grid: tuple[int, int], n: int | None = None
) -> torch.Tensor:
    """(B, N, h*w) float pixel counts of each superpixel in each cell; N = n or labels.max()+1."""
    labels, n = _check_labels(labels, n)
    h, w = _check_grid(labels, grid)
    return _overlap(labels, h, w, n)


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half-precision floats hold integers exactly only up to 2048 (bf16: 256): count in float32.
    return torch.promote_types(dtype, torch.float32)


def _pairs(labels: torch.Tensor, h: int, w: int, n: int) -> tuple[torch.Tensor, ...]:
    """The nonzero entries of the overlap matrix: for each (superpixel, cell) pair that shares
    pixels, its row in the (B n) superpixels, its row in the (B h w) cells and the pixel count.
    A superpixel covers a few cells, so these are far fewer than the matrix's B n h w entries."""
    B, H, W = labels.shape
    dev = labels.device
    cell = (torch.arange(H, device=dev) * h // H)[:, None] * w + (
        torch.arange(W, device=dev) * w // W
    )[None, :]
    batch = torch.arange(B, device=dev)[:, None, None]
    flat = ((labels + batch * n) * (h * w) + cell).reshape(-1)
    pairs, counts = torch.unique(flat, return_counts=True)
    segment = pairs // (h * w)
    return segment, segment // n * (h * w) + pairs % (h * w), counts


def _pool(
    features: torch.Tensor, pairs: tuple[torch.Tensor, ...], n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    B, C, h, w = features.shape
    segment, cell, counts = pairs
    dt = _work_dtype(features.dtype)
    weight = counts.to(dt)
    rows = features.to(dt).reshape(B, C, h * w).transpose(1, 2).reshape(B * h * w, C)
    sums = rows.new_zeros(B * n, C).index_add_(0, segment, rows[cell] * weight[:, None])
    sizes = weight.new_zeros(B * n).index_add_(0, segment, weight)
    regions = sums / sizes.clamp_min(1)[:, None]  # absent ids: 0 / 1 = 0
    return regions.view(B, n, C).to(features.dtype), sizes.view(B, n).to(features.dtype)


def _unpool(regions: torch.Tensor, pairs: tuple[torch.Tensor, ...], h: int, w: int) -> torch.Tensor:
    B, n, C = regions.shape
    segment, cell, counts = pairs
    dt = _work_dtype(regions.dtype)
    weight = counts.to(dt)
    rows = regions.to(dt).reshape(B * n, C)
    out = rows.new_zeros(B * h * w, C).index_add_(0, cell, rows[segment] * weight[:, None])
    pixels = weight.new_zeros(B * h * w).index_add_(0, cell, weight)  # never 0: cells cover pixels
    out = out / pixels[:, None]
    return out.view(B, h * w, C).transpose(1, 2).reshape(B, C, h, w).to(regions.dtype)


def _pool_pixels(
    features: torch.Tensor, labels: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooling on the labels' own grid: a scatter-add of the pixels into their superpixels."""
    B, C = features.shape[:2]
    dt = _work_dtype(features.dtype)
    index = labels.reshape(B, 1, -1)
    sums = features.new_zeros((B, C, n), dtype=dt).scatter_add_(
        2, index.expand(B, C, -1), features.reshape(B, C, -1).to(dt)
    )
    sizes = torch.zeros((B, n), dtype=dt, device=features.device)
    sizes.scatter_add_(1, index[:, 0], torch.ones_like(index[:, 0], dtype=dt))
    regions = (sums / sizes.clamp_min(1)[:, None]).transpose(1, 2)
    return regions.to(features.dtype), sizes.to(features.dtype)


def _unpool_pixels(regions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Unpooling on the labels' own grid: each pixel its superpixel's row of ``regions``."""
    B, _, C = regions.shape
    H, W = labels.shape[-2:]
    index = labels.reshape(B, 1, -1).expand(B, C, -1)
    return regions.transpose(1, 2).gather(2, index).reshape(B, C, H, W)


def _full(labels: torch.Tensor, h: int, w: int) -> bool:
    return (h, w) == tuple(labels.shape[-2:])


def _check_batch(x: torch.Tensor, labels: torch.Tensor, what: str) -> None:
    if x.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{what} batch {x.shape[0]} differs from the labels' batch {labels.shape[0]}"
        )


def superpixel_pool(
    features: torch.Tensor, labels: torch.Tensor, n: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, C) regional means R and (B, N) superpixel sizes |S_i| in pixels."""
    if features.dim() != 4:
        raise ValueError(f"features must be (B, C, h, w); got {tuple(features.shape)}")
    labels, n = _check_labels(labels.to(features.device), n)
    _check_batch(features, labels, "features")
    h, w = _check_grid(labels, features.shape[-2:])
    if _full(labels, h, w):
        return _pool_pixels(features, labels, n)
    return _pool(features, _pairs(labels, h, w, n), n)


def superpixel_unpool(
    regions: torch.Tensor, labels: torch.Tensor, grid: tuple[int, int]
) -> torch.Tensor:
    """(B, C, h, w): each cell the pixel-weighted mean of the R_i of the superpixels covering it."""
    if regions.dim() != 3:
        raise ValueError(f"regions must be (B, N, C); got {tuple(regions.shape)}")
    labels, n = _check_labels(labels.to(regions.device), regions.shape[1])
    _check_batch(regions, labels, "regions")
    h, w = _check_grid(labels, grid)
    if _full(labels, h, w):
        return _unpool_pixels(regions, labels)
    return _unpool(regions, _pairs(labels, h, w, n), h, w)


def superpixel_smooth(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Unpool(Pool(F)) on F's own grid (what the superpixel attention module adds to F)."""
    if features.dim() != 4:
        raise ValueError(f"features must be (B, C, h, w); got {tuple(features.shape)}")
    labels, n = _check_labels(labels.to(features.device), None)
    _check_batch(features, labels, "features")
    h, w = _check_grid(labels, features.shape[-2:])
    if _full(labels, h, w):
        return _unpool_pixels(_pool_pixels(features, labels, n)[0], labels)
    pairs = _pairs(labels, h, w, n)  # found once for both directions
    return _unpool(_pool(features, pairs, n)[0], pairs, h, w)


class SuperpixelAttention(nn.Module):
    """SANet's SAM: ``P = w ∗ [Unpool(Pool(F)) ⊕ F]`` with ``w`` a 1x1 convolution.

    ``mode="concat"`` (the text): the superpixel features and F concatenated on channels, then
    w (2 C -> out); ``mode="sum"`` (eq. 1 as printed): their sum, then w (C -> out).
    """

    def __init__(self, in_channels: int, out_channels: int, mode: str = "concat") -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"head_args.superpixel_mode must be one of {MODES}; got {mode!r}")
        self.mode = mode
        width = 2 * in_channels if mode == "concat" else in_channels
        self.w = nn.Conv2d(width, out_channels, kernel_size=1)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        smooth = superpixel_smooth(features, labels)
        if self.mode == "concat":
            return self.w(torch.cat([smooth, features], dim=1))
        return self.w(smooth + features)


# --- random shuffle module -------------------------------------------------------------------


def regions_divide(side: int, n: int) -> bool:
    """True when ``side`` pixels split into n equal cells with no remainder strip."""
    return n > 0 and side >= n and side % n == 0


def _dcl_orders(batch: int, n: int, k: float, generator: torch.Generator | None) -> torch.Tensor:
    """(B, n, n) long: for each line, the source position of every output position."""
    jitter = (2 * torch.rand(batch, n, n, generator=generator, dtype=torch.float64) - 1) * k
    keys = torch.arange(n, dtype=torch.float64) + jitter  # U(-k, k) since rand is in [0, 1)
    return torch.argsort(keys, dim=-1, stable=True)


def draw_region_permutation(
    batch: int, n: int, generator: torch.Generator | None = None, k: float = 1.0
) -> torch.Tensor:
    """(B, n*n) long: output cell r*n+c takes input cell perm[b, r*n+c] (DCL's row then column
    shuffle).

    Row pass: output (r, c) of the intermediate takes input (r, rows[b, r, c]); column pass:
    output (r, c) takes intermediate (cols[b, c, r], c). Each pass moves a cell at most
    ``ceil(2k) - 1`` places along its axis (see the module docstring).
    """
    if n < 1:
        raise ValueError(f"region shuffle needs n >= 1 cells per side; got {n}")
    if not (k >= 0 and math.isfinite(k)):
        raise ValueError(f"region shuffle range k must be finite and >= 0; got {k}")
    rows = _dcl_orders(batch, n, k, generator)  # rows[b, r, c]: source column in row r
    cols = _dcl_orders(batch, n, k, generator)  # cols[b, c, r]: source row in column c
    src_r = cols.transpose(1, 2)  # (B, r, c)
    src_c = torch.gather(rows, 1, src_r)  # rows[b, src_r[b, r, c], c]
    return (src_r * n + src_c).reshape(batch, n * n)


def shuffle_regions(x: torch.Tensor, perm: torch.Tensor, n: int) -> torch.Tensor:
    """x (B, ..., S_h, S_w) with its cells moved per perm. Cells are floor(S/n) pixels wide; when
    S is not a multiple of n the remainder strip (last S - n*floor(S/n) rows/cols) stays in place.
    Raises ValueError (saying the side and n) if floor(S/n) == 0."""
    if x.dim() < 3:
        raise ValueError(f"shuffle_regions needs (B, ..., S_h, S_w); got {tuple(x.shape)}")
    B = x.shape[0]
    S_h, S_w = x.shape[-2:]
    for side in (S_h, S_w):
        if side // n == 0:
            raise ValueError(f"a side of {side} pixels cannot be cut into n={n} regions")
    if tuple(perm.shape) != (B, n * n):
        raise ValueError(f"perm must be ({B}, {n * n}) for n={n}; got {tuple(perm.shape)}")
    ch, cw = S_h // n, S_w // n
    core = x[..., : n * ch, : n * cw].reshape(B, -1, n, ch, n, cw)
    cells = core.permute(0, 1, 2, 4, 3, 5).reshape(B, -1, n * n, ch, cw)
    index = perm.to(x.device).long()[:, None, :, None, None].expand_as(cells)
    moved = torch.gather(cells, 2, index)
    moved = moved.reshape(B, -1, n, n, ch, cw).permute(0, 1, 2, 4, 3, 5)
    out = x.clone()
    out[..., : n * ch, : n * cw] = moved.reshape(x.shape[:-2] + (n * ch, n * cw))
    return out
