"""Result tables: a pure function of run records, laid out like the papers' tables.

A table spec names its column *blocks* (a dataset and task each, side by side as RetinaMNIST and
BreastMNIST in seed 000's Table I), its *rows* (methods), the fractions, seeds and metrics.
Each cell is the mean ± sample standard deviation (ddof = 1) over seeds, in percent. A missing
run is an error that names it, never an empty cell.

Files written: ``<name>.md`` (the paper's layout), ``<name>.tex`` (the same as a LaTeX booktabs
table with the paper's multi-level header), ``<name>.csv`` (every column spelled out as
block/fraction/metric/stat, mean and std apart) and ``<name>.runs.csv`` (one row per run with its
metrics, record path, prediction store, cache key and code version, so every cell traces back to
its runs), ``<name>.compare.csv`` (the paired comparisons of rows with their baselines, one row
per seed; ``samcache.compare``) and ``<name>.html`` (the table, its comparisons and provenance
as one page for the report).

Header levels follow the paper: a table with one fraction (seed 000's ablation Tables III and IV)
has no fraction level, and one with a single block and a single fraction shows the block in the
caption instead of a header row.
Rows may name their own ``metrics`` (a method that exposes attention maps reports Jaccard
indices another does not) and ``metric_labels`` renames metrics in the header. With
``layout: methods_as_columns`` the methods become column groups, each with its own metrics,
and the rows are the blocks (and fractions): seed 001's Table 3, one Jaccard index per method
and attention layer.

"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from samcache import __version__
from samcache.atomic import atomic_path, write_text_atomic
from samcache.records import load_record

METRIC_LABELS = {
    "acc": "ACC",
    "auc": "AUC",
    "ap": "AP",
    "jaccard": "Jaccard",
    "dice": "Dice",
    "isic_jaccard": "Jaccard ≥ 0.65",
    "pixel_acc": "Pixel acc.",
    "fg_iou": "IoU",
    "task2_jaccard": "Avg JA",
    "task2_dice": "Avg Dice",
    "task2_jaccard_macro": "Macro Jaccard",
    "task2_dice_macro": "Macro Dice",
    "task2_jaccard_micro": "Micro Jaccard",
    "task2_dice_micro": "Micro Dice",
}
NO_BACKBONE = "no trainable backbone"
MEDMNIST = {"retinamnist": "RetinaMNIST", "breastmnist": "BreastMNIST"}


def normalise_rows(rows: Sequence[str | Mapping[str, str]]) -> list[dict[str, str]]:
    return [
        {"method": r, "label": r} if isinstance(r, str) else {"label": r["method"], **r}
        for r in rows
    ]


def row_metrics(spec: Mapping[str, Any], row: Mapping[str, Any]) -> list[str]:
    return list(row.get("metrics") or spec["metrics"])


def table_metrics(spec: Mapping[str, Any]) -> list[str]:
    """Every metric some row reports, the table's own first, in order of appearance."""
    rows = normalise_rows(spec["rows"])
    return list(dict.fromkeys([*spec["metrics"], *(m for r in rows for m in row_metrics(spec, r))]))


def metric_label(spec: Mapping[str, Any], metric: str) -> str:
    own = (spec.get("metric_labels") or {}).get(metric) or METRIC_LABELS.get(metric)
    if own:
        return own
    for kind, label in (("task2_jaccard_", "Jaccard"), ("task2_dice_", "Dice")):
        if metric.startswith(kind):  # one class's task-2 score: "Pigment network Jaccard"
            return f"{metric.removeprefix(kind).replace('_', ' ').capitalize()} {label}"
    return metric


def block_label(block: Mapping[str, str]) -> str:
    return block.get("label") or f"{block['dataset']} / {block['task']}"


def fraction_label(f: float) -> str:
    return f"{f:g}%"


def header_levels(spec: Mapping[str, Any]) -> tuple[bool, bool]:
    """Whether the header shows a block level and a fraction level."""
    multi_fraction = len(spec["fractions"]) > 1
    return len(spec["blocks"]) > 1 or multi_fraction, multi_fraction


