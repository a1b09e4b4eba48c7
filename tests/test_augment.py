from __future__ import annotations

import numpy as np
import torch

from samcache.augment import AugmentSpec, augment, random_affine, warp
from samcache.inputs import RunInputs, batches, class_balanced_order


def test_flip_only_is_an_exact_flip():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    spec = AugmentSpec(hflip=True, vflip=False, crop_scale=(1.0, 1.0))
    g = torch.Generator().manual_seed(0)
    theta = random_affine(2, spec, g)
    out = warp(x, theta, "bilinear")
    for i in range(2):
        flipped = theta[i, 0, 0] < 0
        expected = torch.flip(x[i], dims=[-1]) if flipped else x[i]
        torch.testing.assert_close(out[i], expected)


def test_image_masks_and_maps_move_together():
    """A mask drawn from the image, warped with it, still marks the same pixels of the image;
    a coarse map of the same scene stays aligned at its own resolution."""
    n, s = 6, 32
    yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
    img = torch.zeros(n, 3, s, s)
    mask = torch.zeros(n, 1, s, s)
    for i in range(n):
        blob = ((yy - 8 - i) ** 2 + (xx - 20 + i) ** 2) < 30
        img[i, :, blob] = 1.0
        mask[i, 0, blob] = 1.0
    coarse = torch.nn.functional.avg_pool2d(mask, 4)
    batch = {"label": torch.zeros(n), "image": img, "lesion_mask": mask, "taps": {"t": coarse}}
    out = augment(batch, AugmentSpec(crop_scale=(0.6, 0.9)), torch.Generator().manual_seed(1))
    bright = out["image"][:, 0] > 0.5
    agree = (bright == (out["lesion_mask"][:, 0] > 0.5)).float().mean()
    assert agree > 0.98
    pooled = torch.nn.functional.avg_pool2d(out["lesion_mask"], 4)
    assert torch.corrcoef(torch.stack([pooled.flatten(), out["taps"]["t"].flatten()]))[0, 1] > 0.9
    assert set(out["lesion_mask"].unique().tolist()) <= {0.0, 1.0}  # nearest keeps labels


def test_same_generator_same_augmentation():
    x = {"label": torch.zeros(3), "image": torch.randn(3, 3, 16, 16)}
    a = augment(x, AugmentSpec(), torch.Generator().manual_seed(5))
    b = augment(x, AugmentSpec(), torch.Generator().manual_seed(5))
    torch.testing.assert_close(a["image"], b["image"])


def test_oversampling_balances_classes():
    labels = torch.tensor([0] * 90 + [1] * 10)
    order = class_balanced_order(labels, torch.Generator().manual_seed(0))
    counts = torch.bincount(labels[order])
    assert counts.tolist() == [90, 90]
    assert set(order[labels[order] == 0].tolist()) == set(range(90))  # majority: each once


def test_run_inputs_give_images_and_masks_at_the_head_size(small_store):
    items = np.arange(20)
    inp = RunInputs(
        small_store,
        frozenset({"image", "lesion_mask", "attributes"}),
        items,
        items[:10],
        labels=small_store.labels("melanoma"),
        image_size=32,
    )
    shapes = inp.input_shapes()
    assert shapes == {"image": (3, 32, 32), "lesion_mask": (1, 32, 32), "attributes": (5, 32, 32)}
    b = next(batches(inp, items, 8))
    assert (
        b["image"].dtype == torch.float32
        and b["label"].tolist() == small_store.labels("melanoma")[:8].tolist()
    )
    lazy = RunInputs(
        small_store,
        frozenset({"image", "lesion_mask"}),
        items,
        items[:10],
        labels=small_store.labels("melanoma"),
        image_size=32,
        max_memory_gb=0,
    )
    assert lazy.lazy
    lb = lazy.batch(items[3:9])
    eb = inp.batch(items[3:9])
    torch.testing.assert_close(lb["image"], eb["image"])
    torch.testing.assert_close(lb["lesion_mask"], eb["lesion_mask"])


def test_lazy_and_in_memory_taps_agree(small_store, small_features):
    items = np.array([5, 1, 40, 22])
    kw = dict(labels=small_store.labels("grade"), features=small_features, taps=["block:1", "neck"])
    eager = RunInputs(small_store, frozenset({"taps", "pooled"}), items, items[:2], **kw)
    lazy = RunInputs(
        small_store, frozenset({"taps", "pooled"}), items, items[:2], max_memory_gb=0, **kw
    )
    a, b = eager.batch(items[::-1]), lazy.batch(items[::-1])
    for t in ("block:1", "neck"):
        torch.testing.assert_close(a["taps"][t], b["taps"][t])
    torch.testing.assert_close(a["pooled"], b["pooled"])


def test_read_rows_returns_the_rows_in_the_asked_order(small_store):
    from samcache.inputs import read_rows

    arr = small_store.group["masks/lesion"]
    every = np.asarray(arr[:])
    for items in (np.arange(60), np.array([7, 3, 4, 5, 59, 3, 0]), np.array([], dtype=int)):
        np.testing.assert_array_equal(read_rows(arr, items), every[items])
