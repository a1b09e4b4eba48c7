"""Superpixel pooling/unpooling and the region shuffle against numpy loops and scikit-image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.measure import regionprops
from skimage.segmentation import slic

from samcache.heads.superpixel_ops import (
    SuperpixelAttention,
    draw_region_permutation,
    regions_divide,
    shuffle_regions,
    superpixel_overlap,
    superpixel_pool,
    superpixel_smooth,
    superpixel_unpool,
)


def random_labels(rng: np.random.Generator, B: int, H: int, W: int, n: int) -> np.ndarray:
    """Blocky labels with ids 0..n-1 (some absent when n is large)."""
    return rng.integers(0, n, size=(B, H, W)).astype(np.int64)


def slic_labels(rng: np.random.Generator, B: int, H: int, W: int) -> np.ndarray:
    out = []
    for _ in range(B):
        img = rng.random((H, W, 3))
        img[: H // 2] += 0.8  # some structure so SLIC's segments are not all alike
        out.append(slic(img, n_segments=25, compactness=5.0, start_label=0, channel_axis=-1))
    return np.stack(out).astype(np.int64)


def upsample_nearest(f: np.ndarray, H: int, W: int) -> np.ndarray:
    """(C, h, w) -> (C, H, W) by the floor rule, written as a loop over pixels."""
    C, h, w = f.shape
    out = np.zeros((C, H, W), dtype=f.dtype)
    for y in range(H):
        for x in range(W):
            out[:, y, x] = f[:, (y * h) // H, (x * w) // W]
    return out


def numpy_pool(f: np.ndarray, labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) means and (N,) sizes of one image, a loop over superpixels at pixel resolution."""
    up = upsample_nearest(f, *labels.shape)
    means = np.zeros((n, f.shape[0]))
    sizes = np.zeros(n)
    for i in range(n):
        mask = labels == i
        sizes[i] = mask.sum()
        if sizes[i]:
            means[i] = up[:, mask].mean(axis=1)
    return means, sizes


