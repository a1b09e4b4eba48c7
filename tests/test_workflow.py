"""The Snakemake workflow: config validation, lint, the plan of a single target, the demo DAG."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO
from loopback import Loopback
from source_fixtures import medmnist_npz, sha256

DEMO = REPO / "workflow" / "config" / "demo.yaml"


PAPER = REPO / "config.yaml"


def place_checkpoints(workdir: Path, config: Path = PAPER) -> list[Path]:
    """Empty stand-ins for every backbone checkpoint the config names (a dry run only checks
    that they are there; a run would verify and load them)."""
    cfg = yaml.safe_load(config.read_text())
    paths = {
        workdir / m["head_args"]["checkpoint"]
        for m in cfg["methods"].values()
        if (m.get("head_args") or {}).get("checkpoint")
    }
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    return sorted(paths)


def snakemake(
    workdir: Path, *args: str, config: tuple[Path, ...] = (DEMO,), timeout: int = 900
) -> subprocess.CompletedProcess:
    """Run Snakemake on ``config`` files alone (the demo by default), replacing config.yaml."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(workdir),
        "--configfile",
        *map(str, config),
        "--replace-workflow-config",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def job_counts(output: str) -> dict[str, int]:
    table = output.split("Job stats:")[1].split("total")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


@pytest.mark.parametrize(
    "base, overlay, key",
    [
        (DEMO, "train:\n  epochs: many\n", "train.epochs"),
        (DEMO, "trian:\n  epochs: 3\n", "trian"),
        (
            DEMO,
            "datasets:\n  demo:\n    source: synthetic\n    n_imgs: 10\n",
            "datasets.demo.n_imgs",
        ),
        # a baseline must be another row of its table
        (
            DEMO,
            "tables:\n  demo_table1:\n    blocks: [{dataset: demo, task: grade}]\n"
            "    rows: [sam_tiny_linear, {method: sam_tiny_mlp, baseline: sam_tiny_nope}]\n",
            "tables.demo_table1: row 'sam_tiny_mlp' names baseline 'sam_tiny_nope'",
        ),
        # a key of another source (ISIC 2016's validation split) is an error for ISIC 2017
        (
            PAPER,
            "datasets:\n  isic2017:\n    val_fraction: 0.1\n",
            "datasets.isic2017.val_fraction",
        ),
        # a method given twice: YAML would keep only the second
        (
            DEMO,
            "methods:\n  sam_tiny_mlp: {head: mlp_probe}\n  sam_tiny_mlp: {head: linear_probe}\n",
            "line 3: key 'sam_tiny_mlp' is given twice",
        ),
        (DEMO, "tables:\n  demo_table1:\n    seeds: [0, 0]\n", "tables.demo_table1.seeds"),
        (DEMO, "tables:\n  demo_table1:\n    fractions: []\n", "tables.demo_table1.fractions"),
        (
            DEMO,
            "methods:\n  sam_tiny_mlp:\n    head_args: {hiden: 64}\n",
            "methods.sam_tiny_mlp.head_args: ['hiden'] are not settings of head 'mlp_probe'",
        ),
        (DEMO, "methods:\n  sam_tiny_linear:\n    head: linear\n", "methods.sam_tiny_linear.head"),
        (
            DEMO,
            "methods:\n  sam_tiny_linear:\n    taps: ['block:3']\n",
            "methods.sam_tiny_linear.taps: ['block:3'] are not in feature set 'sam_tiny'",
        ),
        (
            DEMO,
            "feature_sets:\n  sam_tiny:\n    taps: ['block:9']\n",
            "feature_sets.sam_tiny: tap 'block:9': encoder vit_tiny has blocks 1..4",
        ),
    ],
)
def test_config_errors_stop_before_any_job_and_name_the_key(tmp_path, base, overlay, key):
    bad = tmp_path / "bad.yaml"
    bad.write_text(overlay)
    res = snakemake(tmp_path, "--cores", "1", config=(base, bad))
    assert res.returncode != 0
    assert key in res.stderr + res.stdout
    assert not (tmp_path / "data").exists() and not (tmp_path / "results").exists()


def test_lint_reports_nothing(tmp_path):
    res = snakemake(tmp_path, "--lint")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Congratulations" in res.stdout + res.stderr


