from __future__ import annotations

import numpy as np
from skimage.segmentation import slic

from samcache.features.specs import SlicParams
from samcache.features.superpixels import compute_superpixels, open_superpixels
from samcache.zarrio import open_group


def test_label_maps_equal_scikit_image_and_resume(tmp_path, small_store):
    params = SlicParams(n_segments=30, compactness=8.0, sigma=0.5)
    out = compute_superpixels(
        small_store.path, tmp_path / "sp.zarr", params, key="k", threads=2, unit=7, progress=False
    )
    labels = open_superpixels(out, expect_key="k")
    for i in (0, 13, 59):
        ref = slic(
            np.asarray(small_store.images[i]),
            n_segments=30,
            compactness=8.0,
            sigma=0.5,
            start_label=0,
            channel_axis=-1,
        )
        np.testing.assert_array_equal(labels[i], ref)
    before = labels[:]
    g = open_group(out, "r+")
    g["complete"][7:14] = False
    g["labels"][7:14] = -1
    compute_superpixels(small_store.path, out, params, key="k", progress=False)
    np.testing.assert_array_equal(open_superpixels(out)[:], before)


def test_slic_zero_option_equals_scikit_images_slico(tmp_path, small_store):
    params = SlicParams(n_segments=30, slic_zero=True)
    out = compute_superpixels(
        small_store.path, tmp_path / "sp0.zarr", params, key="k0", threads=1, progress=False
    )
    labels = open_superpixels(out, expect_key="k0")
    for i in (0, 31):
        image = np.asarray(small_store.images[i])
        kw = {"n_segments": 30, "compactness": 10.0, "sigma": 1.0, "start_label": 0}
        ref = slic(image, slic_zero=True, channel_axis=-1, **kw)
        np.testing.assert_array_equal(labels[i], ref)
        plain = slic(image, channel_axis=-1, **kw)
        assert not np.array_equal(ref, plain)  # the option changes the label maps
    # a different cache key; caches built without the option keep theirs
    assert params.key("d") != SlicParams(n_segments=30).key("d")
    assert SlicParams(n_segments=30).key("d") == SlicParams(n_segments=30, slic_zero=False).key("d")
