"""Tables of a dataset store's ground truth, counted from the store alone: no runs, no caches.

A table of ``kind: dataset_statistics`` (seed 003's Table 1, the blank images and pixel ratio of
each ISIC 2018 task 2 attribute) names its *blocks* (a dataset and one of its segmentation tasks
each), its *rows* (classes of that task, in the paper's order, relabelled with ``labels``), the
``split`` whose images are counted (``train`` unless given) and its columns, ``metrics``, among:

* ``blank_images``: the percentage of the split's images whose mask of the class has no
  foreground pixel;
* ``foreground_pixels``: the class's foreground pixels summed over those images, in percent of
  all their pixels (images x height x width), a pooled ratio rather than a mean of per-image
  ratios.

Masks are read a few shards at a time, so a store of any size is counted in bounded memory. The
table goes to the same files as a table of runs (``samcache.tables``): ``.md``, ``.tex``,
``.csv`` (the percentages and the counts behind them), ``.html``, ``.png`` (bars of each
statistic per class), and ``.runs.csv`` and ``.compare.csv`` with their header alone, as the
table has no runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from samcache import code_version
from samcache.atomic import atomic_path, write_text_atomic
from samcache.data.store import SPLITS, DatasetStore
from samcache.progress import progress_bar
from samcache.tables import block_label, describe_dataset, latex_escape

KIND = "dataset_statistics"
STATISTICS = {"blank_images": "Blank images (%)", "foreground_pixels": "Foreground pixels (%)"}
SPLIT_NAMES = {"train": "training", "val": "validation", "test": "test"}
#: Keys of a table of runs that a statistics table, which has none, refuses.
RUN_TABLE_KEYS = ("fractions", "seeds", "comparisons", "layout")
#: The columns of a table's ``.runs.csv`` (``samcache.tables.runs_frame``), less the metrics.
# fmt: off
RUN_COLUMNS = [
    "block", "block_label", "method", "row_label", "fraction", "seed", "init",
    "checkpoint_sha256", "best_epoch", "n_train", "cache_key", "sam_prior_key",
    "superpixels_key", "code_version", "record", "predictions", "prediction_store",
]
# fmt: on
#: Images whose masks are read at once (rounded up to whole shards).
READ_ITEMS = 64


def is_statistics_table(spec: Mapping[str, Any]) -> bool:
    return spec.get("kind", "runs") == KIND


@dataclass(frozen=True)
class MaskCounts:
    """What one block's statistics are computed from: per class, over the split's images."""

    store: DatasetStore
    task: str
    split: str
    classes: tuple[str, ...]
    images: int
    image_shape: tuple[int, int]
    blank: np.ndarray  # (K,) images whose mask of the class is empty
    foreground: np.ndarray  # (K,) foreground pixels of the class, summed over the images

    @property
    def pixels(self) -> int:
        return self.images * self.image_shape[0] * self.image_shape[1]

    def statistic(self, name: str, cls: str) -> float:
        k = self.classes.index(cls)
        if name == "blank_images":
            return 100.0 * float(self.blank[k]) / self.images
        return 100.0 * float(self.foreground[k]) / self.pixels


def count_masks(
    store: DatasetStore, task: str, split: str = "train", *, progress: bool = False
) -> MaskCounts:
    """Blank images and foreground pixels of each class of a segmentation ``task`` over the
    images of ``split``, read a few shards at a time."""
    info = store.task(task)
    masks = store.mask(task)  # (N, H, W) for one class, (N, K, H, W) for several
    wanted = np.zeros(store.n_items, dtype=bool)
    wanted[store.indices(split)] = True
    n = int(wanted.sum())
    if n == 0:
        raise ValueError(f"{store.path}: its {split} split has no images to count")
    k = info.n_outputs
    blank, foreground = np.zeros(k, dtype=np.int64), np.zeros(k, dtype=np.int64)
    shard = (masks.shards or masks.chunks)[0]
    step = shard * max(1, READ_ITEMS // shard)
    with progress_bar(total=n, desc=f"{store.name}/{task}", unit="img", enable=progress) as bar:
        for start in range(0, store.n_items, step):
            sel = wanted[start : start + step]
            if not sel.any():
                continue
            block = np.asarray(masks[start : start + step])[sel]
            per_image = np.count_nonzero(block.reshape(len(block), k, -1), axis=2)
            foreground += per_image.sum(axis=0)
            blank += (per_image == 0).sum(axis=0)
            bar.update(len(block))
    return MaskCounts(store, task, split, info.classes, n, store.image_shape, blank, foreground)


# --- the spec -------------------------------------------------------------------------------


def rows_of(spec: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(class, row label) of every row, in the table's order."""
    labels = spec.get("labels") or {}
    return [(c, labels.get(c, c)) for c in spec["rows"]]


