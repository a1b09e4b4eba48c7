"""Paired comparisons of a table's rows with their baseline rows (``rows[].baseline``).

For every row that names a baseline, every block, fraction and metric both rows report:

* over seeds: the per-seed differences of the recorded test metrics (row minus baseline; the
  same seed is the same training subsample), their mean and 95 % Student-t interval;
* per seed, on the shared test images: DeLong's test for a binary task's AUC, a sign-flip
  permutation test otherwise (accuracy, Jaccard indices and the per-image segmentation metrics
  image by image; AP, multi-class AUC, a segmentation's foreground IoU and its ISIC task-2
  scores on the whole test set, from each image's confusion counts), with a paired bootstrap
  interval (``samcache.paired``);
* the per-seed p-values of the whole table adjusted together (Holm by default).

A cell is marked when its difference is significant after the adjustment in every seed, in the
same direction. Values are in percentage points, as the table's cells are in percent.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from samcache.metrics import accuracy_per_image
from samcache.paired import (
    batch_metric,
    delong_test,
    holm,
    paired_mean_test,
    paired_resampling_test,
    seed_interval,
)
from samcache.predictions import Predictions, load_predictions
from samcache.segmentation import (
    PER_IMAGE_METRICS,
    batch_foreground_iou,
    batch_task2,
    count_classes,
    stacked_class_counts,
)

log = logging.getLogger(__name__)

DEFAULTS = {"confidence": 0.95, "alpha": 0.05, "resamples": 9999, "correction": "holm"}
UP, DOWN = "▲", "▼"
COLUMNS = [
    "block",
    "block_label",
    "row_label",
    "method",
    "baseline_label",
    "baseline",
    "fraction",
    "metric",
    "diff_pp",
    "ci_low_pp",
    "ci_high_pp",
    "seed",
    "seed_diff_pp",
    "test",
    "test_low_pp",
    "test_high_pp",
    "p",
    "p_adjusted",
    "significant",
    "seeds_significant",
    "marked",
]


def settings(spec: Mapping[str, Any]) -> dict[str, Any]:
    return {**DEFAULTS, **(spec.get("comparisons") or {})}


def pairs(spec: Mapping[str, Any]) -> list[tuple[dict, dict]]:
    """(row, baseline row) for every row that names a baseline; an unknown one is an error."""
    from samcache.tables import normalise_rows

    rows = normalise_rows(spec["rows"])
    by_method = {r["method"]: r for r in rows}
    out = []
    for row in rows:
        base = row.get("baseline")
        if base is None:
            continue
        if base not in by_method or base == row["method"]:
            raise ValueError(
                f"tables.{spec.get('name', '?')}: row '{row['label']}' names baseline '{base}', "
                f"which is not another row of the table (rows: {sorted(by_method)})"
            )
        out.append((row, by_method[base]))
    return out


def _paired_predictions(a: Predictions, b: Predictions) -> None:
    if not np.array_equal(a.items, b.items) or not np.array_equal(a.labels, b.labels):
        raise ValueError(
            f"run records {a.record} and {b.record} were not tested on the same images "
            "(test items or labels differ): they cannot be compared image by image"
        )


def image_test(metric: str, a: Predictions, b: Predictions, *, confidence: float, resamples: int):
    """The paired test of one metric on the test images both runs predicted."""
    _paired_predictions(a, b)
    task = a.task_type
    if metric == "auc" and task == "binary":
        return delong_test(a.labels, a.probabilities[:, -1], b.probabilities[:, -1], confidence)
    if metric == "acc":
        return paired_mean_test(
            accuracy_per_image(a.labels, a.probabilities, task),
            accuracy_per_image(b.labels, b.probabilities, task),
            resamples=resamples,
            confidence=confidence,
        )
    if metric == "fg_iou":
        counts = [np.stack([p.per_image[k] for k in ("tp", "fp", "fn")], axis=1) for p in (a, b)]
        return paired_resampling_test(
            np.zeros(len(a.items)),
            counts[0],
            counts[1],
            batch_foreground_iou,
            resamples=resamples,
            confidence=confidence,
        )
    if metric.startswith("task2_"):
        classes = count_classes(a.per_image)
        if not classes or count_classes(b.per_image) != classes:
            raise ValueError(
                f"run records {a.record} and {b.record} do not both hold per-image counts of "
                f"the same mask classes (tp_<class> ...), which {metric} is resampled from"
            )
        return paired_resampling_test(
            np.zeros(len(a.items)),
            stacked_class_counts(a.per_image, classes),
            stacked_class_counts(b.per_image, classes),
            batch_task2(metric, classes),
            resamples=resamples,
            confidence=confidence,
        )
    if metric.startswith("jaccard_") or metric in PER_IMAGE_METRICS:
        missing = [p.record for p in (a, b) if metric not in p.per_image]
        if missing:
            raise ValueError(f"run records {missing} hold no per-image values of {metric}")
        return paired_mean_test(
            a.per_image[metric], b.per_image[metric], resamples=resamples, confidence=confidence
        )
    if metric in ("auc", "ap"):
        return paired_resampling_test(
            a.labels,
            a.probabilities,
            b.probabilities,
            batch_metric(metric, task),
            resamples=resamples,
            confidence=confidence,
        )
    raise ValueError(
        f"no paired test for metric '{metric}' (acc, auc, ap, jaccard_<map>, or a segmentation "
        "metric: jaccard, dice, isic_jaccard, pixel_acc, fg_iou, and with several mask channels "
        "task2_jaccard, task2_dice and their _macro, _micro and _<class> variants)"
    )


def compare_table(spec: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per (pair, block, fraction, metric, seed), in percentage points (see COLUMNS)."""
    from samcache.tables import block_label, record_key, row_metrics

    cfg = settings(spec)
    by_key = {record_key(r): r for r in records}
    cache: dict[str, Predictions] = {}

    def predictions(rec: Mapping[str, Any]) -> Predictions:
        path = rec.get("_path", "?")
        if path not in cache:
            cache[path] = load_predictions(rec, path)
        return cache[path]

    out = []
    for row, base in pairs(spec):
        metrics = [m for m in row_metrics(spec, row) if m in row_metrics(spec, base)]
        for b, block in enumerate(spec["blocks"]):
            for frac in spec["fractions"]:
                for metric in metrics:
                    cell = []
                    for seed in spec["seeds"]:
                        where = (block["dataset"], block["task"])
                        ra = by_key[(*where, row["method"], float(frac), int(seed))]
                        rb = by_key[(*where, base["method"], float(frac), int(seed))]
                        res = image_test(
                            metric,
                            predictions(ra),
                            predictions(rb),
                            confidence=cfg["confidence"],
                            resamples=cfg["resamples"],
                        )
                        if not np.isfinite(res.p_value):
                            log.warning(
                                "%s vs %s: no %s test of %s (too few test images of a class); "
                                "left out of the comparisons' correction",
                                ra.get("_path"),
                                rb.get("_path"),
                                res.method,
                                metric,
                            )
                        diff = ra["metrics"]["test"][metric] - rb["metrics"]["test"][metric]
                        cell.append((seed, diff, res))
                    over = seed_interval(np.array([d for _, d, _ in cell]), cfg["confidence"])
                    for seed, diff, res in cell:
                        out.append(
                            {
                                "block": b,
                                "block_label": block_label(block),
                                "row_label": row["label"],
                                "method": row["method"],
                                "baseline_label": base["label"],
                                "baseline": base["method"],
                                "fraction": float(frac),
                                "metric": metric,
                                "diff_pp": 100 * over.estimate,
                                "ci_low_pp": 100 * over.low,
                                "ci_high_pp": 100 * over.high,
                                "seed": int(seed),
                                "seed_diff_pp": 100 * diff,
                                "test": res.method,
                                "test_low_pp": 100 * res.low,
                                "test_high_pp": 100 * res.high,
                                "p": res.p_value,
                            }
                        )
    frame = pd.DataFrame(out, columns=COLUMNS[:17])
    return _significance(frame, cfg)


