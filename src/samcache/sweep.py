"""Many runs per process: how runs are batched, and how a batch hands its records over.

A *batch* is a list of runs that one process trains one after another, sharing the imports,
the warm-up of the first training step and the resident cached inputs (``samcache.resident``).
Snakemake still sees one ``train`` job per run, each producing its own record; the batch job
(rule ``train_batch``) runs first and *stages* each record next to where it belongs
(``<record dir>/.staged/<record name>``), and each run's ``train`` job then moves its staged
record into place. Records are never written twice: a run whose record already exists and
matches its current settings is not trained again (its record is staged as it is), and a
staged record that matches is kept when an interrupted batch is rerun.

Batches are planned from the configuration and the set of tables they serve, and named after
that set, so that every process that parses the workflow (a cluster node included) plans the
same batch from its name:

* for the tables an invocation builds, all of their runs are grouped only by dataset and by how
  they execute (device, threads), so that a batch's resources are those of each of its runs;
  any other run of a table is grouped also by the set of tables that need it, so that building
  one table never trains a run that only another needs;
* each group, ordered so that runs reading the same cached inputs sit together (largest
  training fraction first: a smaller subsample's items are then already resident), is cut into
  near-equal batches of at most ``runs_per_job`` runs.

This module imports no torch at the top: the Snakefile plans with it, and the ``train`` job of a
staged run moves its record in a fraction of a second.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: 2: records hold per-image test predictions, and name the prediction store beside them.
RECORD_SCHEMA = 2


@dataclass(frozen=True, order=True)
class RunRef:
    """One run: a method on a dataset task at a training fraction and seed."""

    dataset: str
    task: str
    method: str
    fraction: float
    seed: int

    @property
    def record(self) -> str:
        return (
            f"results/runs/{self.dataset}/{self.task}/{self.method}/"
            f"f{self.fraction:g}_s{self.seed}.json"
        )


# --- records ---------------------------------------------------------------------------------


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Written to a temporary sibling and renamed: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=False) + "\n")
    tmp.replace(path)


def staged_path(record: str | Path) -> Path:
    """Where a batch stages the record that belongs at ``record``."""
    record = Path(record)
    return record.parent / ".staged" / record.name


def staged_log(record: str | Path) -> Path:
    return staged_path(record).with_suffix(".log")


def companion_path(record: str | Path) -> Path:
    """Where a run's prediction store lies: beside its record, ``<record name>.zarr``."""
    return Path(record).with_suffix(".zarr")


def companion_mismatch(path: str | Path, rec: Mapping[str, Any]) -> str | None:
    """None if the prediction store that record ``rec`` names is beside it and its own.

    Reads only the store's ``zarr.json`` (no zarr import: the Snakefile plans with this module).
    """
    pred = rec.get("predictions") or {}
    if not pred.get("store"):
        return None
    store = Path(path).parent / pred["store"]
    try:
        attrs = json.loads((store / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError):
        return f"its prediction store {store} is missing or unreadable"
    if attrs.get("digest") != pred.get("store_digest"):
        return f"its prediction store {store} belongs to another record"
    return None


def _replace_dir(src: Path | None, dst: Path) -> None:
    """``dst`` becomes ``src``; an earlier ``dst`` is renamed aside, then deleted."""
    if dst.exists():
        aside = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, aside)
        shutil.rmtree(aside)
    if src is not None:
        os.replace(src, dst)


def record_mismatch(
    path: str | Path, expect: Mapping[str, Any], config: Mapping[str, Any]
) -> str | None:
    """None if the record at ``path`` stands for the run as configured, else why not.

    ``expect`` maps record fields to the values they must have (the schema version is always
    checked); ``config`` is the method's resolved configuration the record must carry.
    """
    path = Path(path)
    if not path.is_file():
        return "no record"
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        return f"unreadable ({err})"
    if not isinstance(rec, dict) or "metrics" not in rec:
        return "not a run record"
    for key, want in {"schema": RECORD_SCHEMA, **expect}.items():
        if rec.get(key) != want:
            return f"{key} is {rec.get(key)!r}, not {want!r}"
    if _canonical(rec.get("config")) != _canonical(config):
        return "trained with other method settings"
    return companion_mismatch(path, rec)


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def place_staged(
    record: str | Path, expect: Mapping[str, Any], config: Mapping[str, Any], log_to=None
) -> bool:
    """Move a matching staged record (its prediction store and training log with it) to
    ``record``; False if none.

    A staged record that does not match stays where it is, for its batch to replace. The record
    in place is removed first and the new one moved in last, so a record is never in place
    beside a prediction store that is not its own.
    """
    staged = staged_path(record)
    why = record_mismatch(staged, expect, config)
    if why is not None:
        if staged.exists():
            log.warning("%s: staged record not used: %s", staged, why)
        return False
    run_log = staged_log(record)
    if log_to is not None and run_log.is_file():
        log_to.write(run_log.read_text())
        log_to.flush()
    record = Path(record)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.unlink(missing_ok=True)
    names_store = bool((json.loads(staged.read_text()).get("predictions") or {}).get("store"))
    if names_store or companion_path(record).exists():
        _replace_dir(companion_path(staged) if names_store else None, companion_path(record))
    os.replace(staged, record)
    run_log.unlink(missing_ok=True)
    return True