def statistics_of(spec: Mapping[str, Any]) -> list[str]:
    return list(spec.get("metrics") or STATISTICS)


def statistic_label(spec: Mapping[str, Any], name: str) -> str:
    return (spec.get("metric_labels") or {}).get(name) or STATISTICS[name]


def check_statistics_spec(spec: Mapping[str, Any], stores: Mapping[str, DatasetStore]) -> None:
    """Refuse a table that cannot be counted as asked, naming the key and what it may be:
    rows that are not classes of every block's task included."""
    where = f"tables.{spec.get('name', '?')}"
    for key in RUN_TABLE_KEYS:
        if key in spec:
            raise ValueError(f"{where}.{key}: a key of run tables only; a {KIND} table has no runs")
    unknown = [m for m in statistics_of(spec) if m not in STATISTICS]
    if unknown:
        raise ValueError(
            f"{where}.metrics: {unknown} are not statistics; choose from {list(STATISTICS)}"
        )
    if spec.get("split", "train") not in SPLITS:
        raise ValueError(
            f"{where}.split: {spec['split']!r} is not a split; choose from {list(SPLITS)}"
        )
    rows = list(spec["rows"])
    repeated = sorted({r for r in rows if rows.count(r) > 1})
    if not rows or repeated:
        raise ValueError(f"{where}.rows: list each class once (repeated: {repeated})")
    for i, b in enumerate(spec["blocks"]):
        store = stores[b["dataset"]]
        segmentation = sorted(t for t, info in store.tasks.items() if info.type == "segmentation")
        info = store.tasks.get(b["task"])
        if info is None or info.type != "segmentation":
            what = "no task" if info is None else f"a {info.type} task"
            raise ValueError(
                f"{where}.blocks[{i}].task: '{b['task']}' is {what} of dataset '{b['dataset']}' "
                f"({store.path}); its segmentation tasks are {segmentation}"
            )
        wrong = [r for r in rows if r not in info.classes]
        if wrong:
            raise ValueError(
                f"{where}.rows: {wrong} are not classes of task '{b['task']}' of dataset "
                f"'{b['dataset']}' ({store.path}); its classes are {list(info.classes)}"
            )
    stray = sorted(set(spec.get("labels") or {}) - set(rows))
    if stray:
        raise ValueError(f"{where}.labels: {stray} are not rows of the table; its rows are {rows}")


def block_stores(spec: Mapping[str, Any], paths: Sequence[str | Path]) -> dict[str, DatasetStore]:
    """The store of each block's dataset among ``paths``: ``<dataset>.zarr`` (as rule dataset
    names it), else the one store whose recorded name is the dataset's."""
    stores = [DatasetStore(p) for p in paths]
    out = {}
    for d in dict.fromkeys(b["dataset"] for b in spec["blocks"]):
        match = [s for s in stores if s.path.name == f"{d}.zarr"] or [
            s for s in stores if s.name == d
        ]
        if len(match) != 1:
            raise ValueError(
                f"table '{spec.get('name', '?')}': {len(match)} of the dataset stores given "
                f"({[str(p) for p in paths]}) are stores of dataset '{d}'; give one "
                f"({d}.zarr, or a store named '{d}')"
            )
        out[d] = match[0]
    return out


# --- the table ------------------------------------------------------------------------------


def summary_frame(spec: Mapping[str, Any], counts: Sequence[MaskCounts]) -> pd.DataFrame:
    """Rows = classes in the table's order; columns = (block, statistic) in percent."""
    data = {
        (block_label(b), statistic_label(spec, m)): [
            c.statistic(m, cls) for cls, _ in rows_of(spec)
        ]
        for b, c in zip(spec["blocks"], counts, strict=True)
        for m in statistics_of(spec)
    }
    frame = pd.DataFrame(data, index=[label for _, label in rows_of(spec)])
    frame.columns = pd.MultiIndex.from_tuples(list(data), names=["block", "statistic"])
    attributes = all(c.store.task(c.task).mask == "masks/attributes" for c in counts)
    frame.index.name = "Attribute" if attributes else "Class"
    return frame


