"""Reading run inputs from Zarr stores."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from samcache.features.store import read_items
from samcache.zarrio import create_item_array


@pytest.mark.parametrize("shard", [1, 4, 16])
def test_read_items_matches_numpy_indexing_in_any_order(tmp_path, shard):
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="w", zarr_format=3)
    arr = create_item_array(
        g, "x", n_items=50, item_shape=(3, 2), dtype="int32", items_per_shard=shard
    )
    ref = np.arange(50 * 6, dtype=np.int32).reshape(50, 3, 2)
    arr[:] = ref
    rng = np.random.default_rng(shard)
    for items in (
        rng.permutation(50),  # everything, shuffled
        np.array([49, 0, 17, 17, 3]),  # repeats and both ends
        rng.choice(50, 7, replace=False),  # a few rows: sparse in their shards
        np.arange(16, 32),  # one contiguous run across shard boundaries
    ):
        np.testing.assert_array_equal(read_items(arr, items), ref[items])
    assert read_items(arr, np.array([], dtype=int)).shape == (0, 3, 2)