def _adjust(p: np.ndarray, correction: str) -> np.ndarray:
    if correction == "holm":
        return holm(p)
    if correction == "bonferroni":
        return np.minimum(p * np.isfinite(p).sum(), 1.0)
    raise ValueError(f"comparisons.correction: '{correction}' is not holm or bonferroni")


def _significance(frame: pd.DataFrame, cfg: Mapping[str, Any]) -> pd.DataFrame:
    frame = frame.copy()
    frame["p_adjusted"] = _adjust(frame["p"].to_numpy(dtype=float), cfg["correction"])
    frame["significant"] = frame["p_adjusted"] < cfg["alpha"]
    cell = ["block", "method", "fraction", "metric"]
    groups = frame.groupby(cell, sort=False)
    frame["seeds_significant"] = groups["significant"].transform("sum").astype(int)
    same_sign = groups["seed_diff_pp"].transform(lambda d: bool((d > 0).all() or (d < 0).all()))
    frame["marked"] = groups["significant"].transform("all") & same_sign.astype(bool)
    return frame[COLUMNS]


def cell_marks(comp: pd.DataFrame) -> dict[tuple[int, str, float, str], str]:
    """▲ / ▼ by (block, method, fraction, metric) for the cells that are marked."""
    marks = {}
    for (b, method, frac, metric), g in comp.groupby(["block", "method", "fraction", "metric"]):
        if g["marked"].all():
            marks[(int(b), method, float(frac), metric)] = UP if g["diff_pp"].iloc[0] > 0 else DOWN
    return marks


