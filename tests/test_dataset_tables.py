"""Tables of a dataset store's ground truth (samcache.dataset_tables): counted from the store
alone, on one split, the same files as a table of runs, and built by the `table` rule."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from samcache import code_version, dataset_tables
from samcache.cli import main
from samcache.data.store import DatasetStore, write_dataset_store
from samcache.dataset_tables import count_masks, write_statistics_table

from conftest import REPO
from test_workflow import DEMO, job_counts, snakemake

#: Seed 003's attributes, in the order of ISIC 2018 task 2's store, and of its Table 1.
CLASSES = ["pigment_network", "negative_network", "streaks", "milia_like_cyst", "globules"]
PAPER_ORDER = ["pigment_network", "negative_network", "milia_like_cyst", "globules", "streaks"]
SUFFIXES = {
    "md": ".md",
    "tex": ".tex",
    "csv": ".csv",
    "runs-csv": ".runs.csv",
    "compare-csv": ".compare.csv",
    "html": ".html",
    "plot": ".png",
}


def attribute_masks(split: np.ndarray, h: int = 12, w: int = 10) -> np.ndarray:
    """(N, 5, h, w) 0/1 masks: each class with its own sparsity; streaks only outside the
    training split, so that counting another split would show."""
    rng = np.random.default_rng(7)
    n = len(split)
    masks = np.zeros((n, 5, h, w), dtype=np.uint8)
    for k, share in enumerate([0.8, 0.3, 0.0, 0.5, 0.6]):
        present = rng.random(n) < share
        masks[present, k] = rng.random((int(present.sum()), h, w)) < 0.05 * (k + 1)
    masks[split != 0, 2, :3, :4] = 1
    masks[split == 0, 1] = 0
    masks[np.flatnonzero(split == 0)[0], 1, -1, -1] = 1  # one pixel of one image
    return masks


@pytest.fixture
def attributes_store(tmp_path) -> DatasetStore:
    """A store of 23 images of 12 x 10 px, 4 per shard, the splits interleaved; the five
    attribute masks as the segmentation task 'attributes', and a classification task."""
    split = np.array([0, 0, 1, 0, 2, 0, 0, 0, 1, 2, 0, 0, 0, 2, 0, 1, 0, 0, 2, 0, 0, 1, 0])
    n = len(split)
    return write_dataset_store(
        tmp_path / "isic_small.zarr",
        name="isic_small",
        source="synthetic",
        images=np.zeros((n, 12, 10, 3), dtype=np.uint8),
        split=split,
        labels={"melanoma": np.arange(n) % 2},
        tasks={
            "melanoma": {"type": "binary", "classes": ["benign", "melanoma"]},
            "attributes": {"type": "segmentation", "classes": CLASSES, "mask": "masks/attributes"},
        },
        attributes=attribute_masks(split),
        attribute_names=CLASSES,
        items_per_shard=4,
    )


def expected(store: DatasetStore, split: int = 0) -> dict[str, dict[str, float]]:
    """Both statistics in percent by class, from the whole mask array in memory."""
    masks = np.asarray(store.group["masks/attributes"][:])[store.split() == split] > 0
    n, k, h, w = masks.shape
    blank = 100.0 * (~masks.reshape(n, k, -1).any(axis=2)).sum(axis=0) / n
    foreground = 100.0 * masks.sum(axis=(0, 2, 3)) / (n * h * w)
    return {
        c: {"blank_images": blank[i], "foreground_pixels": foreground[i]}
        for i, c in enumerate(CLASSES)
    }


def spec(**overrides) -> dict:
    out = {
        "name": "sanet_table1",
        "kind": "dataset_statistics",
        "title": "Information of each type of attribute",
        "blocks": [{"dataset": "isic_small", "task": "attributes", "label": "ISIC small"}],
        "rows": PAPER_ORDER,
        "labels": {"pigment_network": "Pigment network", "milia_like_cyst": "Milia-like cyst"},
    }
    return {**out, **overrides}


@pytest.mark.parametrize("read_items", [1, 5, 64])
def test_counts_only_the_split_asked_for_a_few_shards_at_a_time(
    attributes_store, monkeypatch, read_items
):
    monkeypatch.setattr(dataset_tables, "READ_ITEMS", read_items)
    for split, code in (("train", 0), ("test", 2)):
        counts = count_masks(attributes_store, "attributes", split)
        assert counts.images == int((attributes_store.split() == code).sum())
        for cls, want in expected(attributes_store, code).items():
            for stat, value in want.items():
                assert counts.statistic(stat, cls) == pytest.approx(value, abs=1e-12)
    train = count_masks(attributes_store, "attributes")
    assert train.statistic("blank_images", "streaks") == 100.0  # present in the other splits only
    assert train.statistic("foreground_pixels", "negative_network") == pytest.approx(
        100.0 / (train.images * 12 * 10)
    )


def table_args(out: Path, name: str = "sanet_table1") -> list[str]:
    return [a for k, s in SUFFIXES.items() for a in (f"--{k}", str(out / f"{name}{s}"))]


def test_the_table_command_writes_every_file_of_the_rule_in_the_papers_layout(
    attributes_store, tmp_path
):
    out = tmp_path / "tables"
    args = ["table", "--spec", json.dumps(spec()), *table_args(out), str(attributes_store.path)]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"sanet_table1{s}" for s in SUFFIXES.values()
    )
    want = expected(attributes_store)
    labels = ["Pigment network", "negative_network", "Milia-like cyst", "globules", "streaks"]
    table = pd.read_csv(out / "sanet_table1.csv", index_col=0)
    assert list(table.index) == labels
    for cls, label in zip(PAPER_ORDER, labels, strict=True):
        assert table.loc[label, "ISIC small/Blank images (%)"] == pytest.approx(
            want[cls]["blank_images"], abs=1e-4
        )
        assert table.loc[label, "ISIC small/Foreground pixels (%)"] == pytest.approx(
            want[cls]["foreground_pixels"], abs=1e-4
        )
    assert (table["ISIC small/images"] == 15).all() and (
        table["ISIC small/pixels"] == 15 * 120
    ).all()
    md = (out / "sanet_table1.md").read_text()
    assert "| Attribute | Blank images (%) | Foreground pixels (%) |" in md
    pn = want["pigment_network"]
    assert f"| Pigment network | {pn['blank_images']:.2f} | {pn['foreground_pixels']:.2f} |" in md
    for what in ("15 training images", str(attributes_store.path), attributes_store.fingerprint):
        assert what in md  # the caption says what was counted, where and by which code
    assert f"samcache {code_version()}" in md
    assert "Milia-like cyst & " in (out / "sanet_table1.tex").read_text()
    html = (out / "sanet_table1.html").read_text()
    assert attributes_store.fingerprint in html and "<th>Foreground pixels (%)</th>" in html
    assert (out / "sanet_table1.png").read_bytes()[:4] == b"\x89PNG"
    for empty in ("runs", "compare"):  # no runs: the header alone
        frame = pd.read_csv(out / f"sanet_table1.{empty}.csv")
        assert frame.empty and "block" in frame.columns


def test_several_blocks_are_column_groups_and_another_split_can_be_counted(
    attributes_store, tmp_path
):
    blocks = [
        {"dataset": "isic_small", "task": "attributes", "label": "A"},
        {"dataset": "other", "task": "attributes", "label": "B"},
    ]
    shutil.copytree(attributes_store.path, tmp_path / "other.zarr")
    summary = write_statistics_table(
        spec(blocks=blocks, split="test", metrics=["blank_images"]),
        [attributes_store.path, tmp_path / "other.zarr"],
        tmp_path / "t.md",
        tmp_path / "t.csv",
        tex=tmp_path / "t.tex",
    )
    assert list(summary.columns) == [("A", "Blank images (%)"), ("B", "Blank images (%)")]
    assert summary.loc["streaks"].tolist() == [0.0, 0.0]  # every test image has streaks
    assert (
        "| Attribute | A Blank images (%) | B Blank images (%) |" in (tmp_path / "t.md").read_text()
    )
    assert r"\multicolumn{1}{c}{A}" in (tmp_path / "t.tex").read_text()
    assert "test images" in (tmp_path / "t.md").read_text()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"rows": ["pigment_network", "globuls"]},
            "tables.sanet_table1.rows: ['globuls'] are not classes of task 'attributes' of "
            "dataset 'isic_small'",
        ),
        ({"labels": {"globuls": "Globules"}}, "tables.sanet_table1.labels: ['globuls']"),
        (
            {"blocks": [{"dataset": "isic_small", "task": "melanoma"}]},
            "tables.sanet_table1.blocks[0].task: 'melanoma' is a binary task",
        ),
        ({"seeds": [0]}, "tables.sanet_table1.seeds: a key of run tables only"),
        ({"metrics": ["auc"]}, "tables.sanet_table1.metrics: ['auc'] are not statistics"),
        (
            {"blocks": [{"dataset": "isic_big", "task": "attributes"}]},
            "0 of the dataset stores given",
        ),
    ],
)
def test_a_table_that_cannot_be_counted_is_refused_before_anything_is_written(
    attributes_store, tmp_path, overrides, message
):
    with pytest.raises(ValueError) as err:
        write_statistics_table(
            spec(**overrides), [attributes_store.path], tmp_path / "t.md", tmp_path / "t.csv"
        )
    assert message in str(err.value)
    if "rows" in overrides:  # the valid classes are named
        assert str(CLASSES) in str(err.value)
    assert not list(tmp_path.glob("t.*"))


def test_the_command_fails_with_one_line_on_a_class_that_is_not_in_the_store(
    attributes_store, tmp_path, caplog
):
    bad = spec(rows=["pigment_netwrk", "globules"])
    out = tmp_path / "tables"
    args = ["table", "--spec", json.dumps(bad), *table_args(out), str(attributes_store.path)]
    assert main(args) == 1
    assert not out.exists()
    (error,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert error.startswith("tables.sanet_table1.rows: ['pigment_netwrk'] are not classes")
    assert str(CLASSES) in error and "\n" not in error
    caplog.clear()
    rescore = ["rescore", "--spec", json.dumps(spec()), "--md", "x.md", "--csv", "x.csv"]
    assert main(rescore) == 1  # nothing to rescore: no runs
    assert "it has no runs to rescore" in caplog.text


# --- the workflow ---------------------------------------------------------------------------

#: A standalone workflow config with one statistics table of the synthetic demo store (whose
#: task 'attributes' holds its five attribute masks) and a superpixel set it must not plan.
CONFIG = {
    "standalone": True,
    "targets": ["demo_attribute_stats"],
    "datasets": {"demo": {"source": "synthetic", "n_images": 30, "image_size": 32, "seed": 0}},
    "superpixels": {"slic": {"n_segments": 16}},
    "tables": {
        "demo_attribute_stats": {
            "kind": "dataset_statistics",
            "title": "Information of each type of attribute",
            "blocks": [{"dataset": "demo", "task": "attributes"}],
            "rows": PAPER_ORDER,
        }
    },
}


def write_config(tmp_path: Path, **tables) -> Path:
    cfg = {**CONFIG, "tables": {**CONFIG["tables"], **tables}}
    path = tmp_path / "stats.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_statistics_table_plans_only_its_dataset_store_and_itself(tmp_path):
    config = (write_config(tmp_path),)
    for targets in ([], ["results/tables/demo_attribute_stats.md"]):
        res = snakemake(tmp_path, "--dry-run", *targets, config=config)
        assert res.returncode == 0, res.stderr
        counts = job_counts(res.stdout)
        assert counts == ({"dataset": 1, "table": 1} | ({"all": 1} if not targets else {}))
    res = snakemake(tmp_path, "--dry-run", "all_tables", "all_galleries", config=config)
    assert res.returncode == 0, res.stderr
    assert job_counts(res.stdout) == {
        "dataset": 1,
        "table": 1,
        "all_tables": 1,
        "all_galleries": 1,
    }
    res = snakemake(tmp_path, "--dry-run", "results/galleries/demo_attribute_stats", config=config)
    assert res.returncode != 0
    assert "dataset_statistics table: it has no runs, so no gallery" in res.stdout + res.stderr


def test_a_run_key_on_a_statistics_table_stops_the_workflow_naming_it(tmp_path):
    bad = {**CONFIG["tables"]["demo_attribute_stats"], "fractions": [100]}
    res = snakemake(
        tmp_path, "--dry-run", config=(write_config(tmp_path, demo_attribute_stats=bad),)
    )
    assert res.returncode != 0
    assert (
        "'tables.demo_attribute_stats.fractions': a key of run tables only"
        in res.stdout + res.stderr
    )


@pytest.mark.filterwarnings("ignore:Object at .snakemake_timestamp is not recognized")
def test_snakemake_builds_the_table_from_the_synthetic_store_alone(tmp_path):
    """Needs the synthetic store's task 'attributes' (samcache.data.synthetic)."""
    res = snakemake(
        tmp_path,
        "--cores",
        "1",
        "results/tables/demo_attribute_stats.md",
        config=(write_config(tmp_path),),
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    tables = tmp_path / "results/tables"
    assert sorted(p.name for p in tables.iterdir()) == sorted(
        f"demo_attribute_stats{s}" for s in SUFFIXES.values()
    )
    assert not (tmp_path / "results/runs").exists() and not (tmp_path / "cache").exists()
    store = DatasetStore(tmp_path / "data/stores/demo.zarr")
    masks = np.asarray(store.group["masks/attributes"][:])[store.split() == 0] > 0
    n, _, h, w = masks.shape
    table = pd.read_csv(tables / "demo_attribute_stats.csv", index_col=0)
    block = "demo / attributes"
    for cls in PAPER_ORDER:
        k = store.task("attributes").classes.index(cls)
        blank = 100.0 * (~masks[:, k].reshape(n, -1).any(axis=1)).mean()
        foreground = 100.0 * masks[:, k].sum() / (n * h * w)
        assert table.loc[cls, f"{block}/Blank images (%)"] == pytest.approx(blank, abs=1e-4)
        assert table.loc[cls, f"{block}/Foreground pixels (%)"] == pytest.approx(
            foreground, abs=1e-4
        )
    assert "data/stores/demo.zarr" in (tables / "demo_attribute_stats.md").read_text()
    again = snakemake(tmp_path, "--dry-run", config=(tmp_path / "stats.yaml",))
    assert "Nothing to be done" in again.stdout + again.stderr


def test_the_schema_fills_a_statistics_tables_defaults_and_none_of_a_run_tables():
    from snakemake.utils import validate

    cfg = yaml.safe_load(yaml.safe_dump(CONFIG))
    validate(cfg, str(REPO / "workflow/schemas/config.schema.yaml"))
    t = cfg["tables"]["demo_attribute_stats"]
    assert t["split"] == "train" and t["metrics"] == ["blank_images", "foreground_pixels"]
    assert not {"fractions", "seeds", "comparisons"} & set(t)


def test_beside_tables_of_runs_a_statistics_table_adds_its_table_job_alone(tmp_path):
    """The demo's tables planned with and without one more, of dataset statistics: the same
    runs, batches and caches."""
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"tables": CONFIG["tables"]}))
    plain = snakemake(tmp_path, "--dry-run", "all_tables", "all_galleries")
    more = snakemake(tmp_path, "--dry-run", "all_tables", "all_galleries", config=(DEMO, overlay))
    assert plain.returncode == 0 and more.returncode == 0, more.stderr
    want = job_counts(plain.stdout)
    want["table"] += 1
    assert job_counts(more.stdout) == want
