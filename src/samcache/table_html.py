"""A table as one self-contained HTML page: the cells with their significance marks, the notes
(seeds, the comparisons' method), the paired comparisons and the provenance of every cell (the
runs behind it: record, prediction store, cache key, code version). This is the table the
Snakemake report shows; it loads nothing from elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

import numpy as np
import pandas as pd

from samcache import __version__

STYLE = """
body { font-family: system-ui, sans-serif; font-size: 14px; margin: 1.5em; color: #111; }
table { border-collapse: collapse; margin: 0.8em 0 1.2em; }
th, td { border-bottom: 1px solid #ccc; padding: 0.25em 0.7em; text-align: center; }
th:first-child, td:first-child { text-align: left; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: 0.4em; }
.mark { color: #b00; font-weight: 700; }
.note { max-width: 60em; color: #333; }
details { margin-top: 1em; }
small { color: #555; }
"""


def _table(caption: str, header: Sequence[str], rows: Sequence[Sequence[str]], cls: str) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return (
        f'<table class="{cls}"><caption>{escape(caption)}</caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def _cell(mean: float, std: float, mark: str) -> str:
    if not np.isfinite(mean):
        return "–"
    text = f"{mean:.2f} ± {std:.2f}"
    return text + (f' <span class="mark">{escape(mark)}</span>' if mark else "")


def to_html(
    spec: Mapping[str, Any], summary: pd.DataFrame, comp: pd.DataFrame, runs: pd.DataFrame
) -> str:
    from samcache.compare import comparison_rows, method_note
    from samcache.tables import block_label, display_marks, seeds_note

    marks = display_marks(spec, comp)
    means = summary.xs("mean", axis=1, level="stat")
    stds = summary.xs("std", axis=1, level="stat")
    title = str(spec.get("title", spec.get("name", "Table")))
    header = [str(summary.index.name)] + [" / ".join(c) for c in means.columns]
    rows = [
        [escape(str(label))]
        + [
            _cell(means.loc[label, c], stds.loc[label, c], marks.get((label, c), ""))
            for c in means.columns
        ]
        for label in means.index
    ]
    caption = title
    if len(spec["blocks"]) == 1 and spec.get("layout") != "methods_as_columns":
        caption += f" ({block_label(spec['blocks'][0])})"
    parts = [
        _table(caption, header, rows, "results"),
        f'<p class="note">{escape(seeds_note(spec))}</p>',
    ]
    if spec.get("caption"):
        parts.append(f'<p class="note">{escape(str(spec["caption"]))}</p>')
    if not comp.empty:
        crow = comparison_rows(spec, comp)
        parts.append(
            _table(
                "Paired comparisons with the baseline rows",
                list(crow[0]),
                [[escape(v) for v in r.values()] for r in crow],
                "comparisons",
            )
        )
        parts.append(f'<p class="note">{escape(method_note(spec, comp))}</p>')
    prov_cols = [
        "block_label",
        "row_label",
        "fraction",
        "seed",
        "record",
        "prediction_store",
        "cache_key",
        "code_version",
    ]
    prov = [[escape(str(r[c])) for c in prov_cols] for _, r in runs[prov_cols].iterrows()]
    parts.append(
        "<details open><summary>Provenance: the runs behind every cell</summary>"
        + _table(
            f"{len(runs)} runs",
            [
                "Block",
                "Method",
                "Fraction",
                "Seed",
                "Record",
                "Prediction store",
                "Cache key",
                "Code",
            ],
            prov,
            "provenance",
        )
        + "</details>"
    )
    parts.append(f"<p><small>samcache {escape(__version__)}</small></p>")
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h2>{escape(title)}</h2>" + "".join(parts) + "</body></html>\n"
    )