def numpy_unpool(r: np.ndarray, labels: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(C, h, w): broadcast R to the pixels, then average each floor-rule cell."""
    H, W = labels.shape
    h, w = grid
    full = r[labels].transpose(2, 0, 1)  # (C, H, W)
    out = np.zeros((r.shape[1], h, w))
    rows = (np.arange(H) * h) // H
    cols = (np.arange(W) * w) // W
    for i in range(h):
        for j in range(w):
            out[:, i, j] = full[:, rows == i][:, :, cols == j].mean(axis=(1, 2))
    return out


def as_t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def test_full_resolution_pool_is_the_segment_mean_and_matches_regionprops():
    rng = np.random.default_rng(0)
    labels = slic_labels(rng, 2, 24, 20)
    feats = rng.normal(size=(2, 3, 24, 20))
    regions, sizes = superpixel_pool(as_t(feats), as_t(labels))
    n = int(labels.max()) + 1
    assert regions.shape == (2, n, 3) and sizes.shape == (2, n)
    for b in range(2):
        ref_means, ref_sizes = numpy_pool(feats[b], labels[b], n)
        np.testing.assert_allclose(regions[b].numpy(), ref_means, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(sizes[b].numpy(), ref_sizes)
        props = regionprops(labels[b] + 1, intensity_image=feats[b].transpose(1, 2, 0))
        for p in props:
            np.testing.assert_allclose(regions[b, p.label - 1].numpy(), p.intensity_mean)
            assert sizes[b, p.label - 1] == p.area


def test_full_resolution_unpool_is_the_broadcast():
    rng = np.random.default_rng(1)
    labels = random_labels(rng, 2, 9, 7, 6)
    r = rng.normal(size=(2, 6, 4))
    out = superpixel_unpool(as_t(r), as_t(labels), (9, 7))
    for b in range(2):
        np.testing.assert_array_equal(out[b].numpy(), r[b][labels[b]].transpose(2, 0, 1))


@pytest.mark.parametrize(
    ("H", "W", "h", "w"),
    [(16, 16, 4, 4), (12, 8, 6, 2), (10, 10, 3, 3), (11, 7, 4, 5), (5, 5, 1, 1)],
)
def test_coarse_grid_pool_and_unpool_match_the_pixel_loops(H, W, h, w):
    rng = np.random.default_rng(H * 100 + w)
    labels = slic_labels(rng, 2, H, W) if H >= 10 else random_labels(rng, 2, H, W, 4)
    n = int(labels.max()) + 1
    feats = rng.normal(size=(2, 3, h, w))
    regions, sizes = superpixel_pool(as_t(feats), as_t(labels))
    back = superpixel_unpool(regions, as_t(labels), (h, w))
    for b in range(2):
        ref_means, ref_sizes = numpy_pool(feats[b], labels[b], n)
        np.testing.assert_allclose(regions[b].numpy(), ref_means, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(sizes[b].numpy(), ref_sizes)
        ref_back = numpy_unpool(ref_means, labels[b], (h, w))
        np.testing.assert_allclose(back[b].numpy(), ref_back, rtol=1e-12, atol=1e-12)
    smooth = superpixel_smooth(as_t(feats), as_t(labels))
    np.testing.assert_allclose(smooth.numpy(), back.numpy(), rtol=1e-12, atol=1e-12)


def test_divisible_unpool_is_avg_pool_of_the_pixel_broadcast():
    rng = np.random.default_rng(2)
    labels = slic_labels(rng, 2, 32, 32)
    r = as_t(rng.normal(size=(2, int(labels.max()) + 1, 5)))
    full = superpixel_unpool(r, as_t(labels), (32, 32))
    coarse = superpixel_unpool(r, as_t(labels), (8, 8))
    torch.testing.assert_close(coarse, F.avg_pool2d(full, 4), rtol=1e-12, atol=1e-12)


def test_overlap_counts_every_pixel_once():
    rng = np.random.default_rng(3)
    labels = random_labels(rng, 3, 10, 10, 5)
    o = superpixel_overlap(as_t(labels), (3, 3), n=7)
    assert o.shape == (3, 7, 9) and o.dtype == torch.float32
    assert o.sum().item() == 300
    np.testing.assert_array_equal(o[:, 5:].numpy(), 0)  # ids 5, 6 never occur
    # floor rule on 10 pixels over 3 cells: rows/cols of 4, 3, 3 pixels
    np.testing.assert_array_equal(o.sum(1)[0].numpy(), np.outer([4, 3, 3], [4, 3, 3]).ravel())


def test_label_gaps_give_empty_superpixels():
    labels = torch.tensor([[[0, 0, 4, 4], [0, 0, 4, 4], [7, 7, 7, 7], [7, 7, 7, 7]]])
    feats = torch.arange(16, dtype=torch.float64).reshape(1, 1, 4, 4)
    regions, sizes = superpixel_pool(feats, labels)
    assert regions.shape == (1, 8, 1)
    np.testing.assert_array_equal(sizes[0].numpy(), [4, 0, 0, 0, 4, 0, 0, 8])
    np.testing.assert_array_equal(regions[0, :, 0].numpy(), [2.5, 0, 0, 0, 4.5, 0, 0, 11.5])
    back = superpixel_unpool(regions, labels, (2, 2))
    np.testing.assert_array_equal(back[0, 0].numpy(), [[2.5, 4.5], [11.5, 11.5]])


def test_float64_is_exact_and_dtypes_are_kept():
    labels = torch.tensor([[[0, 1], [1, 1]]])
    feats = torch.tensor([[[[0.1, 0.2], [0.3, 0.4]]]], dtype=torch.float64)
    regions, _ = superpixel_pool(feats, labels)
    assert regions.dtype == torch.float64
    assert regions[0, 1, 0].item() == (0.2 + 0.3 + 0.4) / 3
    half = superpixel_smooth(feats.to(torch.bfloat16), labels)
    assert half.dtype == torch.bfloat16


def test_gradients_flow_through_pool_and_unpool():
    rng = np.random.default_rng(4)
    labels = as_t(slic_labels(rng, 2, 20, 20))
    feats = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f: superpixel_smooth(f, labels), (feats,))
    regions, _ = superpixel_pool(feats, labels)
    regions.sum().backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0


def test_n_too_small_labels_negative_and_fine_grids_are_refused():
    labels = torch.tensor([[[0, 3], [1, 2]]])
    with pytest.raises(ValueError, match="n=3"):
        superpixel_overlap(labels, (2, 2), n=3)
    with pytest.raises(ValueError, match=">= 0"):
        superpixel_overlap(-labels, (2, 2))
    with pytest.raises(ValueError, match="no finer"):
        superpixel_pool(torch.zeros(1, 1, 4, 4), labels)


def test_sanet_size_blocks_equal_window_means():
    # SANet's working size: B = 5, ~150 superpixels, 256 x 256 labels, a 64 x 64 grid. Each
    # 16 x 16 label block covers a whole 4 x 4 window of cells, so a superpixel's mean is the
    # mean of its blocks' 4 x 4 window means.
    g = torch.Generator().manual_seed(0)
    coarse = torch.randint(0, 150, (5, 16, 16), generator=g)
    labels = coarse.repeat_interleave(16, 1).repeat_interleave(16, 2)
    feats = torch.randn(5, 32, 64, 64, generator=g, dtype=torch.float64)
    regions, sizes = superpixel_pool(feats, labels, n=150)
    windows = F.avg_pool2d(feats, 4).numpy()
    for b in range(5):
        for i in range(150):
            where = coarse[b].numpy() == i
            assert sizes[b, i] == 256 * where.sum()
            ref = windows[b][:, where].mean(axis=1) if where.any() else np.zeros(32)
            np.testing.assert_allclose(regions[b, i].numpy(), ref, rtol=1e-10, atol=1e-12)
    out = superpixel_smooth(feats, labels)
    back = regions.numpy()[np.arange(5)[:, None, None], coarse.numpy()]  # (5, 16, 16, 32)
    ref = back.transpose(0, 3, 1, 2).repeat(4, axis=2).repeat(4, axis=3)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", ["concat", "sum"])
def test_superpixel_attention_shapes_and_modes(mode):
    torch.manual_seed(0)
    sam = SuperpixelAttention(4, 6, mode=mode)
    assert sam.w.in_channels == (8 if mode == "concat" else 4) and sam.w.kernel_size == (1, 1)
    labels = as_t(slic_labels(np.random.default_rng(5), 2, 16, 16))
    feats = torch.randn(2, 4, 8, 8, requires_grad=True)
    out = sam(feats, labels)
    assert out.shape == (2, 6, 8, 8)
    smooth = superpixel_smooth(feats, labels)
    mixed = torch.cat([smooth, feats], 1) if mode == "concat" else smooth + feats
    torch.testing.assert_close(out, F.conv2d(mixed, sam.w.weight, sam.w.bias))
    out.sum().backward()
    assert torch.isfinite(feats.grad).all() and sam.w.weight.grad is not None


def test_superpixel_attention_refuses_unknown_modes():
    with pytest.raises(ValueError, match=r"head_args\.superpixel_mode.*concat.*sum"):
        SuperpixelAttention(4, 4, mode="product")


# --- region shuffle --------------------------------------------------------------------------


def cells_of(x: np.ndarray, n: int) -> list[np.ndarray]:
    """Row-major list of the n x n cells of a (..., S, S) array, a plain loop."""
    c = x.shape[-1] // n
    return [x[..., i * c : (i + 1) * c, j * c : (j + 1) * c] for i in range(n) for j in range(n)]


def test_permutations_are_permutations_within_the_proven_bound():
    n = 7
    perm = draw_region_permutation(200, n, torch.Generator().manual_seed(0))
    assert perm.shape == (200, 49) and perm.dtype == torch.long
    assert (perm.sort(1).values == torch.arange(49)).all()
    src_r, src_c = perm // n, perm % n
    out_r, out_c = torch.arange(49) // n, torch.arange(49) % n
    # k = 1: each pass moves a cell at most ceil(2k) - 1 = 1 place along its axis
    assert (src_r - out_r).abs().max() == 1 and (src_c - out_c).abs().max() == 1
    wide = draw_region_permutation(200, n, torch.Generator().manual_seed(1), k=1.5)
    assert ((wide // n) - out_r).abs().max() == 2 and ((wide % n) - out_c).abs().max() == 2
    still = draw_region_permutation(3, n, torch.Generator().manual_seed(2), k=0.0)
    assert (still == torch.arange(49)).all()


def test_permutations_are_reproducible():
    a = draw_region_permutation(4, 7, torch.Generator().manual_seed(9))
    b = draw_region_permutation(4, 7, torch.Generator().manual_seed(9))
    c = draw_region_permutation(4, 7, torch.Generator().manual_seed(10))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_shuffle_moves_cells_as_the_permutation_says():
    n = 7
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 2, 28, 28, generator=g)
    perm = draw_region_permutation(3, n, g)
    y = shuffle_regions(x, perm, n)
    for b in range(3):
        src = cells_of(x[b].numpy(), n)
        dst = cells_of(y[b].numpy(), n)
        for o in range(n * n):
            np.testing.assert_array_equal(dst[o], src[perm[b, o]])
        key = sorted(c.tobytes() for c in src)
        assert key == sorted(c.tobytes() for c in dst)  # multiset of cells kept


def test_remainder_strip_stays_and_int_labels_keep_dtype():
    n = 7
    labels = torch.arange(2 * 31 * 30, dtype=torch.int32).reshape(2, 31, 30)
    perm = draw_region_permutation(2, n, torch.Generator().manual_seed(4))
    out = shuffle_regions(labels, perm, n)
    assert out.dtype == torch.int32 and out.shape == labels.shape
    assert torch.equal(out[:, 28:], labels[:, 28:]) and torch.equal(
        out[:, :, 28:], labels[:, :, 28:]
    )
    assert torch.equal(
        out[:, :28, :28].flatten().sort().values, labels[:, :28, :28].flatten().sort().values
    )
    with pytest.raises(ValueError, match="6 pixels.*n=7"):
        shuffle_regions(torch.zeros(1, 6, 30), perm[:1], n)


def test_shuffle_commutes_with_exact_pooling():
    n = 7
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 3, 56, 56, generator=g, dtype=torch.float64)
    perm = draw_region_permutation(4, n, g)
    assert regions_divide(56, n) and regions_divide(28, n) and not regions_divide(30, n)
    torch.testing.assert_close(
        F.avg_pool2d(shuffle_regions(x, perm, n), 2), shuffle_regions(F.avg_pool2d(x, 2), perm, n)
    )


def test_same_permutation_keeps_image_mask_and_labels_aligned():
    n = 7
    g = torch.Generator().manual_seed(6)
    image = torch.randn(2, 3, 35, 35, generator=g)
    mask = (image[:, :1] > 0).float()  # a function of the image, pixel by pixel
    labels = torch.arange(35 * 35).reshape(1, 35, 35).repeat(2, 1, 1)
    perm = draw_region_permutation(2, n, g)
    s_image, s_mask, s_labels = (shuffle_regions(t, perm, n) for t in (image, mask, labels))
    torch.testing.assert_close(s_mask, (s_image[:, :1] > 0).float())
    # labels record where each pixel came from: the image there is the image moved
    src = image.flatten(2).gather(2, s_labels.flatten(1)[:, None].expand(-1, 3, -1))
    torch.testing.assert_close(src.reshape(image.shape), s_image)


def test_shuffle_checks_perm_shape_and_device_gather_is_differentiable():
    x = torch.randn(2, 1, 14, 14, requires_grad=True)
    perm = draw_region_permutation(2, 7)
    with pytest.raises(ValueError, match="perm"):
        shuffle_regions(x, perm[:1], 7)
    shuffle_regions(x, perm, 7).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
