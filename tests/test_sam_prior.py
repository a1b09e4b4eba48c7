"""SAMAug-C's prior cache against segment-anything's own automatic mask generator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samcache.features.sam_prior import (
    SamPriorParams,
    build_sam,
    compute_sam_priors,
    open_sam_priors,
)

PARAMS = SamPriorParams(
    encoder="vit_tiny",
    weights="random",
    points_per_side=2,
    pred_iou_thresh=0.0,
    stability_score_thresh=0.0,
    mask_weight="predicted_iou",
)


@pytest.fixture(scope="module")
def small_priors(tmp_path_factory, small_store):
    out = tmp_path_factory.mktemp("priors") / "sam_prior.zarr"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model: a second thread only adds contention
    try:
        compute_sam_priors(
            small_store.path, out, PARAMS, key=PARAMS.key("small"), device="cpu", progress=False
        )
    finally:
        torch.set_num_threads(threads)
    return out


def _resume_equals_complete(out, small_store, small_priors):
    """Resume the cache at ``out`` (one thread: the tiny model) and compare it with the one
    built in one go."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        compute_sam_priors(small_store.path, out, PARAMS, key=PARAMS.key("small"), progress=False)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(open_sam_priors(out)[:], open_sam_priors(small_priors)[:])


def test_prior_is_the_normalised_score_sum_of_the_official_masks(small_store, small_priors):
    from segment_anything import SamAutomaticMaskGenerator

    amg = SamAutomaticMaskGenerator(
        build_sam(PARAMS),
        points_per_side=2,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        box_nms_thresh=PARAMS.box_nms_thresh,
    )
    prior = open_sam_priors(small_priors, expect_key=PARAMS.key("small"))
    assert prior.shape == (small_store.n_items, *small_store.image_shape)
    for i in (0, 7, 59):
        with torch.inference_mode():
            masks = amg.generate(np.asarray(small_store.images[i]))
        expected = np.zeros(small_store.image_shape)
        for m in masks:
            expected += m["predicted_iou"] * m["segmentation"]
        if expected.max() > 0:
            expected /= expected.max()
        np.testing.assert_allclose(prior[i].astype(np.float64), expected, atol=1e-3)
    assert np.asarray(prior[:]).max() == pytest.approx(1.0)


def test_an_interrupted_cache_resumes_to_the_same_maps(tmp_path, small_store, small_priors):
    import shutil

    from samcache.zarrio import open_group

    out = tmp_path / "p.zarr"
    shutil.copytree(small_priors, out)
    g = open_group(out, "r+")
    unit = int(g.attrs["unit"])
    g["complete"][unit : 2 * unit] = False  # one unit lost, its maps wiped
    g["prior"][unit : 2 * unit] = 0
    with pytest.raises(Exception, match="incomplete"):
        open_sam_priors(out)
    _resume_equals_complete(out, small_store, small_priors)
    with pytest.raises(Exception, match="other settings"):
        compute_sam_priors(small_store.path, out, PARAMS, key="0" * 12, progress=False)


def test_a_deleted_shard_is_named_and_a_resume_recomputes_only_it(
    tmp_path, small_store, small_priors
):
    import shutil

    from samcache.integrity import DamagedStoreError

    out = tmp_path / "p.zarr"
    shutil.copytree(small_priors, out)
    (out / "prior/c/1/0/0").unlink()  # units of 16 images: 16..31
    with pytest.raises(DamagedStoreError, match=r"'prior' items 16\.\.31 .*file missing"):
        open_sam_priors(out)
    _resume_equals_complete(out, small_store, small_priors)


def test_the_key_follows_what_changes_the_maps():
    base = PARAMS.key("d")
    assert PARAMS.key("other") != base
    assert SamPriorParams(**{**PARAMS.__dict__, "points_per_side": 4}).key("d") != base
    assert SamPriorParams(**{**PARAMS.__dict__, "mask_weight": "one"}).key("d") != base
    assert SamPriorParams(**{**PARAMS.__dict__, "points_per_batch": 8}).key("d") == base


def test_samaug_c_run_reads_the_cache_and_is_deterministic(tmp_path, small_store, small_priors):
    from samcache.train import train_run

    method = {
        "head": "samaug_c",
        "init": "random",
        "image_size": 32,
        "head_args": {"backbone": "test_resnet"},
        "train": {"epochs": 2, "lr": 1e-3, "batch_size": 8, "threads": 1},
    }
    kw = dict(
        dataset=small_store.path,
        features=None,
        task="melanoma",
        method_name="samaug",
        method=method,
        fraction=100,
        sam_prior=small_priors,
    )
    a = train_run(**kw, seed=0, out=tmp_path / "a.json")
    b = train_run(**kw, seed=0, out=tmp_path / "b.json")
    assert a["metrics"] == b["metrics"] and a["history"] == b["history"]
    assert a["sam_prior_path"] == str(small_priors) and a["cache_key"] is None
    assert a["sam_prior_key"] == PARAMS.key("small")
    with pytest.raises(ValueError, match="names no sam_prior"):
        train_run(**{**kw, "sam_prior": None}, seed=0, out=tmp_path / "c.json")


def test_the_cli_builds_the_cache_and_trains_on_it(tmp_path, small_store, small_priors):
    import json

    from samcache.cli import main

    spec = json.dumps(
        {
            "encoder": "vit_tiny",
            "weights": "random",
            "points_per_side": 2,
            "pred_iou_thresh": 0.0,
            "stability_score_thresh": 0.0,
            "mask_weight": "predicted_iou",
        }
    )
    out, manifest = tmp_path / "sam_prior.zarr", tmp_path / "manifest.json"
    args = ["sam-prior", "--dataset", str(small_store.path), "--dataset-id", "small"]
    args += ["--spec", spec, "--out", str(out), "--threads", "1", "--no-progress"]
    with pytest.raises(SystemExit, match="give cache key"):  # settings that give another key
        main([*args, "--expect-key", "0" * 12])
    assert main([*args, "--expect-key", PARAMS.key("small"), "--manifest", str(manifest)]) == 0
    assert json.loads(manifest.read_text())["cache_key"] == PARAMS.key("small")
    np.testing.assert_array_equal(open_sam_priors(out)[:], open_sam_priors(small_priors)[:])
    method = {
        "head": "samaug_c",
        "init": "random",
        "image_size": 32,
        "head_args": {"backbone": "test_resnet"},
        "train": {"epochs": 1, "batch_size": 16, "threads": 1},
    }
    record = tmp_path / "run.json"
    train = ["train", "--dataset", str(small_store.path), "--sam-prior", str(out)]
    train += ["--task", "grade", "--method-name", "samaug", "--spec", json.dumps(method)]
    train += ["--fraction", "50", "--seed", "0", "--out", str(record)]
    assert main(train) == 0
    assert json.loads(record.read_text())["sam_prior_path"] == str(out)
