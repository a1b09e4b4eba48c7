"""One process, many runs: train a batch's runs in turn on one resident copy of their inputs.

A batch plan (JSON, see ``run_batch``) names the dataset store, each method's resolved settings
and caches, and the runs with the path their record belongs at. For every run, in order:

* a staged record that matches the run as configured is kept (an interrupted batch resumes);
* else a record already in place that matches is staged as it is: never trained twice;
* else the run is trained and its record and training log are staged.

A run that fails is logged with its traceback and the batch goes on with the next; the batch
then fails as a whole, naming the runs, and writes no report, so that Snakemake runs it again
next time — which trains only what is still missing. Records are written atomically, so a batch
killed at any point leaves each run either staged complete or not at all.
"""

from __future__ import annotations

import contextlib
import logging
import time
import traceback
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from samcache import __version__
from samcache.sweep import (
    record_mismatch,
    stage_copy,
    staged_log,
    staged_path,
    test_summary,
    write_json_atomic,
)

log = logging.getLogger(__name__)


class BatchFailed(Exception):
    """Some runs of a batch failed; the others are staged."""


@contextlib.contextmanager
def run_log(path: Path) -> Iterator[None]:
    """Everything logged (and every warning) while training one run, also written to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    logging.captureWarnings(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            yield
    finally:
        logging.captureWarnings(False)
        root.removeHandler(handler)
        handler.close()


def expected_fields(
    *,
    fingerprint: str,
    task: str,
    method: str,
    fraction: float,
    seed: int,
    cache_key,
    prior_key,
    superpixels_key=None,
) -> dict[str, Any]:
    """The record fields that tie a record to its run as configured."""
    return {
        "dataset_fingerprint": fingerprint,
        "task": task,
        "method": method,
        "fraction": float(fraction),
        "seed": int(seed),
        "samcache_version": __version__,
        "cache_key": cache_key,
        "sam_prior_key": prior_key,
        "superpixels_key": superpixels_key,
    }


def run_batch(
    plan: Mapping[str, Any],
    *,
    report: str | Path | None = None,
    memory_gb: float = 8.0,
    gpu_memory_gb: float | None = None,
) -> list[str]:
    """Train the runs of ``plan`` in this process; returns the records of the runs that failed.

    ``plan``: ``{"batch": id, "dataset": store, "methods": {name: {"spec": resolved config,
    "features": store or null, "expect_key": cache key or null, "sam_prior": store or null,
    "superpixels": store or null}}, "runs": [[task, method, fraction, seed, record], ...]}``.
    ``memory_gb`` bounds the host memory of the resident inputs; ``gpu_memory_gb`` that of
    inputs held on the GPU when the runs train on CUDA (None: half of its free memory).
    """
    import torch

    from samcache.data.store import DatasetStore
    from samcache.device import resolve_device
    from samcache.features.sam_prior import stored_key
    from samcache.features.superpixels import stored_key as superpixel_key
    from samcache.resident import ResidentCache
    from samcache.train import train_run

    t0 = time.perf_counter()
    methods = plan["methods"]
    runs = plan["runs"]
    ds = DatasetStore(plan["dataset"])
    devices = {m["spec"].get("train", {}).get("device", "auto") for m in methods.values()}
    device = resolve_device(sorted(devices)[0])
    if device.type == "cuda" and gpu_memory_gb is None:
        gpu_memory_gb = 0.5 * torch.cuda.mem_get_info(device)[0] / 2**30
    cache = ResidentCache(memory_gb, device=device, device_memory_gb=gpu_memory_gb or 0.0)
    log.info(
        "batch %s: %d runs on %s, resident inputs up to %.1f GiB in host memory%s",
        plan.get("batch", "?"),
        len(runs),
        device,
        memory_gb,
        f" and {gpu_memory_gb:.1f} GiB on the GPU" if cache.device_budget else "",
    )
    prior_keys: dict[str, str] = {}
    slic_keys: dict[str, str] = {}
    done: list[dict[str, Any]] = []
    failed: list[str] = []
    for k, (task, name, fraction, seed, record) in enumerate(runs, 1):
        m = methods[name]
        prior = m.get("sam_prior")
        if prior and prior not in prior_keys:
            prior_keys[prior] = stored_key(prior)
        slic = m.get("superpixels")
        if slic and slic not in slic_keys:
            slic_keys[slic] = superpixel_key(slic)
        expect = expected_fields(
            fingerprint=ds.fingerprint,
            task=task,
            method=name,
            fraction=fraction,
            seed=seed,
            cache_key=m.get("expect_key") if m.get("features") else None,
            prior_key=prior_keys.get(prior) if prior else None,
            superpixels_key=slic_keys.get(slic) if slic else None,
        )
        what = f"[{k}/{len(runs)}] {name} {task} f{float(fraction):g} s{seed}"
        staged = staged_path(record)
        if record_mismatch(staged, expect, m["spec"]) is None:
            log.info("%s: staged by an earlier attempt, kept", what)
            done.append({"record": record, "status": "staged earlier"})
            continue
        if record_mismatch(record, expect, m["spec"]) is None:
            stage_copy(record)
            log.info("%s: its record is current, not trained again", what)
            done.append({"record": record, "status": "current"})
            continue
        t = time.perf_counter()
        try:
            with run_log(staged_log(record)):
                rec = train_run(
                    dataset=plan["dataset"],
                    features=m.get("features"),
                    task=task,
                    method_name=name,
                    method=m["spec"],
                    fraction=float(fraction),
                    seed=int(seed),
                    out=staged,
                    expect_cache_key=m.get("expect_key"),
                    superpixels=m.get("superpixels"),
                    sam_prior=prior,
                    cache=cache,
                )
        except Exception:
            log.error("%s failed:\n%s", what, traceback.format_exc())
            failed.append(record)
            continue
        seconds = time.perf_counter() - t
        log.info(
            "%s: trained in %.1f s, best epoch %d, test %s",
            what,
            seconds,
            rec["best_epoch"],
            test_summary(rec),
        )
        done.append({"record": record, "status": "trained", "seconds": round(seconds, 3)})
    read = cache.stats
    log.info(
        "batch done in %.1f s: %d trained, %d kept, %d failed; read %.1f MiB of inputs (%s)",
        time.perf_counter() - t0,
        sum(d["status"] == "trained" for d in done),
        sum(d["status"] != "trained" for d in done),
        len(failed),
        read.total_bytes / 2**20,
        ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sorted(read.bytes.items())),
    )
    if report is not None and not failed:
        write_json_atomic(
            report,
            {
                "batch": plan.get("batch"),
                "runs": done,
                "wall_time_s": round(time.perf_counter() - t0, 3),
                "read_bytes": dict(read.bytes),
            },
        )
    return failed
