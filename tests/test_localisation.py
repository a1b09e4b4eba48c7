"""Jaccard of binarised attention maps (seed 001, Table 3) against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import jaccard_score

from samcache.inputs import RunInputs
from samcache.localisation import (
    binarise,
    binarised_then_resized,
    fuzzy_jaccard_per_image,
    jaccard_per_image,
    localisation_metrics,
    maps_to_mask_frame,
)


def sklearn_mean_jaccard(maps: np.ndarray, masks: np.ndarray) -> float:
    """Min-max normalise each map, threshold at 0.5, sklearn's Jaccard per image, mean."""
    scores = []
    for m, t in zip(maps, masks, strict=True):
        norm = (m - m.min()) / (m.max() - m.min())
        scores.append(jaccard_score(t.ravel().astype(int), (norm >= 0.5).ravel().astype(int)))
    return float(np.mean(scores))


def test_mean_jaccard_of_binarised_maps_equals_sklearn():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(10, 16, 16)).cumsum(axis=1)  # smooth-ish, varied ranges
    masks = rng.uniform(size=(10, 16, 16)) > 0.6
    ours = jaccard_per_image(binarise(maps), masks).mean()
    assert ours == pytest.approx(sklearn_mean_jaccard(maps, masks), abs=1e-12)


def test_binarise_edge_cases():
    flat = np.full((1, 4, 4), 0.3)
    assert not binarise(flat).any()  # a constant map singles nothing out
    assert jaccard_per_image(np.zeros((1, 2, 2), bool), np.zeros((1, 2, 2), bool)) == [1.0]
    m = np.array([[[0.0, 0.49], [0.5, 1.0]]])
    np.testing.assert_array_equal(binarise(m), [[[False, False], [True, True]]])


def test_sam_square_maps_lose_the_padded_rows_before_upsampling():
    # a 6x8 image padded to 8x8: the map's last two rows cover padding only
    maps = torch.zeros(1, 1, 8, 8)
    maps[..., 6:, :] = 5.0  # strong response on padding must not reach the mask frame
    maps[..., :3, :4] = 1.0
    out = maps_to_mask_frame(maps, (6, 8), "sam_square")
    assert out.shape == (1, 6, 8) and out.max() == 1.0
    torch.testing.assert_close(maps_to_mask_frame(maps, (8, 8), "image"), maps[:, 0])


class _ToyForward:
    """Attention maps that are a known function of the image: the mean over colours."""

    def __call__(self, batch):
        img = batch["image"]
        return {"logits": torch.zeros(len(img), 2), "attention": {"toy": img.mean(1, True)}}


def test_localisation_metrics_over_a_store_split(small_store):
    items = small_store.indices("test")
    inputs = RunInputs(
        small_store,
        frozenset({"image"}),
        items,
        items,
        labels=small_store.labels("melanoma"),
    )
    res = localisation_metrics(_ToyForward(), inputs, items, task_type="binary", batch_size=5)
    images = np.stack(
        [inputs.batch(items[i : i + 1])["image"][0].mean(0).numpy() for i in range(len(items))]
    )
    masks = np.asarray(small_store.group["masks/lesion"][:])[items] > 0
    assert set(res) == {"jaccard_toy"}
    assert res["jaccard_toy"] == pytest.approx(sklearn_mean_jaccard(images, masks), abs=1e-9)


def test_cam_in_the_authors_order_binarises_at_7x7_then_resizes():
    """The authors' order against scikit-image's bilinear resize and the fuzzy Jaccard written
    out: binarise each 7 x 7 CAM, resize the binary map to the mask, Σ min / Σ max."""
    from skimage.transform import resize

    rng = np.random.default_rng(1)
    cams = rng.normal(size=(3, 1, 7, 7)).cumsum(axis=2)
    masks = rng.uniform(size=(3, 56, 56)) > 0.5
    soft = binarised_then_resized(torch.from_numpy(cams).float(), (56, 56), "image")
    expected = []
    for cam, mask in zip(cams[:, 0], masks, strict=True):
        norm = (cam - cam.min()) / (cam.max() - cam.min())
        up = resize(
            (norm >= 0.5).astype(float), (56, 56), order=1, mode="edge", anti_aliasing=False
        )
        np.testing.assert_allclose(soft[len(expected)], up, atol=1e-6)
        expected.append(np.minimum(up, mask).sum() / np.maximum(up, mask).sum())
    np.testing.assert_allclose(fuzzy_jaccard_per_image(soft, masks), expected, atol=1e-6)
    # the order matters: today's procedure (resize, then binarise) scores these maps otherwise
    today = jaccard_per_image(
        binarise(maps_to_mask_frame(torch.from_numpy(cams).float(), (56, 56), "image").numpy()),
        masks,
    )
    assert not np.allclose(today, expected)


class _ToyCam:
    def __call__(self, batch):
        img = batch["image"]
        cam = torch.nn.functional.avg_pool2d(img.mean(1, True), 8)
        return {"logits": torch.zeros(len(img), 2), "cam": torch.cat([-cam, cam], 1)}


def test_a_cam_is_scored_in_both_orders(small_store):
    items = small_store.indices("test")
    inputs = RunInputs(
        small_store, frozenset({"image"}), items, items, labels=small_store.labels("melanoma")
    )
    res = localisation_metrics(_ToyCam(), inputs, items, task_type="binary", batch_size=5)
    assert set(res) == {"jaccard_cam", "jaccard_cam_binarised_first"}
    assert res["jaccard_cam"] != res["jaccard_cam_binarised_first"]
