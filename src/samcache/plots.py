"""A table's plot: points with confidence intervals, never bars from zero.

Top row: each method's metric, mean over seeds with its 95 % Student-t interval, against the
training fraction (one line per method), or one point per method when the table has a single
fraction. Bottom row, for tables whose rows name baselines: the paired differences (row minus
baseline, percentage points) with their intervals over seeds and a zero line; a filled point is
a difference marked significant in the table, a hollow one is not.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats


def _interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the Student-t interval (NaN half-width for one value)."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2:
        return float(x.mean()), float("nan")
    t = stats.t.ppf(0.5 + confidence / 2, len(x) - 1)
    return float(x.mean()), float(t * x.std(ddof=1) / np.sqrt(len(x)))


def _levels(spec: Mapping[str, Any]) -> tuple[bool, bool]:
    by_method = spec.get("layout") == "methods_as_columns"
    return by_method, len(spec["fractions"]) > 1 and not by_method


def metric_points(spec: Mapping[str, Any], runs: pd.DataFrame) -> pd.DataFrame:
    """(panel, series, fraction, mean, half) of every cell, in percent."""
    from samcache.tables import fraction_label, metric_label, normalise_rows, row_metrics

    by_method, _ = _levels(spec)
    several = len(spec["fractions"]) > 1
    out = []
    for row in normalise_rows(spec["rows"]):
        for metric in row_metrics(spec, row):
            sel = runs[runs.method == row["method"]]
            for (_, frac), g in sel.groupby(["block", "fraction"], sort=False):
                mean, half = _interval(100 * g[metric].to_numpy(dtype=float))
                label = g["block_label"].iloc[0]
                if by_method:
                    panel = label + (f" {fraction_label(frac)}" if several else "")
                    series = f"{row['label']} {metric_label(spec, metric)}"
                else:
                    panel = f"{label}: {metric_label(spec, metric)}"
                    series = row["label"]
                out.append((panel, series, float(frac), mean, half))
    return pd.DataFrame(out, columns=["panel", "series", "fraction", "mean", "half"])


def difference_points(spec: Mapping[str, Any], comp: pd.DataFrame) -> pd.DataFrame:
    """(panel, series, fraction, mean, low, high, marked) of every compared cell."""
    from samcache.tables import fraction_label, metric_label

    by_method, _ = _levels(spec)
    several = len(spec["fractions"]) > 1
    out = []
    cell = comp.groupby(["method", "block", "fraction", "metric"], sort=False).first()
    for (_, _, frac, metric), r in cell.iterrows():
        if by_method:
            panel = r["block_label"] + (f" {fraction_label(frac)}" if several else "")
            series = f"{r['row_label']} {metric_label(spec, metric)} − {r['baseline_label']}"
        else:
            panel = f"{r['block_label']}: {metric_label(spec, metric)}"
            series = f"{r['row_label']} − {r['baseline_label']}"
        out.append(
            (panel, series, float(frac), r["diff_pp"], r["ci_low_pp"], r["ci_high_pp"], r["marked"])
        )
    return pd.DataFrame(
        out, columns=["panel", "series", "fraction", "mean", "low", "high", "marked"]
    )


def _panel_order(spec: Mapping[str, Any]) -> list[str]:
    """Panels in the table's column order: block, then metric (or block and fraction)."""
    from samcache.tables import block_label, fraction_label, metric_label, table_metrics

    by_method, _ = _levels(spec)
    several = len(spec["fractions"]) > 1
    if by_method:
        return [
            block_label(b) + (f" {fraction_label(float(f))}" if several else "")
            for b in spec["blocks"]
            for f in spec["fractions"]
        ]
    return [
        f"{block_label(b)}: {metric_label(spec, m)}"
        for b in spec["blocks"]
        for m in table_metrics(spec)
    ]


def _wrap(title: str, inches: float) -> str:
    """A title broken into lines that fit the figure's width (about 15 characters/inch)."""
    return "\n".join(textwrap.wrap(str(title), width=max(20, int(15 * inches))))


def _draw(ax, pts: pd.DataFrame, lines: bool, *, lower=None, upper=None, filled=None) -> None:
    """Points with error bars: against the fraction (``lines``) or one row per series."""
    series = list(dict.fromkeys(pts["series"]))
    span = (pts["fraction"].max() - pts["fraction"].min()) or 1.0
    for k, name in enumerate(series):
        g = pts[pts.series == name].sort_values("fraction")
        x = g["fraction"].to_numpy() + 0.015 * span * (k - (len(series) - 1) / 2)  # dodge
        mean = g["mean"].to_numpy()
        if lower is not None:
            err = np.vstack([mean - g[lower].to_numpy(), g[upper].to_numpy() - mean])
        else:
            err = g["half"].to_numpy()
        err = np.nan_to_num(err, nan=0.0)
        face = None
        if filled is not None:
            face = [f"C{k % 10}" if f else "white" for f in g[filled]]
        if lines:
            ax.errorbar(x, mean, yerr=err, marker="o", capsize=3, label=name,
                        color=f"C{k % 10}", mfc="white" if face else None)  # fmt: skip
            if face:
                ax.scatter(x, mean, c=face, edgecolors=f"C{k % 10}", zorder=3)
        else:
            y = np.full(len(g), len(series) - 1 - k)
            ax.errorbar(mean, y, xerr=err, fmt="o", capsize=3, color=f"C{k % 10}",
                        mfc=(face[0] if face else None))  # fmt: skip
    if not lines:
        ax.set_yticks(np.arange(len(series))[::-1], series, fontsize=7)