def test_a_table_target_schedules_only_the_jobs_it_needs(tmp_path):
    res = snakemake(tmp_path, "--dry-run", "results/tables/demo_table1.md")
    assert res.returncode == 0, res.stderr
    counts = job_counts(res.stdout)
    # 36 runs, trained by 3 processes of 12 runs (sweep.runs_per_job: 16, in equal batches)
    assert counts == {"dataset": 1, "features": 1, "train": 36, "train_batch": 3, "table": 1}


def test_a_paper_store_plans_one_download_per_missing_file(tmp_path):
    res = snakemake(tmp_path, "--dry-run", "data/stores/isic2017.zarr", config=(PAPER,))
    assert res.returncode == 0, res.stderr
    assert job_counts(res.stdout) == {"download": 12, "dataset": 1}
    # A file placed by hand is not downloaded (the dataset job verifies it before use).
    placed = tmp_path / "data/raw/isic2017/ISIC-2017_Training_Data.zip"
    placed.parent.mkdir(parents=True)
    placed.write_bytes(b"placed by hand")
    # ... and the seed-001 variant shares the same raw files: nothing more to download.
    res = snakemake(
        tmp_path,
        "--dry-run",
        "data/stores/isic2017.zarr",
        "data/stores/isic2017_crop256.zarr",
        config=(PAPER,),
    )
    assert job_counts(res.stdout) == {"download": 11, "dataset": 2}


def test_download_and_dataset_rules_build_a_store_from_a_mirror(tmp_path):
    srv_root = tmp_path / "srv"
    srv_root.mkdir()
    npz = medmnist_npz(srv_root / "breastmnist.npz", rgb=False, n_classes=2, size=8)
    workdir = tmp_path / "wd"
    with Loopback(srv_root) as srv:
        overlay = tmp_path / "breast.yaml"
        overlay.write_text(
            "datasets:\n  breast_small:\n    source: breastmnist\n    size: 28\n"
            f"    image_size: 16\n    mirror: http://127.0.0.1:{srv.port}\n"
            f"    checksums: {{breastmnist.npz: {sha256(npz)}}}\n"
        )
        res = snakemake(
            workdir, "--cores", "1", "data/stores/breast_small.zarr", config=(DEMO, overlay)
        )
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert srv.hits["breastmnist.npz"] == 1
    assert (workdir / "data/raw/breastmnist/breastmnist.npz").read_bytes() == npz.read_bytes()
    from samcache.data.store import DatasetStore

    store = DatasetStore(workdir / "data/stores/breast_small.zarr")
    assert store.images.shape == (22, 16, 16, 3) and "diagnosis" in store.tasks
    assert (workdir / "logs/download/breastmnist/breastmnist.npz.log").exists()
    again = snakemake(workdir, "--dry-run", "data/stores/breast_small.zarr", config=(DEMO, overlay))
    assert "Nothing to be done" in again.stdout + again.stderr


def table_records(config: dict, names: list[str]) -> set[tuple]:
    """The distinct runs the named tables need, read from the config file itself (a table of
    dataset statistics needs none)."""
    return {
        (b["dataset"], b["task"], r if isinstance(r, str) else r["method"], float(f), int(s))
        for t in (config["tables"][n] for n in names)
        if t.get("kind", "runs") == "runs"
        for b in t["blocks"]
        for r in t["rows"]
        for f in t.get("fractions", [10, 50, 100])
        for s in t.get("seeds", [0, 1, 2, 3, 4])
    }


def test_all_tables_builds_every_demo_table_and_only_their_runs(tmp_path):
    demo = yaml.safe_load(DEMO.read_text())
    names = sorted(t for t in demo["tables"] if t.startswith("demo_"))
    assert {"demo_gu_table1", "demo_gu_table2", "demo_gu_table3", "demo_gu_table4"} <= set(names)
    assert {f"demo_aernet_table{i}" for i in (1, 2, 3)} | {"demo_thwin_table1"} <= set(names)
    res = snakemake(tmp_path, "--dry-run", "all_tables")
    assert res.returncode == 0, res.stderr
    counts = job_counts(res.stdout)
    assert counts["table"] == len(names)
    assert counts["train"] == len(table_records(demo, names))
    # one SAM prior cache; the feature caches of the classification heads and the dense ones
    assert counts["sam_prior"] == 1 and counts["features"] == 2
    scheduled = set(re.findall(r"results/tables/(\w+)\.md", res.stdout))
    assert scheduled == set(names)
    # every run of the tables asked for is needed: batches of up to 16 runs, across tables
    assert counts["train_batch"] == math.ceil(counts["train"] / 16)


