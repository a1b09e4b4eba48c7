"""The extraction pipeline really overlaps loading, encoding and writing, and fails safely."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from samcache.data.store import DatasetStore
from samcache.features import pipeline
from samcache.features.encoders import build_encoder
from samcache.features.extract import extract_features, open_or_create_cache
from samcache.features.specs import feature_set_from_config
from samcache.features.taps import TapRecorder
from samcache.zarrio import ItemLedger, open_group

from conftest import tiny_feature_config

WAIT = 30.0  # seconds; only reached when the stages do not overlap


class _Images:
    """The dataset's images, recording when each batch starts loading."""

    def __init__(self, images, started: dict[int, threading.Event]) -> None:
        self.images, self.started = images, started

    def __getitem__(self, sl: slice):
        self.started[sl.start].set()
        return self.images[sl]


class _Dataset:
    def __init__(self, ds: DatasetStore, started) -> None:
        self.images = _Images(ds.images, started)


def test_loading_encoding_and_writing_overlap(tmp_path, small_store, monkeypatch):
    fset = feature_set_from_config(tiny_feature_config(taps=["neck"]), "small:overlap")
    g = open_or_create_cache(tmp_path / "f.zarr", fset, small_store, batch_size=12)
    batches = [(a, a + 12) for a in range(0, 60, 12)]
    load_started = {a: threading.Event() for a, _ in batches}
    encode_started = {a: threading.Event() for a, _ in batches}
    failures: list[str] = []
    encode = pipeline.encode_batch

    def encode_while_the_next_batch_loads(recorder, fset, x, autocast, start, stop):
        encode_started[start].set()
        if stop < 60 and not load_started[stop].wait(WAIT):
            failures.append(f"batch {stop} was not loading while batch {start} was encoded")
        return encode(recorder, fset, x, autocast, start, stop)

    class Ledger(ItemLedger):
        def mark(self, start, stop):
            if stop < 60 and not encode_started[stop].wait(WAIT):
                failures.append(f"batch {stop} was not encoded while batch {start} was written")
            super().mark(start, stop)

    monkeypatch.setattr(pipeline, "encode_batch", encode_while_the_next_batch_loads)
    ledger = Ledger(g, 60, int(g.attrs["items_per_shard"]))
    encoder = build_encoder("vit_tiny")
    pipeline.run_pipeline(
        _Dataset(small_store, load_started),
        g,
        ledger,
        fset,
        encoder,
        batches,
        torch.device("cpu"),
        progress=False,
    )
    assert failures == []
    assert ledger.all_complete()


def test_a_failing_batch_is_never_flagged_and_the_error_surfaces(
    tmp_path, small_store, monkeypatch
):
    fset = feature_set_from_config(tiny_feature_config(taps=["neck"]), "small:fail")
    call = TapRecorder.__call__
    seen = []

    def overflow_on_images_16_to_23(self, x):
        outs = call(self, x)
        if len(x) == 8:  # a batch, not the one-image attention check
            seen.append(len(x))
            if len(seen) == 3:
                outs = {k: v * torch.inf for k, v in outs.items()}
        return outs

    monkeypatch.setattr(TapRecorder, "__call__", overflow_on_images_16_to_23)
    out = tmp_path / "f.zarr"
    with pytest.raises(FloatingPointError, match="images 16..23"):
        extract_features(small_store.path, out, fset, batch_size=8, progress=False)
    done = np.asarray(open_group(out, "r")["complete"][:])
    assert done[:16].all() and not done[16:24].any()