def counts_frame(spec: Mapping[str, Any], counts: Sequence[MaskCounts]) -> pd.DataFrame:
    """The counts behind every cell, per block: images, blank images, foreground pixels, pixels."""
    data = {}
    for b, c in zip(spec["blocks"], counts, strict=True):
        ks = [c.classes.index(cls) for cls, _ in rows_of(spec)]
        data[f"{block_label(b)}/images"] = [c.images] * len(ks)
        data[f"{block_label(b)}/blank images"] = [int(c.blank[k]) for k in ks]
        data[f"{block_label(b)}/foreground pixels"] = [int(c.foreground[k]) for k in ks]
        data[f"{block_label(b)}/pixels"] = [c.pixels] * len(ks)
    return pd.DataFrame(data, index=[label for _, label in rows_of(spec)])


def caption_notes(spec: Mapping[str, Any], counts: Sequence[MaskCounts]) -> list[str]:
    """What was counted, on which split, from which store; the images' source."""
    split = SPLIT_NAMES[counts[0].split]
    defined = {
        "blank_images": f"{STATISTICS['blank_images']}: the percentage of the {split} images "
        "whose mask of the class has no foreground pixel.",
        "foreground_pixels": f"{STATISTICS['foreground_pixels']}: the class's foreground pixels "
        f"summed over the {split} images, in percent of all their pixels (images × height × "
        "width).",
    }
    out = [" ".join(defined[m] for m in statistics_of(spec))]
    for b, c in zip(spec["blocks"], counts, strict=True):
        h, w = c.image_shape
        out.append(
            f"{block_label(b)}: the {c.images} {split} images ({h} × {w} px) of store "
            f"{c.store.path} (fingerprint {c.store.fingerprint}), masks of task '{c.task}' "
            f"({c.store.task(c.task).mask})."
        )
    datasets = spec.get("datasets") or {}
    described = [
        f"{block_label(b)}: {describe_dataset(datasets[b['dataset']])}"
        for b in spec["blocks"]
        if b["dataset"] in datasets
    ]
    if described:
        out.append("Images — " + "; ".join(dict.fromkeys(described)) + ".")
    if spec.get("caption"):
        out.append(str(spec["caption"]))
    return out


def footer() -> str:
    return f"samcache {code_version()}; counted from the dataset store alone (no runs)."


def _header(spec: Mapping[str, Any], summary: pd.DataFrame) -> list[str]:
    single = len(spec["blocks"]) == 1
    return [str(summary.index.name)] + [s if single else f"{b} {s}" for b, s in summary.columns]


def title(spec: Mapping[str, Any], *, with_block: bool = False) -> str:
    """The table's title; ``with_block``: followed by its single block, where there is one."""
    text = str(spec.get("title", spec.get("name", "Table")))
    if with_block and len(spec["blocks"]) == 1:
        text += f" ({block_label(spec['blocks'][0])})"
    return text


def to_markdown(spec: Mapping[str, Any], summary: pd.DataFrame, notes: Sequence[str]) -> str:
    header = _header(spec, summary)
    lines = [f"### {title(spec)}", ""]
    if len(spec["blocks"]) == 1:
        lines += [block_label(spec["blocks"][0]), ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + [":---:"] * (len(header) - 1)) + "|")
    for label, row in summary.iterrows():
        lines.append(f"| {label} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    for note in notes:
        lines += ["", note]
    return "\n".join([*lines, "", f"<sub>{footer()}</sub>", ""])


def to_latex(spec: Mapping[str, Any], summary: pd.DataFrame, notes: Sequence[str]) -> str:
    cols = list(summary.columns)
    caption = " ".join([f"{title(spec, with_block=True)}.", *notes, footer()])
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{latex_escape(caption)}}}",
        rf"\label{{tab:{spec.get('name', 'table')}}}",
        r"\begin{tabular}{l" + "c" * len(cols) + "}",
        r"\toprule",
    ]
    if len(spec["blocks"]) > 1:
        n = len(statistics_of(spec))
        groups = [latex_escape(block_label(b)) for b in spec["blocks"]]
        lines.append(
            " & " + " & ".join(rf"\multicolumn{{{n}}}{{c}}{{{g}}}" for g in groups) + r" \\"
        )
        lines.append(
            " ".join(rf"\cmidrule(lr){{{2 + i * n}-{1 + (i + 1) * n}}}" for i in range(len(groups)))
        )
    stats = " & ".join(latex_escape(s) for _, s in cols)
    lines += [f"{latex_escape(summary.index.name)} & {stats} \\\\", r"\midrule"]
    for label, row in summary.iterrows():
        lines.append(f"{latex_escape(label)} & " + " & ".join(f"{v:.2f}" for v in row) + r" \\")
    return "\n".join([*lines, r"\bottomrule", r"\end{tabular}", r"\end{table}", ""])