def stage_copy(record: str | Path) -> None:
    """Stage a copy of a current record (and of its prediction store), so that its ``train``
    job puts the same ones back."""
    staged = staged_path(record)
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.unlink(missing_ok=True)
    store = companion_path(record)
    if store.exists():
        tmp_store = staged.with_name(f".{store.name}.tmp-{os.getpid()}")
        if tmp_store.exists():
            shutil.rmtree(tmp_store)
        shutil.copytree(store, tmp_store)
        _replace_dir(tmp_store, companion_path(staged))
    else:
        _replace_dir(None, companion_path(staged))
    tmp = staged.with_name(f".{staged.name}.tmp-{os.getpid()}")
    shutil.copyfile(record, tmp)
    tmp.replace(staged)


def tidy_staged(root: str | Path) -> int:
    """Remove staged copies identical to the record in place (a batch stages current records
    so that their ``train`` jobs could put them back; jobs that did not run leave them). Staged
    records that differ from what is in place are kept: they are work not yet placed."""
    removed = 0
    for staged in Path(root).rglob(".staged/*.json"):
        record = staged.parent.parent / staged.name
        try:
            same = record.is_file() and record.read_bytes() == staged.read_bytes()
        except OSError:
            continue
        if same:
            staged.unlink(missing_ok=True)
            staged.with_suffix(".log").unlink(missing_ok=True)
            _replace_dir(None, companion_path(staged))
            removed += 1
    return removed


# --- planning --------------------------------------------------------------------------------


def plan_batches(
    runs: Iterable[RunRef],
    *,
    tables_of: Callable[[RunRef], frozenset[str]],
    execution_of: Callable[[RunRef], Hashable],
    inputs_of: Callable[[RunRef], Sequence[Any]],
    runs_per_job: int,
    tag: str = "a",
) -> dict[str, list[RunRef]]:
    """Batches of at most ``runs_per_job`` runs, by id (``<dataset>/<tag>-<12 hex digits>``).

    Runs share a batch only when the same tables need them (``tables_of``) and they execute
    alike (``execution_of``: device, threads). Within a batch, runs are ordered by the cached
    inputs they read (``inputs_of``), then method, task, fraction (largest first) and seed.
    """
    if runs_per_job < 1:
        raise ValueError("sweep.runs_per_job must be at least 1")
    groups: dict[tuple, list[RunRef]] = defaultdict(list)
    for r in set(runs):
        groups[(r.dataset, tuple(sorted(tables_of(r))), execution_of(r))].append(r)
    batches: dict[str, list[RunRef]] = {}
    for _, members in sorted(groups.items(), key=lambda kv: _canonical(kv[0])):
        members.sort(
            key=lambda r: (_canonical(inputs_of(r)), r.method, r.task, -r.fraction, r.seed)
        )
        n = math.ceil(len(members) / runs_per_job)
        size, extra = divmod(len(members), n)
        start = 0
        for k in range(n):
            stop = start + size + (k < extra)
            chunk = members[start:stop]
            batches[batch_id(chunk, tag)] = chunk
            start = stop
    return batches


def batch_id(runs: Sequence[RunRef], tag: str = "a") -> str:
    blob = _canonical([[r.dataset, r.task, r.method, r.fraction, r.seed] for r in runs])
    return f"{runs[0].dataset}/{tag}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def batch_tag(batch: str) -> str:
    """The tag of a batch id: ``a``, or ``t<hex>`` for the tables it was planned for."""
    return batch.split("/", 1)[1].split("-", 1)[0]


def tables_tag(all_tables: Sequence[str], tables: Iterable[str]) -> str:
    """A set of a configuration's tables as ``t<hex digits>`` (bit i: the i-th table by name):
    a batch's name then says which tables it was planned for, and any process that reads the
    same configuration can plan it again from its name."""
    names = sorted(all_tables)
    return "t" + format(sum(1 << names.index(t) for t in set(tables)), "x")


def tag_tables(all_tables: Sequence[str], tag: str) -> list[str]:
    names = sorted(all_tables)
    bits = int(tag[1:], 16)
    return [t for i, t in enumerate(names) if bits >> i & 1]


#: The test metrics a run's log line shows, those of its task that it has.
LOGGED_METRICS = ("acc", "auc", "ap", "jaccard", "dice", "fg_iou")


def test_summary(record: Mapping[str, Any]) -> str:
    """The record's headline test metrics in one line (classification or segmentation)."""
    test = record["metrics"]["test"]
    return " ".join(f"{k} {test[k]:.4f}" for k in LOGGED_METRICS if k in test)