def test_paper_tables_plan_every_run_with_the_papers_settings(tmp_path):
    paper = yaml.safe_load(PAPER.read_text())
    names = ["gu_table1", "gu_table2", "gu_table3", "gu_table4"]
    targets = [f"results/tables/{n}.md" for n in names]
    place_checkpoints(tmp_path)
    res = snakemake(tmp_path, "--dry-run", *targets, config=(PAPER,))
    assert res.returncode == 0, res.stderr
    counts = job_counts(res.stdout)
    assert counts["table"] == 4
    assert counts["train"] == len(table_records(paper, names)) == 445
    assert counts["features"] == counts["sam_prior"] == counts["dataset"] == 3
    assert counts["sam_checkpoint"] == 1  # ViT-H, downloaded once for all three caches
    epochs = {  # seed 000: 400 epochs on ISIC 2017, 100 on the MedMNIST sets
        (m.group(1), json.loads(m.group(2))["train"]["epochs"])
        for m in re.finditer(
            r"train --dataset data/stores/(\w+)\.zarr .*?--spec '(\{.*?\})'", res.stdout
        )
    }
    assert epochs == {("isic2017", 400), ("retinamnist", 100), ("breastmnist", 100)}


def test_seed001_paper_tables_plan_the_papers_schedule_on_the_cropped_isic_stores(tmp_path):
    paper = yaml.safe_load(PAPER.read_text())
    names = ["seed001_table1", "seed001_table2", "seed001_table3"]
    place_checkpoints(tmp_path)
    res = snakemake(
        tmp_path, "--dry-run", *[f"results/tables/{n}.md" for n in names], config=(PAPER,)
    )
    assert res.returncode == 0, res.stderr
    counts = job_counts(res.stdout)
    assert counts["train"] == len(table_records(paper, names)) == 42  # Table 3 reuses Table 2's
    assert counts["dataset"] == counts["features"] == 2  # isic2016, isic2017_crop256
    specs = [
        (m.group(1), json.loads(m.group(2)))
        for m in re.finditer(
            r"train --dataset data/stores/(\w+)\.zarr .*?--spec '(\{.*?\})'", res.stdout
        )
    ]
    assert {d for d, _ in specs} == {"isic2016", "isic2017_crop256"}
    schedules = {
        (s["train"]["optimizer"], s["train"]["lr"], s["train"]["epochs"], s["train"]["oversample"])
        for _, s in specs
    }
    assert schedules == {("sgd", 0.01, 50, True)}


def test_a_paper_table_refuses_to_start_without_its_checkpoints(tmp_path):
    """Before any job: the error names each missing file and where to place it."""
    res = snakemake(tmp_path, "--dry-run", "results/tables/seed001_table1.md", config=(PAPER,))
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert "place vgg16_bn-6c64b313.pth" in out and str(tmp_path / "checkpoints") in out
    assert "download.pytorch.org/models/vgg16_bn-6c64b313.pth" in out
    assert not (tmp_path / "data").exists() and not (tmp_path / "results").exists()
    placed = place_checkpoints(tmp_path)
    assert [p.name for p in placed if p.suffix == ".pth"] == ["vgg16_bn-6c64b313.pth"]
    res = snakemake(tmp_path, "--dry-run", "results/tables/seed001_table1.md", config=(PAPER,))
    assert res.returncode == 0, res.stderr


