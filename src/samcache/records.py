"""Run records: the one place that says what a valid record is, for whoever reads or writes one.

A record is a JSON object (``samcache.train`` writes it) checked against ``RECORD_SCHEMA``
with jsonschema: its schema version, the keys a table and its provenance need with their
types, and finite metrics (JSON allows NaN and infinity, a table must not average them). A
record at a path of the workflow's scheme, ``.../<dataset>/<task>/<method>/f<fraction>_s<seed>.json``,
must also describe that run: a record copied over another is not that run.

Every error names the record's path and what is wrong; a damaged record is an error, never a
row of a table.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from samcache.config import dotted
from samcache.sweep import RECORD_SCHEMA as SCHEMA_VERSION  # the layout this code writes

__all__ = ["SCHEMA_VERSION", "RecordError", "load_record", "validate_record"]

_METRICS = {
    "type": "object",
    "minProperties": 1,
    "additionalProperties": {"type": "number"},
}
_NAME = {"type": "string", "minLength": 1}

RECORD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [
        "schema",
        "dataset",
        "task",
        "method",
        "fraction",
        "seed",
        "n_train",
        "best_epoch",
        "metrics",
        "cache_key",
        "code_version",
        "predictions",
    ],
    "properties": {
        "schema": {"const": SCHEMA_VERSION},
        "dataset": _NAME,
        "task": _NAME,
        "method": _NAME,
        "fraction": {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
        "seed": {"type": "integer", "minimum": 0},
        "n_train": {"type": "integer", "minimum": 1},
        "best_epoch": {"type": "integer"},
        "metrics": {
            "type": "object",
            "required": ["test", "val"],
            "properties": {"test": _METRICS, "val": _METRICS},
        },
        "cache_key": {"type": ["string", "null"]},
        "sam_prior_key": {"type": ["string", "null"]},
        "superpixels_key": {"type": ["string", "null"]},
        "code_version": _NAME,
        "predictions": {"type": "object", "required": ["items"]},
    },
}
_VALIDATOR = Draft202012Validator(RECORD_SCHEMA)

#: results/runs/<dataset>/<task>/<method>/[.staged/]f<fraction>_s<seed>.json
_PATH = re.compile(
    r"(?:^|/)runs/(?P<dataset>[^/]+)/(?P<task>[^/]+)/(?P<method>[^/]+)/(?:\.staged/)?"
    r"f(?P<fraction>[0-9.]+)_s(?P<seed>\d+)\.json$"
)


class RecordError(ValueError):
    """A run record that is not a valid record of the run its path names."""


def _fail(path: str | Path, what: str) -> RecordError:
    return RecordError(
        f"run record {path}: {what}. Delete it and run its training again (snakemake rebuilds it)."
    )


def validate_record(obj: Any, path: str | Path, *, check_path: bool = True) -> dict[str, Any]:
    """``obj`` if it is a valid record (schema, required keys, finite metrics), else raise
    ``RecordError`` naming ``path`` and the offending key. ``check_path``: a record read from a
    path of the workflow's scheme must be the run that path names."""
    if not isinstance(obj, Mapping):
        raise _fail(path, f"not a JSON object but {type(obj).__name__}")
    if obj.get("schema") != SCHEMA_VERSION and "schema" in obj:
        raise _fail(
            path,
            f"written in record schema {obj['schema']!r}; this samcache reads schema "
            f"{SCHEMA_VERSION}",
        )
    error = best_match(_VALIDATOR.iter_errors(obj))
    if error is not None:
        where = dotted(error.absolute_path)
        raise _fail(path, f"'{where}': {error.message}" if error.absolute_path else error.message)
    for split in ("test", "val"):
        for name, value in obj["metrics"][split].items():
            if not math.isfinite(value):
                raise _fail(
                    path, f"metric 'metrics.{split}.{name}' is {value}, not a finite number"
                )
    expected = _PATH.search(Path(path).as_posix()) if check_path else None
    if expected is not None:
        named = (
            expected["dataset"],
            expected["task"],
            expected["method"],
            float(expected["fraction"]),
            int(expected["seed"]),
        )
        held = (obj["dataset"], obj["task"], obj["method"], float(obj["fraction"]), obj["seed"])
        if named != held:
            raise _fail(path, f"holds the run {_describe(held)}, not the run its path names")
    return dict(obj)


def _describe(key: tuple) -> str:
    d, t, m, f, s = key
    return f"dataset={d} task={t} method={m} fraction={f:g} seed={s}"


def load_record(path: str | Path) -> dict[str, Any]:
    """Read and validate one record; every error names ``path``."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise _fail(path, "does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise _fail(path, f"cannot be read ({err})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise _fail(path, f"is not valid JSON (truncated or damaged? {err})") from None
    return validate_record(obj, path)
