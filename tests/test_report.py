"""`snakemake --report`: one self-contained HTML file with every table, plot and gallery, checked
in headless Chromium (skipped where no Chromium is installed: `apt-get install chromium`)."""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest
import yaml

from browser import Chromium, find_chromium
from test_workflow import snakemake

CHROMIUM = find_chromium()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium on PATH; install Debian's chromium package (apt-get install chromium)",
)

#: A small workflow whose tables hold every kind of report item: an attention head against its
#: baseline (attention gallery) and SAMAug-C against its backbone over two fractions (prior
#: gallery), each table with its comparisons.
CONFIG = {
    "targets": ["small_attention", "small_samaug", "small_attributes"],
    "datasets": {"demo": {"source": "synthetic", "n_images": 80, "image_size": 64, "seed": 0}},
    "sam_priors": {
        "sam_tiny_amg": {
            "encoder": "vit_tiny",
            "weights": "random",
            "points_per_side": 2,
            "pred_iou_thresh": 0.0,
            "stability_score_thresh": 0.0,
            "mask_weight": "predicted_iou",
            "threads": 1,
        }
    },
    "train": {"epochs": 2, "lr": 0.003, "batch_size": 16},
    "methods": {
        "resnet": {
            "head": "backbone",
            "init": "random",
            "image_size": 32,
            "head_args": {"backbone": "test_resnet"},
        },
        "resnet_samaug_c": {
            "head": "samaug_c",
            "init": "random",
            "sam_prior": "sam_tiny_amg",
            "image_size": 32,
            "head_args": {"backbone": "test_resnet"},
        },
        "vgg16": {
            "head": "vgg16",
            "init": "random",
            "image_size": 32,
            "head_args": {"width": 0.0625},
        },
        "attnmel_cnn": {
            "head": "attnmel_cnn",
            "init": "random",
            "image_size": 32,
            "head_args": {"width": 0.0625},
        },
    },
    "tables": {
        "small_attention": {
            "title": "Attention against VGG-16",
            "blocks": [{"dataset": "demo", "task": "melanoma", "label": "Melanoma"}],
            "rows": [
                {"method": "vgg16", "label": "VGG-16"},
                {"method": "attnmel_cnn", "label": "AttnMel-CNN", "baseline": "vgg16"},
            ],
            "fractions": [100],
            "seeds": [0, 1],
            "metrics": ["ap", "auc"],
            "comparisons": {"resamples": 999},
        },
        "small_samaug": {
            "title": "SAMAug-C against its backbone",
            "blocks": [{"dataset": "demo", "task": "melanoma", "label": "Melanoma"}],
            "rows": [
                {"method": "resnet", "label": "test_resnet"},
                {
                    "method": "resnet_samaug_c",
                    "label": "test_resnet + SAMAug-C",
                    "baseline": "resnet",
                },
            ],
            "fractions": [50, 100],
            "seeds": [0, 1],
            "metrics": ["acc", "auc"],
            "comparisons": {"resamples": 999},
        },
    },
}
CONFIG["tables"]["small_attributes"] = {  # of the store's ground truth: no run, no gallery
    "kind": "dataset_statistics",
    "title": "Attributes of the training images",
    "blocks": [{"dataset": "demo", "task": "attributes", "label": "Attributes"}],
    "rows": ["pigment_network", "negative_network", "streaks", "milia_like_cyst", "globules"],
}
TABLES = ["small_attention", "small_samaug"]
STATISTICS = "small_attributes"
GALLERIES = {
    "small_attention": "attention_demo_melanoma.jpg",
    "small_samaug": "sam_prior_demo_melanoma.jpg",
}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    wd = tmp_path_factory.mktemp("report")
    cfg = wd / "config.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    res = snakemake(wd, "--cores", "2", config=(cfg,))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    res = snakemake(wd, "--report", "results/report.html", config=(cfg,))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return wd


