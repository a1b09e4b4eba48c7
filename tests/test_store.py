from __future__ import annotations

import numpy as np
import pytest

from samcache.data.store import DatasetStore, write_dataset_store
from samcache.data.synthetic import ATTRIBUTES, render_lesion, write_synthetic_store
from samcache.zarrio import StoreError, open_group


def _arrays(n=12, size=16, seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        images=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
        split=np.array([0] * (n - 4) + [1, 1, 2, 2], dtype=np.uint8),
        labels={"y": rng.integers(0, 3, n)},
        tasks={"y": {"type": "multiclass", "classes": ["a", "b", "c"]}},
        lesion_mask=rng.integers(0, 2, (n, size, size), dtype=np.uint8),
    )


def test_round_trip_preserves_every_array(tmp_path):
    a = _arrays()
    store = write_dataset_store(
        tmp_path / "s.zarr", name="s", source="test", items_per_shard=5, **a
    )
    again = DatasetStore(tmp_path / "s.zarr")
    np.testing.assert_array_equal(again.images[:], a["images"])
    np.testing.assert_array_equal(again.split(), a["split"])
    np.testing.assert_array_equal(again.labels("y"), a["labels"]["y"])
    np.testing.assert_array_equal(again.group["masks/lesion"][:], a["lesion_mask"])
    assert again.tasks["y"].classes == ("a", "b", "c")
    assert list(again.indices("test")) == [10, 11]
    assert again.fingerprint == store.fingerprint


def test_fingerprint_changes_with_content(tmp_path):
    a = _arrays()
    s1 = write_dataset_store(tmp_path / "a.zarr", name="s", source="t", **a)
    a["images"][3, 0, 0, 0] ^= 1
    s2 = write_dataset_store(tmp_path / "b.zarr", name="s", source="t", **a)
    assert s1.fingerprint != s2.fingerprint


def test_wrong_shapes_are_refused_with_the_array_named(tmp_path):
    a = _arrays()
    a["lesion_mask"] = a["lesion_mask"][:, :8]
    with pytest.raises(StoreError, match="masks/lesion"):
        write_dataset_store(tmp_path / "bad.zarr", name="s", source="t", **a)
    assert not (tmp_path / "bad.zarr").exists()  # nothing half-written under the final name


def test_opening_a_store_with_a_missing_label_array_names_it(tmp_path):
    write_dataset_store(tmp_path / "s.zarr", name="s", source="t", **_arrays())
    g = open_group(tmp_path / "s.zarr", "r+")
    g.attrs["tasks"] = {**g.attrs["tasks"], "z": {"type": "binary", "classes": ["0", "1"]}}
    with pytest.raises(StoreError, match="labels/z"):
        DatasetStore(tmp_path / "s.zarr")


def test_not_a_store(tmp_path):
    with pytest.raises(StoreError, match="not a Zarr v3 store"):
        DatasetStore(tmp_path / "nothing.zarr")


def test_synthetic_images_are_deterministic_and_independent_of_n(tmp_path):
    a = write_synthetic_store(tmp_path / "a.zarr", n_images=20, image_size=48, seed=5)
    b = write_synthetic_store(tmp_path / "b.zarr", n_images=30, image_size=48, seed=5)
    np.testing.assert_array_equal(a.images[:20], b.images[:20])
    np.testing.assert_array_equal(a.labels("melanoma"), b.labels("melanoma")[:20])
    c = write_synthetic_store(tmp_path / "c.zarr", n_images=20, image_size=48, seed=6)
    assert not np.array_equal(a.images[:], c.images[:])