def plot_table(
    spec: Mapping[str, Any],
    runs: pd.DataFrame,
    comp: pd.DataFrame | None,
    path: str | Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, lines = _levels(spec)
    points = metric_points(spec, runs)
    diffs = difference_points(spec, comp) if comp is not None and not comp.empty else None
    panels = sorted(dict.fromkeys(points["panel"]), key=_panel_order(spec).index)
    nrows = 1 if diffs is None else 2
    longest = max(len(s) for s in [*points["series"], *([] if diffs is None else diffs["series"])])
    n_series = max(points.groupby("panel")["series"].nunique())
    width = 4.2 + (0.055 * min(longest, 60) if not lines else 0.0)
    height = 3.4 if lines else max(2.6, 0.32 * n_series + 1.3)
    fig, axes = plt.subplots(
        nrows, len(panels), figsize=(width * len(panels), height * nrows), squeeze=False
    )
    fractions = [float(f) for f in spec["fractions"]]
    for j, panel in enumerate(panels):
        ax = axes[0][j]
        _draw(ax, points[points.panel == panel], lines)
        # metrics lie in [0, 100] %: a few seeds' t intervals may run past it, the axis does not
        lo, hi = ax.get_ylim() if lines else ax.get_xlim()
        (ax.set_ylim if lines else ax.set_xlim)(max(lo, -2.0), min(hi, 102.0))
        ax.set_title(panel, fontsize=9)
        if lines:
            ax.set_xlabel("training data (%)")
            ax.set_xticks(fractions)
            ax.set_ylabel("% (mean, 95 % CI over seeds)", fontsize=8)
        else:
            ax.set_xlabel("% (mean, 95 % CI over seeds)", fontsize=8)
        ax.grid(alpha=0.3)
        if diffs is None:
            continue
        ax = axes[1][j]
        d = diffs[diffs.panel == panel]
        if d.empty:
            ax.set_visible(False)
            continue
        _draw(ax, d, lines, lower="low", upper="high", filled="marked")
        (ax.axhline if lines else ax.axvline)(0.0, color="k", lw=0.8)
        label = "difference to baseline (pp, 95 % CI)"
        if lines:
            ax.set_xlabel("training data (%)")
            ax.set_xticks(fractions)
            ax.set_ylabel(label, fontsize=8)
            ax.legend(fontsize=6)
        else:
            ax.set_xlabel(label, fontsize=8)
        ax.grid(alpha=0.3)
    if lines:
        axes[0][0].legend(fontsize=7)
    title = spec.get("title", spec.get("name", ""))
    fig.suptitle(_wrap(title, width * len(panels)), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_bars(
    summary: pd.DataFrame,
    stats: list[str],
    blocks: list[str],
    suptitle: str,
    path: str | Path,
) -> None:
    """One panel per statistic (``summary``'s columns are (block, statistic)), a horizontal bar
    per row and block with its value printed: a table of dataset statistics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows = len(summary.index)
    fig, axes = plt.subplots(
        1, len(stats), figsize=(4.6 * len(stats), max(2.4, 0.45 * n_rows * len(blocks) + 1.2)),
        squeeze=False,
    )  # fmt: skip
    height = 0.8 / len(blocks)
    y = np.arange(n_rows)[::-1]
    for ax, stat in zip(axes[0], stats, strict=True):
        for j, block in enumerate(blocks):
            values = summary[(block, stat)].to_numpy(dtype=float)
            offset = (len(blocks) - 1) / 2 - j
            bars = ax.barh(y + offset * height, values, height=height, color=f"C{j % 10}",
                           label=block if len(blocks) > 1 else None)  # fmt: skip
            ax.bar_label(bars, fmt="%.2f", padding=2, fontsize=7)
        ax.set_yticks(y, list(summary.index), fontsize=8)
        ax.set_xlabel(stat, fontsize=8)
        ax.set_xlim(
            0, max(1.0, float(summary.xs(stat, axis=1, level="statistic").max().max())) * 1.18
        )
        ax.grid(axis="x", alpha=0.3)
    if len(blocks) > 1:
        axes[0][0].legend(fontsize=7)
    fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
