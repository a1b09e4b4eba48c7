"""The benchmark scripts run end to end with tiny settings (their figures are not tested)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import REPO


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_feature_throughput_compares_with_the_baseline_and_counts_flops(tmp_path):
    out = tmp_path / "ft.json"
    args = ["--encoder", "vit_tiny", "--device", "cpu", "--images", "4", "--batch-size", "2"]
    r = load("feature_throughput").main([*args, "--baseline-images", "2", "--out", str(out)])
    assert json.loads(out.read_text())["speedup"] == pytest.approx(r["speedup"])
    assert r["gflop_per_image"] == pytest.approx(0.125042688)  # test_encoders checks the model
    assert r["samcache"]["images"] == 4 and r["baseline_images_per_s"] > 0
    assert set(r["samcache"]["busy_s"]) == {"load", "encode", "write"}
    assert len(r["rounds"]) == 2 and sum(x["samcache_images"] for x in r["rounds"]) == 4


def test_cache_io_writes_and_reads_back_every_layout(tmp_path, small_features):
    out = tmp_path / "io.json"
    args = ["--source", str(small_features.path), "--tap", "block:2", "--distinct", "4"]
    r = load("cache_io").main(
        [*args, "--items", "8", "--batch", "4", "--batches", "2", "--out", str(out)]
    )
    assert len(r["layouts"]) == 12 and out.exists()  # each layout's read-back is checked inside
    assert r["layouts"]["zarr uncompressed"]["ratio"] >= 1
    assert r["cached_taps"]["block:2"]["raw_bytes"] == 128 * 8 * 8 * 2


def test_slic_throughput_reports_each_worker_count(tmp_path):
    out = tmp_path / "slic.json"
    r = load("slic_throughput").main(
        ["--images", "10", "--image-size", "32", "--threads", "1", "2", "--out", str(out)]
    )
    assert [row["threads"] for row in r["rows"]] == [1, 2] and r["rows"][0]["speedup"] == 1


def test_tap_views_compares_warped_and_re_encoded_taps(tmp_path):
    out = tmp_path / "tv.json"
    r = load("tap_views").main(["--encoders", "vit_tiny", "--images", "1", "--out", str(out)])
    errors = r["encoders"]["vit_tiny"]["relative_error"]
    assert set(errors) == {"hflip", "rot90", "crop0.875"} and out.exists()
    assert all(v > 0 for per in errors.values() for v in per.values())