def test_synthetic_store_follows_the_contract(small_store):
    s = small_store
    assert s.images.shape == (60, 64, 64, 3)
    assert set(s.tasks) == {"melanoma", "grade", "lesion", "attributes"}
    assert s.tasks["grade"].type == "ordinal" and len(s.tasks["grade"].classes) == 5
    lesion = s.tasks["lesion"]  # the lesion masks as a segmentation task (seeds 002 and 004)
    assert (lesion.type, lesion.mask, lesion.classes) == (
        "segmentation",
        "masks/lesion",
        ("lesion",),
    )
    presence = (np.asarray(s.group["masks/lesion"][:]) > 0).any(axis=(1, 2))
    np.testing.assert_array_equal(s.stratify_on("lesion")[:, 0], presence)
    assert s.attribute_names == ATTRIBUTES
    attrs = s.tasks["attributes"]  # the five attribute masks as one task (seed 003)
    assert (attrs.type, attrs.mask, attrs.classes) == (
        "segmentation",
        "masks/attributes",
        ATTRIBUTES,
    )
    presence = (np.asarray(s.group["masks/attributes"][:]) > 0).any(axis=(2, 3))
    np.testing.assert_array_equal(s.stratify_on("attributes"), presence)
    assert s.group["masks/attributes"].shape == (60, 5, 64, 64)
    counts = np.bincount(s.split(), minlength=3)
    assert counts.tolist() == [36, 12, 12]


def test_synthetic_labels_follow_visible_lesion_properties():
    """Melanoma must be predictable from what the image shows: lesion area and darkness alone
    already rank it far better than chance (scikit-learn's AUC, on 400 images)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    lesions = [render_lesion(1, i, 48) for i in range(400)]
    area = np.array([x.mask.mean() for x in lesions])
    darkness = np.array([255 - x.image[x.mask.astype(bool)].mean() for x in lesions])
    y = np.array([x.melanoma for x in lesions])
    feats = np.c_[area, darkness]
    clf = LogisticRegression().fit(feats[:300], y[:300])
    assert 0.2 < y.mean() < 0.5
    assert roc_auc_score(y[300:], clf.predict_proba(feats[300:])[:, 1]) > 0.8
    assert len(set(x.grade for x in lesions)) == 5


def _segmentation_store(tmp_path, **overrides):
    a = _arrays(n=12, size=16)
    a["lesion_mask"][5] = 0  # one image without a lesion
    attrs = np.zeros((12, 3, 16, 16), np.uint8)
    attrs[::2, 0, 3:6, 3:6] = 1  # channel 0 in the even images
    attrs[1::3, 2, 0, 0] = 1  # channel 2: a single pixel in every third image
    tasks = {
        **a["tasks"],
        "lesion": {"type": "segmentation", "classes": ["lesion"], "mask": "masks/lesion"},
        "attributes": {
            "type": "segmentation",
            "classes": ["a", "b", "c"],
            "mask": "masks/attributes",
        },
    }
    kw = {**a, "tasks": tasks, "attributes": attrs, "attribute_names": ("a", "b", "c"), **overrides}
    return write_dataset_store(tmp_path / "seg.zarr", name="seg", source="t", **kw), a


def test_segmentation_tasks_stratify_on_the_presence_of_each_mask_channel(tmp_path):
    store, a = _segmentation_store(tmp_path)
    expected = np.zeros((12, 3), np.uint8)
    expected[::2, 0] = 1
    expected[1::3, 2] = 1
    np.testing.assert_array_equal(store.stratify_on("attributes"), expected)
    lesion = np.ones((12, 1), np.uint8)
    lesion[5] = 0
    np.testing.assert_array_equal(store.stratify_on("lesion"), lesion)
    # classification tasks stratify on their labels, as before
    np.testing.assert_array_equal(store.stratify_on("y"), a["labels"]["y"])
    assert store.task("attributes").mask == "masks/attributes"
    assert store.mask("lesion").shape == (12, 16, 16)
    with pytest.raises(StoreError, match="not segmentation"):
        store.mask("y")


def test_segmentation_task_without_its_mask_is_refused(tmp_path):
    with pytest.raises(ValueError, match="masks/attributes"):
        _segmentation_store(tmp_path, attributes=None)


def test_segmentation_task_with_wrong_channel_names_is_refused(tmp_path):
    store, _ = _segmentation_store(tmp_path)
    g = open_group(store.path, "r+")
    tasks = dict(g.attrs["tasks"])
    tasks["attributes"] = {**tasks["attributes"], "classes": ["a", "b"]}
    g.attrs["tasks"] = tasks
    with pytest.raises(StoreError, match="attributes"):
        DatasetStore(store.path)