@pytest.mark.slow
def test_demo_dag_end_to_end(tmp_path):
    res = snakemake(tmp_path, "--cores", "2")
    assert res.returncode == 0, res.stderr[-5000:]
    table = pd.read_csv(tmp_path / "results/tables/demo_table1.csv", index_col=0)
    means = table[[c for c in table.columns if c.endswith("/mean")]]
    assert means.shape == (2, 12)
    assert np.isfinite(means.to_numpy()).all()
    melanoma_auc = means[[c for c in means.columns if "melanoma" in c and "AUC" in c]]
    assert (melanoma_auc.to_numpy() > 80).all(), melanoma_auc  # chance is 50
    md = (tmp_path / "results/tables/demo_table1.md").read_text()
    assert sum(line.count("±") for line in md.splitlines() if line.startswith("| ")) == 24
    assert (tmp_path / "results/tables/demo_table1.png").exists()
    runs = pd.read_csv(tmp_path / "results/tables/demo_table1.runs.csv")
    assert len(runs) == 36 and runs.cache_key.nunique() == 1
    assert (runs.predictions == 120).all()  # every test image of the 600-image demo
    # the MLP probe against the linear one: 2 blocks x 3 fractions x 2 metrics x 3 seeds
    comp = pd.read_csv(tmp_path / "results/tables/demo_table1.compare.csv")
    assert len(comp) == 36 and set(comp.test) == {"DeLong", "permutation"}
    assert "Paired comparisons" in (tmp_path / "results/tables/demo_table1.html").read_text()
    assert (tmp_path / "results/galleries/demo_table1").is_dir()  # probes: no maps to show
    rec = json.loads(next((tmp_path / "results/runs").rglob("*.json")).read_text())
    for key in (
        "config",
        "seed",
        "fraction",
        "code_version",
        "cache_key",
        "metrics",
        "wall_time_s",
    ):
        assert key in rec
    # no method of these tables reads superpixels: none are computed
    assert not (tmp_path / "cache/superpixels").exists()
    assert (tmp_path / "logs/train").is_dir()
    # 36 runs trained by 3 processes: every record in place, nothing left staged
    assert len(list((tmp_path / "logs/train_batch").rglob("*.log"))) == 3
    assert not list((tmp_path / "results").rglob(".staged/*.json"))
    assert not list((tmp_path / "results").rglob("batches/**/*.json"))
    again = snakemake(tmp_path, "--dry-run")
    assert "Nothing to be done" in again.stdout + again.stderr
    # A record lost: its batch runs again and trains that run alone; the others stay as they are
    lost = tmp_path / "results/runs/demo/grade/sam_tiny_mlp/f10_s1.json"
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "results/runs").rglob("*.json")}
    old_record = json.loads(lost.read_text())
    lost.unlink()
    res = snakemake(tmp_path, "--cores", "2", str(lost.relative_to(tmp_path)))
    assert res.returncode == 0, res.stderr[-5000:]
    assert res.stderr.count("rule train_batch:") == 1 and res.stderr.count("rule train:") == 1
    batch_log = max((tmp_path / "logs/train_batch").rglob("*.log"), key=lambda p: p.stat().st_mtime)
    assert "1 trained, 11 kept, 0 failed" in batch_log.read_text()
    new_record = json.loads(lost.read_text())
    for rec in (old_record, new_record):
        del rec["started"], rec["wall_time_s"]
    assert new_record == old_record
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "results/runs").rglob("*.json")}
    assert {p for p in after if after[p] != before.get(p)} == {lost}  # none left staged


def test_seed001_tables_schedule_their_runs_and_image_heads_need_no_feature_cache(tmp_path):
    res = snakemake(tmp_path, "--dry-run", "results/tables/demo_seed001_table3.md")
    assert res.returncode == 0, res.stderr
    assert job_counts(res.stdout) == {
        "dataset": 1,
        "features": 1,
        "train": 12,
        "train_batch": 1,  # the 12 runs the table asks for, in one process
        "table": 1,
    }
    overlay = tmp_path / "vgg_only.yaml"
    overlay.write_text(
        "tables:\n  vgg_only:\n    blocks: [{dataset: demo, task: melanoma}]\n"
        "    rows: [demo_attnmel_cnn_lesion]\n    fractions: [100]\n    seeds: [0]\n"
    )
    res = snakemake(tmp_path, "--dry-run", "results/tables/vgg_only.md", config=(DEMO, overlay))
    assert res.returncode == 0, res.stderr
    assert job_counts(res.stdout) == {"dataset": 1, "train": 1, "train_batch": 1, "table": 1}
    train_cmd = re.search(r"python -m samcache train --dataset .*", res.stdout).group(0)
    batch_cmd = re.search(r"python -m samcache train-batch .*", res.stdout).group(0)
    assert "--features" not in train_cmd and '"features": null' in batch_cmd


def test_a_table_can_name_the_28_px_medmnist_files(tmp_path):
    """RetinaMNIST from MedMNIST v2's 28 px file instead of the default 224 px one."""
    overlay = tmp_path / "v2.yaml"
    overlay.write_text(
        "tables:\n  gu_table3_28px:\n    blocks: [{dataset: retinamnist_28, task: grade}]\n"
        "    rows: [senet154, senet154_sam]\n    fractions: [100]\n    seeds: [0]\n"
        "    metrics: [acc]\n"
    )
    place_checkpoints(tmp_path)
    res = snakemake(
        tmp_path, "--dry-run", "results/tables/gu_table3_28px.md", config=(PAPER, overlay)
    )
    assert res.returncode == 0, res.stderr
    assert "data/raw/retinamnist/retinamnist.npz" in res.stdout
    assert "retinamnist_224.npz" not in res.stdout
    spec = json.loads(re.search(r"samcache table --spec '(\{.*?\})'", res.stdout).group(1))
    assert spec["datasets"]["retinamnist_28"] == {
        **spec["datasets"]["retinamnist_28"],
        "size": 28,
        "image_size": 224,
    }