def method_note(spec: Mapping[str, Any], comp: pd.DataFrame) -> str:
    """What the marks and intervals mean, for the table's caption."""
    cfg = settings(spec)
    n = int(np.isfinite(comp["p"]).sum())
    correction = {"holm": "Holm's correction", "bonferroni": "Bonferroni's correction"}
    seeds = len(spec["seeds"])
    smallest = n / (cfg["resamples"] + 1)
    note = (
        f"{UP} / {DOWN}: above / below the row's baseline in every seed, the paired test on the "
        f"shared test images significant in each after {correction[cfg['correction']]} "
        f"(α = {cfg['alpha']:g}) over the table's {n} tests; binary AUC by DeLong's test, other "
        f"metrics by a sign-flip permutation test ({cfg['resamples']} resamples). Differences: "
        f"row minus baseline in percentage points, mean over {seeds} seeds (same seed, same "
        f"training subsample) with its {100 * cfg['confidence']:g} % t interval."
    )
    if smallest >= cfg["alpha"] and "permutation" in set(comp["test"]):
        note += (
            f" With {cfg['resamples']} resamples no permutation test of these {n} can reach "
            "significance after the correction: raise comparisons.resamples."
        )
    return note


def _fmt(x: float, signed: bool = True) -> str:
    if not np.isfinite(x):
        return "–"
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def comparison_rows(spec: Mapping[str, Any], comp: pd.DataFrame) -> list[dict[str, str]]:
    """One display row per compared cell (row, baseline, block, fraction, metric)."""
    from samcache.tables import fraction_label, metric_label

    out = []
    for _, g in comp.groupby(["method", "block", "fraction", "metric"], sort=False):
        first = g.iloc[0]
        p = ", ".join(f"{v:.2g}" for v in g["p_adjusted"])
        mark = (UP if first["diff_pp"] > 0 else DOWN) if first["marked"] else ""
        out.append(
            {
                "Method": first["row_label"],
                "Baseline": first["baseline_label"],
                "Block": first["block_label"],
                "Fraction": fraction_label(first["fraction"]),
                "Metric": metric_label(spec, first["metric"]),
                "Δ (pp)": f"{_fmt(first['diff_pp'])} [{_fmt(first['ci_low_pp'])}, "
                f"{_fmt(first['ci_high_pp'])}] {mark}".rstrip(),
                "Test": first["test"],
                "Significant seeds": f"{int(first['seeds_significant'])}/{len(g)}",
                "Adjusted p per seed": p,
            }
        )
    return out


def to_markdown_lines(spec: Mapping[str, Any], comp: pd.DataFrame) -> list[str]:
    if comp.empty:
        return []
    rows = comparison_rows(spec, comp)
    header = list(rows[0])
    lines = ["", "#### Paired comparisons", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] * len(header)) + "|")
    lines += ["| " + " | ".join(r[h] for h in header) + " |" for r in rows]
    lines += ["", method_note(spec, comp)]
    return lines
