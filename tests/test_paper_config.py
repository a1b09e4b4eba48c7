"""The paper configuration (config.yaml) against the papers' protocols, without running it."""

from __future__ import annotations

import pytest
import torch
import yaml

from samcache.features.specs import split_tap_ref
from samcache.heads import build_head

from conftest import REPO

PAPER = yaml.safe_load((REPO / "config.yaml").read_text())
DEMO = yaml.safe_load((REPO / "workflow" / "config" / "demo.yaml").read_text())


def table_methods(config: dict, table: str) -> list[str]:
    return [r if isinstance(r, str) else r["method"] for r in config["tables"][table]["rows"]]


@pytest.mark.parametrize(
    "config, table", [(PAPER, "gu_table4"), (DEMO, "demo_gu_table4")], ids=["paper", "demo"]
)
def test_table4_projector_reads_the_neck_in_every_row(config, table, one_thread):
    """Table IV varies the five features fed to the stages; the projector head stays appended
    to the encoder's output (the neck) in every row, as in the full method."""
    checked = 0
    for name in table_methods(config, table):
        method = config["methods"][name]
        if method["head"] != "sam_slca_projector":
            continue
        taps = method.get("taps") or config["feature_sets"][method["features"]]["taps"]
        shapes = {"image": (3, 32, 32), "taps": {t: (8, 8, 8) for t in taps}}
        args = {**method["head_args"], "backbone": "test_resnet", "backbone_args": {}}
        args.pop("checkpoint", None)
        head = build_head(method["head"], n_outputs=2, input_shapes=shapes, **args)
        assert head.projector_tap == "neck", name
        batch = {
            "image": torch.zeros(2, 3, 32, 32),
            "taps": {t: torch.zeros(2, 8, 8, 8) for t in taps},
        }
        assert head(batch)["logits"].shape == (2, 2)
        checked += 1
    assert checked == 6


@pytest.mark.parametrize(
    "config, table",
    [(PAPER, "seed001_table3"), (DEMO, "demo_seed001_table3")],
    ids=["paper", "demo"],
)
def test_table3_scores_the_cam_in_the_authors_order(config, table):
    rows = {r["method"]: r for r in config["tables"][table]["rows"] if isinstance(r, dict)}
    gap = [r for m, r in rows.items() if config["methods"][m]["head"] == "vgg16_gap"]
    assert [r["metrics"] for r in gap] == [["jaccard_cam_binarised_first"]]
    assert "binarised at its 7" in config["tables"][table]["caption"]


def seed001_image_methods() -> list[str]:
    return [
        m
        for m in table_methods(PAPER, "seed001_table2")
        if PAPER["methods"][m]["head"].startswith(("vgg", "mel", "attnmel"))
    ]


def test_seed001_trains_on_224_windows_of_the_256_store_and_tests_on_the_centre():
    """The authors' protocol: RandomCrop(224) of the 256 px image, CenterCrop(224) to test;
    the store is not resized to 224 first."""
    from samcache.augment import AugmentSpec, evaluation_view

    for d in ("isic2016", "isic2017_crop256"):
        assert PAPER["datasets"][d]["image_size"] == 256
    for m in seed001_image_methods():
        method = PAPER["methods"][m]
        assert "image_size" not in method, m  # the head reads the 256 px store
        spec = AugmentSpec.from_config(method["train"]["augment"])
        assert spec.crop_size == 224 and spec.rot90 and spec.hflip and spec.vflip, m
        batch = {"label": torch.zeros(1), "image": torch.rand(1, 3, 256, 256)}
        centre = evaluation_view(spec)(batch)["image"]
        torch.testing.assert_close(centre, batch["image"][..., 16:240, 16:240])


def test_paper_runs_with_sam_taps_augment_exactly_from_cached_views():
    """Every method that reads taps draws only transforms its feature set caches."""
    from samcache.augment import AugmentSpec
    from samcache.views import _drawable

    checked = 0
    for name, method in PAPER["methods"].items():
        if not method.get("features"):
            continue
        train = {**PAPER["train"], **method.get("train", {})}
        assert train["tap_augment"] == "views", name
        spec = AugmentSpec.from_config(train["augment"])
        if spec is None:  # seed 002 augments nothing
            checked += 1
            continue
        assert spec.crop_size is None and tuple(spec.crop_scale) == (1.0, 1.0), name
        cached = PAPER["feature_sets"][method["features"]]["views"]
        assert set(_drawable(spec)) <= set(cached), name
        checked += 1
    assert checked >= 12


def test_seed000_rows_each_set_a_batch_size_and_all_rows_share_one_augmentation():
    names = {m for t in ("gu_table1", "gu_table3", "gu_table4") for m in table_methods(PAPER, t)}
    for name in names:
        train = PAPER["methods"][name]["train"]
        assert "batch_size" in train, name
        assert "augment" not in train and "tap_augment" not in train, name  # the table's own
    assert len({PAPER["methods"][n]["train"]["batch_size"] for n in names}) > 3