def test_cuda_training_shares_the_card_in_slots_and_an_encoder_job_takes_them_all(tmp_path):
    """The default profile's gpu_slot=2: a batch that trains on CUDA (rule train_batch_cuda)
    holds one slot (two share the card), the feature extraction holds the whole card (gpu=1)
    and every slot; a run's job that only moves its batch's record holds neither."""
    place_checkpoints(tmp_path)
    res = snakemake(tmp_path, "--dry-run", "results/tables/gu_table3.md", config=(PAPER,))
    assert res.returncode == 0, res.stderr
    jobs = re.findall(
        r"^(?:local)?rule (\w+):\n(?:    .*\n)*?    resources: (.*)$", res.stdout, re.M
    )
    resources = {}
    for rule, text in jobs:
        values = dict(kv.split("=") for kv in text.split(", "))
        resources.setdefault(rule, set()).add((values.get("gpu", "0"), values.get("gpu_slot")))
    assert resources["features"] == {("1", "2")}
    assert resources["train_batch_cuda"] == {("0", "1")}
    assert "train_batch" not in resources  # every method of Table III trains on CUDA
    assert resources["train"] == {("0", "0")}


def planned_specs(output: str) -> list[tuple[str, dict]]:
    return [
        (m.group(1), json.loads(m.group(2)))
        for m in re.finditer(
            r"train --dataset data/stores/(\w+)\.zarr .*?--spec '(\{.*?\})'", output
        )
    ]


@pytest.mark.parametrize(
    "names, runs, datasets, caches",
    [
        (["aernet_table1", "aernet_table2", "aernet_table3"], 33, {"isic2018"}, 1),
        (["thwin_table1", "thwin_table2"], 24, {"isic2018_8020"}, 1),
        (["aernet_table2"], 18, {"isic2018"}, 1),
        (["aernet_table1"], 15, {"isic2018"}, 0),  # no SAM row: no feature cache
    ],
)
def test_segmentation_paper_tables_plan_every_run_with_the_papers_settings(
    tmp_path, names, runs, datasets, caches
):
    """Seed 002: Tables 1 (5 backbones) and 2 (4 rows + 2 SAM rows), Table 3 reusing Table 2's
    runs, 3 seeds; seed 004: Tables I and II (2 rows + 2 SAM rows each) on the 80/20 split. A
    table plans only the caches its rows read."""
    paper = yaml.safe_load(PAPER.read_text())
    place_checkpoints(tmp_path)
    targets = [f"results/tables/{n}.md" for n in names]
    res = snakemake(tmp_path, "--dry-run", *targets, config=(PAPER,))
    assert res.returncode == 0, res.stderr
    counts = job_counts(res.stdout)
    assert counts["table"] == len(names)
    assert counts["train"] == len(table_records(paper, names)) == runs
    assert counts["dataset"] == len(datasets)
    assert counts.get("features", 0) == caches and counts.get("sam_prior", 0) == 0
    specs = planned_specs(res.stdout)
    assert {d for d, _ in specs} == datasets
    schedules = {
        (s["train"]["optimizer"], s["train"]["lr"], s["train"]["epochs"], s["train"]["batch_size"])
        for _, s in specs
    }
    assert schedules == {("adam", 0.001, 100, 16)}
    assert {s["train"]["select_metric"] for _, s in specs} == (
        {"jaccard"} if "isic2018" in datasets else {"fg_iou"}
    )
    assert all(s.get("image_size") is None for _, s in specs)  # the 256 px store itself


def test_a_segmentation_paper_table_refuses_to_start_without_its_backbone(tmp_path):
    res = snakemake(tmp_path, "--dry-run", "results/tables/aernet_table3.md", config=(PAPER,))
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert "place tf_efficientnet_b1.aa_in1k.safetensors" in out
    assert "huggingface.co/timm/tf_efficientnet_b1.aa_in1k" in out
