"""The cache rules under Snakemake: checkpoint download in the DAG, one GPU job at a time,
rerun triggers that follow the cache key and nothing else."""

from __future__ import annotations

import os
import re
import time

import pytest
import yaml

from samcache.features.checkpoints import official_checkpoint

from conftest import REPO
from test_workflow import job_counts, snakemake

# Two feature sets (two feature jobs) on a small synthetic dataset.
TWO_CACHES = {
    "datasets": {"demo": {"source": "synthetic", "n_images": 24, "image_size": 32, "seed": 0}},
    "feature_sets": {
        "sam_tiny": {"encoder": "vit_tiny", "weights": "random", "taps": ["neck"], "batch_size": 8},
        "sam_tiny_b2": {"encoder": "vit_tiny", "weights": "random", "taps": ["block:2"]},
    },
    "superpixels": {"slic": {"n_segments": 16, "threads": 1}},
    "methods": {"sam_tiny_b2_linear": {"head": "linear_probe", "features": "sam_tiny_b2"}},
    "tables": {"demo_table1": {"rows": ["sam_tiny_linear", "sam_tiny_b2_linear"]}},
}


def overlay(tmp_path, name, cfg) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def nothing_to_do(res) -> bool:
    return res.returncode == 0 and "Nothing to be done" in res.stdout + res.stderr


@pytest.fixture(scope="module")
def built_caches(tmp_path_factory):
    work = tmp_path_factory.mktemp("wf")
    cfg = overlay(work, "two", TWO_CACHES)
    res = snakemake(
        work, "--configfile", str(REPO / "workflow/config/demo.yaml"), cfg, "--cores", "8", "caches"
    )
    assert res.returncode == 0, res.stderr[-5000:]
    return work, cfg, res.stdout + res.stderr


def test_the_default_profile_runs_one_gpu_job_at_a_time(built_caches):
    """--cores 8 leaves room for both 4-thread feature jobs; the profile's gpu=1 must not."""
    _, _, output = built_caches
    events = re.findall(
        r"^(?:local)?rule (features):|^Finished jobid: \d+ \(Rule: (features)\)", output, re.M
    )
    sequence = ["start" if start else "end" for start, _ in events]
    assert sequence == ["start", "end", "start", "end"], output


def test_touching_source_files_or_speed_settings_rebuilds_nothing(built_caches):
    work, cfg, _ = built_caches
    demo = str(REPO / "workflow/config/demo.yaml")
    now = time.time()
    for path in (REPO / "src/samcache/features").glob("*.py"):  # edited code, same settings
        os.utime(path, (now, now))
    assert nothing_to_do(snakemake(work, "--configfile", demo, cfg, "--dry-run", "caches"))
    faster = {
        "feature_sets": {"sam_tiny": {"batch_size": 2, "device": "cpu"}},
        "superpixels": {"slic": {"threads": 2}},
    }
    res = snakemake(
        work, "--configfile", demo, cfg, overlay(work, "fast", faster), "--dry-run", "caches"
    )
    assert nothing_to_do(res), res.stdout


def test_a_setting_that_changes_values_gets_a_new_cache(built_caches):
    work, cfg, _ = built_caches
    demo = str(REPO / "workflow/config/demo.yaml")
    pooled = {"feature_sets": {"sam_tiny": {"grid": 4}}}
    res = snakemake(
        work, "--configfile", demo, cfg, overlay(work, "pooled", pooled), "--dry-run", "caches"
    )
    assert res.returncode == 0, res.stderr
    assert job_counts(res.stdout) == {"features": 1, "caches": 1}
    old = {p.name for p in (work / "cache/features/demo").iterdir()}
    new = re.search(r"cache/features/demo/(sam_tiny-[0-9a-f]{12})/manifest.json", res.stdout)
    assert new and new.group(1) not in old  # a new directory; the old cache stays untouched


def test_official_weights_download_the_checkpoint_unless_it_was_placed_by_hand(tmp_path):
    official = {
        "feature_sets": {"sam_tiny": {"encoder": "vit_b", "weights": "official", "taps": ["neck"]}}
    }
    args = (
        "--configfile",
        str(REPO / "workflow/config/demo.yaml"),
        overlay(tmp_path, "vit_b", official),
        "--dry-run",
        "caches",
    )
    res = snakemake(tmp_path, *args)
    assert res.returncode == 0, res.stderr
    assert job_counts(res.stdout)["sam_checkpoint"] == 1
    name = official_checkpoint("vit_b").filename
    assert "python -m samcache checkpoint --encoder vit_b --dir checkpoints" in res.stdout
    assert re.search(rf"input: data/stores/demo.zarr, checkpoints/{re.escape(name)}", res.stdout)

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / name).write_bytes(b"placed by hand")  # verified by the job
    res = snakemake(tmp_path, *args)
    assert res.returncode == 0, res.stderr
    assert "sam_checkpoint" not in job_counts(res.stdout)

    random = {"feature_sets": {"sam_tiny": {"weights": "random"}}}
    res = snakemake(
        tmp_path,
        "--configfile",
        str(REPO / "workflow/config/demo.yaml"),
        overlay(tmp_path, "random", random),
        "--dry-run",
        "caches",
    )
    assert "sam_checkpoint" not in job_counts(res.stdout)
