"""The paper configuration (config.yaml) against the papers' protocols, without running it."""

from __future__ import annotations

import pytest
import torch
import yaml

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
