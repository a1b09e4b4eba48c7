from __future__ import annotations

import numpy as np
import pytest
import torch

from samcache.augment import AugmentSpec, augment, random_affine, warp
from samcache.inputs import RunInputs, batches, class_balanced_order
from samcache.resident import ResidentCache


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


def test_quarter_turns_are_exact_and_the_same_for_every_map_of_a_sample():
    """rot90 alone permutes pixels exactly as torch.rot90 does, by one k per sample for the
    image, its mask and a coarser tap; every k occurs."""
    n, s = 16, 8
    g = torch.Generator().manual_seed(3)
    batch = {
        "label": torch.zeros(n),
        "image": torch.rand(n, 3, s, s, generator=g),
        "lesion_mask": (torch.rand(n, 1, s, s, generator=g) > 0.5).float(),
        "taps": {"t": torch.rand(n, 4, s // 2, s // 2, generator=g)},
    }
    spec = AugmentSpec(hflip=False, vflip=False, crop_scale=(1.0, 1.0), rot90=True)
    out = augment(batch, spec, torch.Generator().manual_seed(0))
    seen = set()
    for i in range(n):
        ks = [
            k
            for k in range(4)
            if torch.allclose(out["image"][i], torch.rot90(batch["image"][i], k, dims=(-2, -1)))
        ]
        assert len(ks) == 1, i
        k = ks[0]
        seen.add(k)
        for key, x in (("lesion_mask", batch["lesion_mask"]), ("taps", batch["taps"]["t"])):
            got = out["taps"]["t"] if key == "taps" else out[key]
            torch.testing.assert_close(got[i], torch.rot90(x[i], k, dims=(-2, -1)))
    assert seen == {0, 1, 2, 3}


def test_augment_settings_are_read_from_the_config():
    spec = AugmentSpec.from_config({"rot90": True, "crop_scale": [0.7, 0.7], "vflip": False})
    assert spec == AugmentSpec(hflip=True, vflip=False, crop_scale=(0.7, 0.7), rot90=True)
    assert AugmentSpec.from_config(False) is None and AugmentSpec.from_config(True) == AugmentSpec()


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
        cache=ResidentCache(memory_gb=0),
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
        small_store,
        frozenset({"taps", "pooled"}),
        items,
        items[:2],
        cache=ResidentCache(memory_gb=0),
        **kw,
    )
    a, b = eager.batch(items[::-1]), lazy.batch(items[::-1])
    for t in ("block:1", "neck"):
        torch.testing.assert_close(a["taps"][t], b["taps"][t])
    torch.testing.assert_close(a["pooled"], b["pooled"])


def _windows(x: np.ndarray, size: int, step: int) -> list[np.ndarray]:
    """Every size x size window of (C, S, S) x at offsets in steps of ``step``, in each of the
    eight flips and turns: what a fixed-size crop with flips and quarter turns may give."""
    out = []
    for r in range(0, x.shape[-1] - size + 1, step):
        for c in range(0, x.shape[-1] - size + 1, step):
            w = x[..., r : r + size, c : c + size]
            for f in (w, w[..., ::-1]):
                out += [np.rot90(f, k, axes=(-2, -1)) for k in range(4)]
                out += [np.rot90(f[..., ::-1, :], k, axes=(-2, -1)) for k in range(4)]
    return out


def test_a_fixed_size_crop_cuts_every_map_without_resizing():
    """Seed 001's authors: a random 224 window of the 256 image, no resize. Here 12 of 16 px,
    with a mask at 16 px and a tap at 8 px: each output is a window of its own input (numpy
    slicing, flips and turns), the tap's window the same region as the image's."""
    from samcache.augment import evaluation_view

    g = torch.Generator().manual_seed(0)
    n = 8
    batch = {
        "label": torch.zeros(n),
        "image": torch.rand(n, 3, 16, 16, generator=g),
        "lesion_mask": (torch.rand(n, 1, 16, 16, generator=g) > 0.5).float(),
        "taps": {"t": torch.rand(n, 2, 8, 8, generator=g)},
    }
    spec = AugmentSpec.from_config({"crop_size": 12, "rot90": True})
    out = augment(batch, spec, torch.Generator().manual_seed(1))
    assert out["image"].shape == (n, 3, 12, 12) and out["taps"]["t"].shape == (n, 2, 6, 6)
    for i in range(n):
        img = batch["image"][i].numpy()
        match = [w for w in _windows(img, 12, 2) if np.array_equal(w, out["image"][i].numpy())]
        assert match, i
        tap_windows = _windows(batch["taps"]["t"][i].numpy(), 6, 1)
        assert any(np.array_equal(w, out["taps"]["t"][i].numpy()) for w in tap_windows), i
    centre = evaluation_view(spec)(batch)
    np.testing.assert_array_equal(centre["image"].numpy(), batch["image"][..., 2:14, 2:14].numpy())
    np.testing.assert_array_equal(
        centre["taps"]["t"].numpy(), batch["taps"]["t"][..., 1:7, 1:7].numpy()
    )
    with pytest.raises(ValueError, match="exclude"):
        AugmentSpec.from_config({"crop_size": 12, "crop_scale": [0.8, 1.0]})


def test_a_crop_size_run_is_tested_and_localised_on_the_centre_window(tmp_path, small_store):
    """A 64 px store, crop_size 48: the head sees 48 px in training and testing, and Table 3's
    Jaccard is taken on the centre 48 px of the masks (the authors' frame)."""
    from samcache.localisation import localisation_metrics
    from samcache.train import train_run

    seen = []

    class Spy:
        def __call__(self, batch):
            seen.append(tuple(batch["image"].shape[-2:]))
            img = batch["image"]
            return {"logits": torch.zeros(len(img), 2), "attention": {"toy": img.mean(1, True)}}

    items = small_store.indices("test")
    inputs = RunInputs(
        small_store, frozenset({"image"}), items, items, labels=small_store.labels("melanoma")
    )
    from samcache.augment import evaluation_view

    view = evaluation_view(AugmentSpec.from_config({"crop_size": 48}))
    res = localisation_metrics(
        lambda b: Spy()(view(b)),
        inputs,
        items,
        task_type="binary",
        batch_size=8,
        crop=48,
    )
    from test_localisation import sklearn_mean_jaccard

    images = np.stack(
        [inputs.batch(items[i : i + 1])["image"][0].mean(0).numpy() for i in range(len(items))]
    )[:, 8:56, 8:56]
    masks = (np.asarray(small_store.group["masks/lesion"][:])[items] > 0)[:, 8:56, 8:56]
    assert res["jaccard_toy"] == pytest.approx(sklearn_mean_jaccard(images, masks), abs=1e-9)
    rec = train_run(
        dataset=small_store.path,
        features=None,
        task="melanoma",
        method_name="gap",
        method={
            "head": "attnmel_cnn",
            "init": "random",
            "head_args": {"width": 1 / 16},
            "train": {
                "epochs": 1,
                "batch_size": 16,
                "threads": 1,
                "augment": {"crop_size": 48, "rot90": True},
            },
        },
        fraction=100,
        seed=0,
        out=tmp_path / "r.json",
    )
    assert {"jaccard_pool3", "jaccard_pool4"} <= set(rec["metrics"]["test"])