@pytest.mark.parametrize("name", ["resnet152", "senet154_samaug_c", "swinv2_sam"])
def test_seed000_batch_sizes_are_the_largest_a_32_gb_card_holds(name):
    """The paper's "maximum batch size allowed by the GPU" (a 32 GB V100), by the memory
    estimate of samcache.memory: the configured size fits, 8 more would not."""
    from samcache.memory import HEADROOM, GiB, step_bytes

    method = PAPER["methods"][name]
    native = {"patch_embed": 1280, "block:1": 1280, "block:16": 1280, "block:32": 1280, "neck": 256}
    taps = {}  # each tap at its stored grid: "block:16@28" is (1280, 28, 28)
    for ref in method.get("taps") or native:
        tap, grid = split_tap_ref(ref)
        taps[ref] = (native[tap], grid or 64, grid or 64)
    b = method["train"]["batch_size"]
    fits = step_bytes(method, b, image_size=224, tap_shapes=taps)
    more = step_bytes(method, b + 8, image_size=224, tap_shapes=taps)
    assert fits <= HEADROOM * 32 * GiB < more


def test_segmentation_rows_share_each_papers_schedule_and_augmentation():
    """Within each of seeds 002 and 004 every row trains alike: the paper's Adam schedule, the
    same augmentation (none for AER-Net; horizontal flips, from cached views for SAM rows, for
    Thwin & Park), the best epoch by the paper's metric."""
    for tables, augment, metric in (
        (("aernet_table1", "aernet_table2", "aernet_table3"), False, "jaccard"),
        (("thwin_table1", "thwin_table2"), {"hflip": True, "vflip": False}, "fg_iou"),
    ):
        names = {m for t in tables for m in table_methods(PAPER, t)}
        trains = [{**PAPER["train"], **PAPER["methods"][n]["train"]} for n in names]
        for n, t in zip(names, trains, strict=True):
            assert (t["optimizer"], t["lr"], t["epochs"], t["batch_size"]) == (
                "adam",
                0.001,
                100,
                16,
            ), n
            assert t["select_metric"] == metric, n
            if augment is False:
                assert t["augment"] is False, n
            else:
                assert {k: t["augment"][k] for k in augment} == augment, n


@pytest.mark.parametrize(
    "config, tables",
    [
        (PAPER, ["aernet_table1", "aernet_table2", "thwin_table1", "thwin_table2"]),
        (
            DEMO,
            ["demo_aernet_table1", "demo_aernet_table2", "demo_thwin_table1", "demo_thwin_table2"],
        ),
        (PAPER, ["sanet_table2", "sanet_table3", "sanet_table4"]),
        (DEMO, ["demo_sanet_table2", "demo_sanet_table3", "demo_sanet_table4"]),
    ],
    ids=["paper", "demo", "paper-003", "demo-003"],
)
def test_every_row_of_a_segmentation_table_predicts_masks_of_one_size(config, tables):
    """A head that reads only taps predicts masks of the method's image_size (the store's when
    unset): the rows of a table must not differ in it (256 px stores in the paper, 32 px in
    the demo), whether they read images, taps or both."""
    for t in tables:
        sizes = {config["methods"][m].get("image_size") for m in table_methods(config, t)}
        assert len(sizes) == 1, (t, sizes)


@pytest.mark.parametrize("config, prefix", [(PAPER, ""), (DEMO, "demo_")], ids=["paper", "demo"])
def test_seed003_rows_train_alike_and_read_the_superpixels_they_attend_to(config, prefix):
    """Every row of Tables 2-4: AMSGrad with the polynomial decay, no augmentation, the best
    epoch by Avg JA; a row reads a superpixel set exactly when its head has the superpixel
    attention module or pools by superpixels."""
    from samcache.heads import head_class

    tables = [f"{prefix}sanet_table{i}" for i in (2, 3, 4)]
    names = {m for t in tables for m in table_methods(config, t)}
    for n in names:
        m = config["methods"][n]
        t = {**config["train"], **m["train"]}
        assert (t["optimizer"], t["poly_power"], t["select_metric"]) == (
            "amsgrad",
            0.9,
            "task2_jaccard",
        ), n
        assert t["augment"] is False, n
        reads = "superpixels" in head_class(m["head"]).requires
        assert bool(m.get("superpixels")) == reads, n
        assert not m.get("superpixels") or m["superpixels"] in config["superpixels"], n
    paper = {m for i in (2, 3, 4) for m in table_methods(PAPER, f"sanet_table{i}")}
    assert all(
        PAPER["methods"][n]["train"]["batch_size"] == 5
        and PAPER["methods"][n]["train"]["lr"] == 1e-4
        for n in paper
    )
    assert PAPER["superpixels"]["slic0"]["slic_zero"] is True