def to_html(
    spec: Mapping[str, Any],
    summary: pd.DataFrame,
    notes: Sequence[str],
    counts: Sequence[MaskCounts],
) -> str:
    from samcache.table_html import STYLE

    def table(caption: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
        head = "".join(f"<th>{escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in rows)
        return (
            f"<table><caption>{escape(caption)}</caption><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>"
        )

    rows = [[str(label), *(f"{v:.2f}" for v in row)] for label, row in summary.iterrows()]
    prov = [
        [block_label(b), c.task, c.split, str(c.images), str(c.store.path), c.store.fingerprint]
        for b, c in zip(spec["blocks"], counts, strict=True)
    ]
    parts = [
        table(title(spec, with_block=True), _header(spec, summary), rows),
        *(f'<p class="note">{escape(n)}</p>' for n in notes),
        "<details open><summary>Provenance: the dataset stores counted</summary>"
        + table("", ["Block", "Task", "Split", "Images", "Store", "Fingerprint"], prov)
        + "</details>",
        f"<p><small>{escape(footer())}</small></p>",
    ]
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title(spec))}</title><style>{STYLE}</style></head><body>"
        f"<h2>{escape(title(spec))}</h2>" + "".join(parts) + "</body></html>\n"
    )


def plot_statistics(spec: Mapping[str, Any], summary: pd.DataFrame, path: str | Path) -> None:
    """One panel per statistic: a horizontal bar per class (and block), its value printed."""
    from samcache.plots import plot_bars

    stats = [statistic_label(spec, m) for m in statistics_of(spec)]
    blocks = [block_label(b) for b in spec["blocks"]]
    plot_bars(summary, stats, blocks, title(spec, with_block=True), path)


def write_statistics_table(
    spec: Mapping[str, Any],
    store_paths: Sequence[str | Path],
    md: str | Path,
    csv: str | Path,
    runs_csv: str | Path | None = None,
    plot: str | Path | None = None,
    *,
    tex: str | Path | None = None,
    compare_csv: str | Path | None = None,
    html: str | Path | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Every output of a statistics table from its blocks' dataset stores, each written whole,
    and only once the spec has been checked against the stores and every mask counted."""
    from samcache.compare import COLUMNS

    stores = block_stores(spec, store_paths)
    check_statistics_spec(spec, stores)
    split = spec.get("split", "train")
    counts = [
        count_masks(stores[b["dataset"]], b["task"], split, progress=progress)
        for b in spec["blocks"]
    ]
    summary = summary_frame(spec, counts)
    notes = caption_notes(spec, counts)
    write_text_atomic(md, to_markdown(spec, summary, notes))
    if tex is not None:
        write_text_atomic(tex, to_latex(spec, summary, notes))
    flat = summary.copy()
    flat.columns = ["/".join(c) for c in flat.columns]
    with atomic_path(csv) as tmp:
        flat.round(4).join(counts_frame(spec, counts)).to_csv(tmp)
    for path, columns in ((runs_csv, RUN_COLUMNS), (compare_csv, COLUMNS)):
        if path is not None:
            with atomic_path(path) as tmp:
                pd.DataFrame(columns=columns).to_csv(tmp, index=False)
    if html is not None:
        write_text_atomic(html, to_html(spec, summary, notes, counts))
    if plot is not None:
        with atomic_path(plot) as tmp:
            plot_statistics(spec, summary, tmp)
    return summary