@pytest.mark.slow
def test_every_table_plot_and_gallery_is_in_the_report(report):
    html = (report / "results/report.html").read_text()
    start = html.index("var results = ", html.index('<script id="results">')) + len(
        "var results = "
    )
    results = json.JSONDecoder().raw_decode(html[start:])[0]
    expected = {f"results/tables/{t}.html" for t in [*TABLES, STATISTICS]}
    expected |= {f"results/tables/{t}.png" for t in [*TABLES, STATISTICS]}
    expected |= {f"results/galleries/{t}/{g}" for t, g in GALLERIES.items()}
    assert set(results) == expected
    assert all(r["data_uri"].startswith("data:") for r in results.values())  # self-contained
    assert "counted from the dataset" in results[f"results/tables/{STATISTICS}.html"]["caption"]
    for t in TABLES:
        assert (
            "paired test on the shared test images"
            in results[f"results/tables/{t}.html"]["caption"]
        )
        comp = pd.read_csv(report / f"results/tables/{t}.compare.csv")
        assert len(comp) == {"small_attention": 2 * 2, "small_samaug": 2 * 2 * 2}[t]
        runs = pd.read_csv(report / f"results/tables/{t}.runs.csv")
        assert (runs.predictions > 0).all()
    runs = pd.read_csv(report / "results/tables/small_attention.runs.csv")
    attention = runs[runs.method == "attnmel_cnn"].prediction_store
    assert (
        attention.str.endswith(".zarr").all()
        and runs[runs.method == "vgg16"].prediction_store.isna().all()
    )


def _frame_of(browser: Chromium) -> str:
    """The id of the report's content frame once it shows a data: page."""
    for _ in range(200):
        kids = browser.call("Page.getFrameTree")["frameTree"].get("childFrames", [])
        if kids and kids[0]["frame"]["url"].startswith("data:text/html"):
            return kids[0]["frame"]["id"]
        time.sleep(0.05)
    raise AssertionError("the report never showed the table in its frame")


@pytest.mark.slow
@needs_chromium
def test_the_report_renders_in_chromium_with_nothing_missing(report, tmp_path):
    browser = Chromium(CHROMIUM, tmp_path / "profile")
    try:
        browser.open_page()
        browser.call("Page.navigate", {"url": (report / "results/report.html").as_uri()})
        browser.wait_for("Page.loadEventFired")
        menu = browser.evaluate("document.querySelector('#app').innerText")
        for category in ("Tables", "Plots", "Galleries"):
            assert category in menu
        entries = browser.evaluate("Object.entries(results).map(([k, v]) => [k, v.mime_type])")
        assert len(entries) == 2 * (len(TABLES) + 1) + len(GALLERIES)
        for key, mime in entries:
            if mime.startswith("image/"):  # every image decodes
                size = browser.evaluate(
                    "new Promise(done => { const i = new Image();"
                    " i.onload = () => done([i.naturalWidth, i.naturalHeight]);"
                    f" i.onerror = () => done(null); i.src = results[{json.dumps(key)}].data_uri; }})"
                )
                assert size and min(size) > 100, key
                continue
            assert mime == "text/html", key
            # shown the way the report shows it: in its content frame
            browser.evaluate(
                f"app.setView({{content: 'html', contentPath: results[{json.dumps(key)}].data_uri,"
                f" resultPath: {json.dumps(key)}}}); true"
            )
            frame = _frame_of(browser)
            for _ in range(200):
                world = browser.call("Page.createIsolatedWorld", {"frameId": frame})
                page = browser.evaluate(
                    "[document.readyState, document.title,"
                    " Array.from(document.querySelectorAll('table caption'), c => c.innerText)]",
                    world["executionContextId"],
                )
                if page[0] == "complete" and page[2]:
                    break
                time.sleep(0.05)
            name = key.split("/")[-1][: -len(".html")]
            assert page[1] == CONFIG["tables"][name]["title"]
            if name == STATISTICS:  # the counts and the stores they came from
                assert len(page[2]) == 2 and page[2][0].startswith(page[1])
                continue
            assert page[2][1:] == ["Paired comparisons with the baseline rows", page[2][2]]
            assert page[2][2].endswith("runs")  # the provenance table
        browser.evaluate("new Promise(done => setTimeout(() => done(true), 300))")
        assert browser.problems() == []
    finally:
        browser.close()


@needs_chromium
def test_the_browser_check_sees_missing_resources_and_script_errors(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text(
        '<!doctype html><html><body><img src="missing.png"><script>undefined_call()</script>'
        "</body></html>"
    )
    browser = Chromium(CHROMIUM, tmp_path / "profile")
    try:
        browser.open_page()
        browser.call("Page.navigate", {"url": page.as_uri()})
        browser.wait_for("Page.loadEventFired")
        browser.evaluate("1")
        problems = browser.problems()
    finally:
        browser.close()
    assert any("request failed" in p or "missing.png" in p for p in problems), problems
    assert any("script error" in p for p in problems), problems
