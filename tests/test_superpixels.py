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