def seeds_note(spec: Mapping[str, Any]) -> str:
    n = len(spec["seeds"])
    chosen = " or ".join(metric_label(spec, m) for m in spec.get("selected_by") or ["auc"])
    return (
        f"Mean ± standard deviation (ddof = 1) over {n} seed{'s' if n != 1 else ''} "
        f"({', '.join(str(s) for s in spec['seeds'])}), in percent, on the test split; "
        f"best epoch chosen by validation {chosen}. Fractions are of the training split."
    )


def selection_metrics(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The validation metrics the records picked their best epoch by, in order of appearance."""
    return list(
        dict.fromkeys((r.get("train_settings") or {}).get("select_metric", "auc") for r in records)
    )


def describe_dataset(cfg: Mapping[str, Any]) -> str:
    """Where a dataset's images come from and at which resolution, for a table's caption."""
    source = cfg.get("source", "?")
    side = cfg.get("image_size")
    if source in MEDMNIST:
        size = int(cfg.get("size", 224))
        origin = (
            f"MedMNIST v2 {size} px files ({source}.npz)"
            if size == 28
            else f"MedMNIST+ {size} px files ({source}_{size}.npz)"
        )
        return origin + (f", resized to {side} px" if side and side != size else "")
    crop = cfg.get("center_crop")
    parts = [f"{source} images"]
    if crop:
        parts.append(f"centre crop {crop:g} x the short side")
    if side:
        parts.append(f"resized to {side} px")
    return ", ".join(parts)


def provenance_notes(spec: Mapping[str, Any], runs: pd.DataFrame) -> list[str]:
    """Caption lines: each block's image source and resolution, each row's initialisation."""
    notes = []
    datasets = spec.get("datasets") or {}
    described = [
        f"{block_label(b)}: {describe_dataset(datasets[b['dataset']])}"
        for b in spec["blocks"]
        if b["dataset"] in datasets
    ]
    if described:
        notes.append("Images — " + "; ".join(dict.fromkeys(described)) + ".")
    by_init: dict[str, list[str]] = {}
    for row in normalise_rows(spec["rows"]):
        sel = runs[runs.method == row["method"]]
        for init, sha in dict.fromkeys(zip(sel["init"], sel["checkpoint_sha256"], strict=True)):
            if init == NO_BACKBONE:
                continue
            what = "random weights (init: random)" if init == "random" else str(init)
            if isinstance(sha, str):
                what += f" (SHA-256 {sha[:12]}…)"
            by_init.setdefault(what, []).append(row["label"])
    if by_init:
        parts = [f"{what}: {', '.join(labels)}" for what, labels in by_init.items()]
        notes.append("Backbone initialisation — " + "; ".join(parts) + ".")
    return notes


def record_key(rec: Mapping[str, Any]) -> tuple:
    return (rec["dataset"], rec["task"], rec["method"], float(rec["fraction"]), int(rec["seed"]))


def load_records(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Every record, validated (``samcache.records``); two records of one run are an error."""
    out, seen = [], {}
    for p in paths:
        rec = load_record(p)
        key = record_key(rec)
        if key in seen:
            raise ValueError(
                f"run records {seen[key]} and {p} both hold the run dataset={key[0]} "
                f"task={key[1]} method={key[2]} fraction={key[3]:g} seed={key[4]}; keep one"
            )
        seen[key] = p
        rec["_path"] = str(p)
        out.append(rec)
    return out


def runs_frame(spec: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per (block, method, fraction, seed) the table needs; raises if a run is missing."""
    by_key = {record_key(r): r for r in records}
    rows, missing = [], []
    for b, block in enumerate(spec["blocks"]):
        for row in normalise_rows(spec["rows"]):
            for frac in spec["fractions"]:
                for seed in spec["seeds"]:
                    key = (block["dataset"], block["task"], row["method"], float(frac), int(seed))
                    rec = by_key.get(key)
                    if rec is None:
                        missing.append(key)
                        continue
                    test = rec["metrics"]["test"]
                    absent = [m for m in row_metrics(spec, row) if m not in test]
                    if absent:
                        raise ValueError(
                            f"run record {rec.get('_path', key)} has no test metric {absent}; "
                            f"it reports {sorted(test)}. Remove the metric from the table row "
                            f"'{row['label']}' or rerun the method so that it reports it."
                        )
                    rows.append(
                        {
                            "block": b,
                            "block_label": block_label(block),
                            "method": row["method"],
                            "row_label": row["label"],
                            "fraction": float(frac),
                            "seed": int(seed),
                            **{m: test[m] for m in row_metrics(spec, row)},
                            "init": (rec.get("head_info") or {}).get("backbone_init", NO_BACKBONE),
                            "checkpoint_sha256": (rec.get("head_info") or {}).get(
                                "checkpoint_sha256"
                            ),
                            "best_epoch": rec.get("best_epoch"),
                            "n_train": rec.get("n_train"),
                            "cache_key": rec.get("cache_key"),
                            "sam_prior_key": rec.get("sam_prior_key"),
                            "superpixels_key": rec.get("superpixels_key"),
                            "code_version": rec.get("code_version"),
                            "record": rec.get("_path", ""),
                            **prediction_columns(rec),
                        }
                    )
    if missing:
        listed = "\n  ".join(
            f"dataset={d} task={t} method={m} fraction={f:g} seed={s}" for d, t, m, f, s in missing
        )
        raise ValueError(
            f"table '{spec.get('name', '?')}' lacks {len(missing)} run records:\n  {listed}"
        )
    return pd.DataFrame(rows)


def prediction_columns(rec: Mapping[str, Any]) -> dict[str, Any]:
    """How many test images the record holds predictions of, and its prediction store ("" for
    a run whose predictions are all in the record)."""
    pred = rec.get("predictions") or {}
    store = pred.get("store")
    return {
        "predictions": len(pred.get("items", [])),
        "prediction_store": str(Path(rec.get("_path", "")).parent / store) if store else "",
    }


def display_marks(spec: Mapping[str, Any], comp: pd.DataFrame | None) -> dict[tuple, str]:
    """Significance marks (``samcache.compare``) by (summary row label, column without stat)."""
    from samcache.compare import cell_marks

    if comp is None or comp.empty:
        return {}
    rows = {r["method"]: r for r in normalise_rows(spec["rows"])}
    several = len(spec["fractions"]) > 1
    out = {}
    for (b, method, frac, metric), mark in cell_marks(comp).items():
        block, row = block_label(spec["blocks"][b]), rows[method]
        if spec.get("layout") == "methods_as_columns":
            index = block + (f" {fraction_label(frac)}" if several else "")
            out[(index, (row["label"], metric_label(spec, metric)))] = mark
        else:
            out[(row["label"], (block, fraction_label(frac), metric_label(spec, metric)))] = mark
    return out


def _cell(
    spec: Mapping[str, Any], runs: pd.DataFrame, b: int, row: Mapping[str, Any], frac, m: str
) -> tuple[float, float]:
    """Mean and sample std (ddof = 1; 0 for one seed) in percent; NaN where the row lacks m."""
    if m not in row_metrics(spec, row):
        return float("nan"), float("nan")
    sel = runs[(runs.block == b) & (runs.method == row["method"]) & (runs.fraction == float(frac))]
    x = 100.0 * sel[m].to_numpy(dtype=float)
    return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0


def summary_frame(spec: Mapping[str, Any], runs: pd.DataFrame) -> pd.DataFrame:
    """Rows = methods in spec order; columns = (block, fraction, metric, stat) in spec order.

    With ``layout: methods_as_columns``: rows = blocks (x fractions), columns = (method, metric,
    stat), each method with its own metrics.
    """
    if spec.get("layout") == "methods_as_columns":
        return summary_methods_as_columns(spec, runs)
    cols, data = [], {}
    rows = normalise_rows(spec["rows"])
    for b, block in enumerate(spec["blocks"]):
        for frac in spec["fractions"]:
            for m in table_metrics(spec):
                cells = [_cell(spec, runs, b, row, frac, m) for row in rows]
                for i, stat in enumerate(("mean", "std")):
                    col = (block_label(block), fraction_label(float(frac)), metric_label(spec, m))
                    cols.append((*col, stat))
                    data[cols[-1]] = [c[i] for c in cells]
    frame = pd.DataFrame(data, index=[r["label"] for r in rows])
    frame.columns = pd.MultiIndex.from_tuples(cols, names=["block", "fraction", "metric", "stat"])
    frame.index.name = "Method"
    return frame


def summary_methods_as_columns(spec: Mapping[str, Any], runs: pd.DataFrame) -> pd.DataFrame:
    rows = normalise_rows(spec["rows"])
    several = len(spec["fractions"]) > 1
    where = [(b, block, f) for b, block in enumerate(spec["blocks"]) for f in spec["fractions"]]
    index = [
        block_label(block) + (f" {fraction_label(float(f))}" if several else "")
        for _, block, f in where
    ]
    cols, data = [], {}
    for row in rows:
        for m in row_metrics(spec, row):
            cells = [_cell(spec, runs, b, row, f, m) for b, _, f in where]
            for i, stat in enumerate(("mean", "std")):
                cols.append((row["label"], metric_label(spec, m), stat))
                data[cols[-1]] = [c[i] for c in cells]
    frame = pd.DataFrame(data, index=index)
    frame.columns = pd.MultiIndex.from_tuples(cols, names=["method", "metric", "stat"])
    frame.index.name = "Dataset"
    return frame


def to_markdown(
    spec: Mapping[str, Any], summary: pd.DataFrame, comp: pd.DataFrame | None = None
) -> str:
    from samcache.compare import to_markdown_lines

    marks = display_marks(spec, comp)
    means = summary.xs("mean", axis=1, level="stat")
    stds = summary.xs("std", axis=1, level="stat")
    by_method = spec.get("layout") == "methods_as_columns"
    single_block = len(spec["blocks"]) == 1 and not by_method
    _, show_fraction = header_levels(spec)
    header = [str(summary.index.name)]
    for col in means.columns:  # (block, fraction, metric), or (method, metric)
        if by_method:
            header.append(" ".join(col))
            continue
        block, frac, metric = col
        parts = ([] if single_block else [block]) + ([frac] if show_fraction else []) + [metric]
        header.append(" ".join(parts))
    lines = [f"### {spec.get('title', spec.get('name', 'Table'))}", ""]
    if single_block:
        lines.append(f"{block_label(spec['blocks'][0])}")
        lines.append("")
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + [":---:"] * (len(header) - 1)) + "|")
    for label in means.index:
        cells = [
            f"{means.loc[label, c]:.2f} ± {stds.loc[label, c]:.2f}"
            + (f" {marks[(label, c)]}" if (label, c) in marks else "")
            if np.isfinite(means.loc[label, c])
            else "–"
            for c in means.columns
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", seeds_note(spec)]
    for note in spec.get("notes", []):
        lines += ["", note]
    if comp is not None:
        lines += to_markdown_lines(spec, comp)
    if spec.get("caption"):
        lines += ["", str(spec["caption"])]
    lines += [
        "",
        f"<sub>samcache {__version__}; per-run provenance in the matching .runs.csv.</sub>",
        "",
    ]
    return "\n".join(lines)


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "▲": r"$\uparrow$",
    "▼": r"$\downarrow$",
    "α": r"$\alpha$",
    "−": "-",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(c, c) for c in str(text))


def _spans(keys: Sequence[tuple]) -> list[tuple[tuple, int, int]]:
    """Runs of equal consecutive keys: (key, first column, last column), columns from 2."""
    out: list[tuple[tuple, int, int]] = []
    for col, key in enumerate(keys, start=2):
        if out and out[-1][0] == key:
            out[-1] = (key, out[-1][1], col)
        else:
            out.append((key, col, col))
    return out


def _group_row(spans: list[tuple[tuple, int, int]], text) -> list[str]:
    cells = " & ".join(
        rf"\multicolumn{{{b - a + 1}}}{{c}}{{{latex_escape(text(key))}}}" for key, a, b in spans
    )
    rules = " ".join(rf"\cmidrule(lr){{{a}-{b}}}" for _, a, b in spans)
    return [f" & {cells} \\\\", rules]


def to_latex(
    spec: Mapping[str, Any], summary: pd.DataFrame, comp: pd.DataFrame | None = None
) -> str:
    """The table as LaTeX (booktabs): group header rows (block and fraction, or method) over the
    metric row; a cell the row does not report prints as an en dash; significance marks as
    arrows, their meaning in the caption."""
    from samcache.compare import method_note

    marks = display_marks(spec, comp)
    means = summary.xs("mean", axis=1, level="stat")
    stds = summary.xs("std", axis=1, level="stat")
    cols = list(means.columns)
    by_method = spec.get("layout") == "methods_as_columns"
    show_block, show_fraction = (True, False) if by_method else header_levels(spec)
    title = str(spec.get("title", spec.get("name", "Table")))
    if not show_block:
        title += f" ({block_label(spec['blocks'][0])})"
    caption = " ".join([f"{title}. {seeds_note(spec)}", *spec.get("notes", [])])
    if marks:
        caption += " " + method_note(spec, comp)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{latex_escape(caption)}}}",
        rf"\label{{tab:{spec.get('name', 'table')}}}",
        r"\begin{tabular}{l" + "c" * len(cols) + "}",
        r"\toprule",
    ]
    if show_block:
        lines += _group_row(_spans([(c[0],) for c in cols]), lambda k: k[0])
    if show_fraction:
        lines += _group_row(_spans([(c[0], c[1]) for c in cols]), lambda k: k[1])
    metrics = " & ".join(latex_escape(c[-1]) for c in cols)
    lines += [f"{latex_escape(summary.index.name)} & {metrics} \\\\", r"\midrule"]
    for label in means.index:
        cells = " & ".join(
            f"${means.loc[label, c]:.2f} \\pm {stds.loc[label, c]:.2f}$"
            + latex_escape(marks.get((label, c), ""))
            if np.isfinite(means.loc[label, c])
            else "--"
            for c in cols
        )
        lines.append(f"{latex_escape(label)} & {cells} \\\\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def check_spec(spec: Mapping[str, Any]) -> None:
    """Refuse a table that would silently mislead: an empty or repeated seed, fraction, row or
    block (``seeds: [0, 0]`` would make one run look like two)."""
    name = spec.get("name", "?")
    lists = {
        "blocks": [(b["dataset"], b["task"]) for b in spec["blocks"]],
        "rows": [r["method"] for r in normalise_rows(spec["rows"])],
        "fractions": [float(f) for f in spec["fractions"]],
        "seeds": [int(s) for s in spec["seeds"]],
        "metrics": list(spec["metrics"]),
    }
    for key, values in lists.items():
        if not values:
            raise ValueError(f"tables.{name}.{key}: empty; list at least one")
        repeated = sorted({v for v in values if values.count(v) > 1}, key=str)
        if repeated:
            raise ValueError(
                f"tables.{name}.{key}: {repeated} listed more than once; list each once"
            )


def write_table(
    spec: Mapping[str, Any],
    record_paths: Sequence[str | Path],
    md: str | Path,
    csv: str | Path,
    runs_csv: str | Path | None = None,
    plot: str | Path | None = None,
    *,
    tex: str | Path | None = None,
    compare_csv: str | Path | None = None,
    html: str | Path | None = None,
    rescore: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Every output of a table from its run records, each written whole, and only once every
    record has been validated. With ``rescore`` (scorers by name, see ``samcache.rescore``), the
    metrics are first recomputed from the runs' stored predictions."""
    from samcache.compare import COLUMNS, compare_table, pairs

    check_spec(spec)
    records = load_records(record_paths)
    if rescore is not None:
        from samcache.rescore import rescore_records

        records = rescore_records(records, rescore)
    runs = runs_frame(spec, records)
    used = {r["_path"] for r in records} & set(runs["record"])
    selected = selection_metrics([r for r in records if r["_path"] in used])
    spec = {**spec, "notes": provenance_notes(spec, runs), "selected_by": selected}
    summary = summary_frame(spec, runs)
    comp = compare_table(spec, records) if pairs(spec) else pd.DataFrame(columns=COLUMNS)
    write_text_atomic(md, to_markdown(spec, summary, comp))
    if tex is not None:
        write_text_atomic(tex, to_latex(spec, summary, comp))
    flat = summary.copy()
    flat.columns = ["/".join(c) for c in flat.columns]
    with atomic_path(csv) as tmp:
        flat.round(4).to_csv(tmp)
    if runs_csv is not None:
        with atomic_path(runs_csv) as tmp:
            runs.to_csv(tmp, index=False)
    if compare_csv is not None:
        with atomic_path(compare_csv) as tmp:
            comp.to_csv(tmp, index=False)
    if html is not None:
        from samcache.table_html import to_html

        write_text_atomic(html, to_html(spec, summary, comp, runs))
    if plot is not None:
        from samcache.plots import plot_table

        with atomic_path(plot) as tmp:
            plot_table(spec, runs, comp, tmp)
    return summary
