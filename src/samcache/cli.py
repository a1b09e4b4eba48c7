"""The ``samcache`` command: one subcommand per pipeline stage; each Snakemake rule calls one.

Every subcommand is usable without Snakemake. Structured settings (a feature set, a method, a
table) are passed with ``--spec`` as inline JSON or as ``@file`` (JSON or YAML).
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
from pathlib import Path
from typing import Any

import yaml

from samcache import __version__

log = logging.getLogger("samcache")


def load_spec(value: str) -> dict[str, Any]:
    """Inline JSON, or ``@path`` to a JSON or YAML file."""
    if value.startswith("@"):
        text = Path(value[1:]).read_text()
        return yaml.safe_load(text)
    try:
        return json.loads(value)
    except json.JSONDecodeError as err:
        raise SystemExit(f"--spec is neither JSON nor @file: {err}") from None


# --- subcommands ----------------------------------------------------------------------------


def cmd_download(a: argparse.Namespace) -> None:
    from samcache.data.sources import get_source, remote_files
    from samcache.download import fetch

    spec = load_spec(a.spec)
    folder = Path(a.raw_dir) / get_source(spec.get("source", "")).raw_folder
    files = remote_files(spec)
    if a.file:
        unknown = sorted(set(a.file) - {f.filename for f in files})
        if unknown:
            raise ValueError(
                f"--file {unknown[0]}: not a file of source '{spec['source']}'; its files are "
                f"{[f.filename for f in files]}"
            )
        files = [f for f in files if f.filename in a.file]
    for f in files:
        path = fetch(
            f,
            folder,
            retries=a.retries,
            backoff=a.backoff,
            timeout=a.timeout,
            progress=not a.no_progress,
            first_download=spec.get("first_download", "record"),
        )
        log.info("%s is in place and verified", path)


def cmd_dataset(a: argparse.Namespace) -> None:
    from samcache.data.sources import get_source

    spec = load_spec(a.spec)
    source = get_source(spec.get("source", ""))
    store = source.build(a.name, spec, Path(a.raw_dir), Path(a.out), threads=a.threads)
    log.info(
        "wrote %s: %d images, tasks %s, fingerprint %s",
        store.path,
        store.n_items,
        sorted(store.tasks),
        store.fingerprint,
    )


def cmd_features(a: argparse.Namespace) -> None:
    from samcache.features.extract import extract_features
    from samcache.features.specs import feature_set_from_config

    spec = load_spec(a.spec)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    fset = feature_set_from_config(spec, a.dataset_id)
    if a.expect_key and fset.key() != a.expect_key:
        raise SystemExit(f"feature-set settings give cache key {fset.key()}, not {a.expect_key}")
    store = extract_features(
        a.dataset,
        Path(a.out),
        fset,
        checkpoint_dir=a.checkpoint_dir,
        batch_size=a.batch_size or spec.get("batch_size", 8),
        device=a.device or spec.get("device", "auto"),
        attention=a.attention,
        progress=not a.no_progress,
    )
    if a.manifest:  # what the cache holds, not how it was computed: the same after a resume
        held = {k: v for k, v in store.attrs.items() if k != "extractions"}
        _write_manifest(a.manifest, {"kind": "features", "path": str(store.path), **held})


def cmd_checkpoint(a: argparse.Namespace) -> None:
    from samcache.features.checkpoints import fetch_checkpoint

    path = fetch_checkpoint(
        a.encoder, a.dir, url=a.url, sha256=a.sha256, size=a.size, progress=not a.no_progress
    )
    log.info("checkpoint ready: %s", path)


def cmd_superpixels(a: argparse.Namespace) -> None:
    from samcache.features.specs import SlicParams
    from samcache.features.superpixels import compute_superpixels

    spec = load_spec(a.spec)
    params = SlicParams.from_config(spec)
    key = params.key(a.dataset_id)
    if a.expect_key and key != a.expect_key:
        raise SystemExit(f"SLIC settings give cache key {key}, not {a.expect_key}")
    out = compute_superpixels(
        a.dataset, a.out, params, key=key, threads=a.threads, progress=not a.no_progress
    )
    if a.manifest:
        _write_manifest(
            a.manifest, {"kind": "superpixels", "path": str(out), "cache_key": key, "slic": spec}
        )


def cmd_sam_prior(a: argparse.Namespace) -> None:
    from samcache.features.sam_prior import SamPriorParams, compute_sam_priors
    from samcache.features.specs import encoder_spec

    spec = load_spec(a.spec)
    params = SamPriorParams.from_config(spec)
    key = params.key(a.dataset_id)
    if a.expect_key and key != a.expect_key:
        raise SystemExit(f"SAM prior settings give cache key {key}, not {a.expect_key}")
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    checkpoint = None
    if params.weights == "official":
        checkpoint = a.checkpoint or encoder_spec(params.encoder).checkpoint_filename
    elif params.weights != "random":
        checkpoint = params.weights
    out = compute_sam_priors(
        a.dataset,
        a.out,
        params,
        key=key,
        checkpoint=checkpoint,
        device=spec.get("device", "auto"),
        progress=not a.no_progress,
    )
    if a.manifest:
        _write_manifest(
            a.manifest, {"kind": "sam_prior", "path": str(out), "cache_key": key, "amg": spec}
        )


def cmd_train(a: argparse.Namespace) -> None:
    spec = load_spec(a.spec)
    if a.staged and _place_staged_record(a, spec):
        return  # trained by its batch, whose spec was checked like this one's
    from samcache.config import check_head, validate_method
    from samcache.train import train_run

    validate_method(spec, "--spec")  # as the workflow's config: epochs >= 1, known keys
    check_head(spec, "--spec")
    rec = train_run(
        dataset=a.dataset,
        features=a.features,
        task=a.task,
        method_name=a.method_name,
        method=spec,
        fraction=a.fraction,
        seed=a.seed,
        out=a.out,
        expect_cache_key=a.expect_key,
        superpixels=a.superpixels,
        sam_prior=a.sam_prior,
    )
    from samcache.sweep import test_summary

    log.info(
        "%s %s f=%g s=%d: test %s (best epoch %d, %.1f s)",
        rec["method"],
        rec["task"],
        rec["fraction"],
        rec["seed"],
        test_summary(rec),
        rec["best_epoch"],
        rec["wall_time_s"],
    )


def _place_staged_record(a: argparse.Namespace, spec: dict[str, Any]) -> bool:
    """Put the record that this run's batch staged in place (no torch import); False if none."""
    from samcache.sweep import place_staged

    expect = {
        "task": a.task,
        "method": a.method_name,
        "fraction": float(a.fraction),
        "seed": int(a.seed),
        "samcache_version": __version__,
        "cache_key": a.expect_key if a.features else None,
    }
    if place_staged(a.out, expect, spec, log_to=sys.stdout):
        log.info("record trained by its batch, now in place: %s", a.out)
        return True
    log.warning("%s: no record staged by its batch; training the run in this process", a.out)
    return False


def cmd_train_batch(a: argparse.Namespace) -> None:
    from samcache.batch import BatchFailed, run_batch
    from samcache.config import check_head, validate_method

    plan = load_spec(a.plan)
    for name, m in plan["methods"].items():  # as `samcache train` checks its --spec
        validate_method(m["spec"], f"method '{name}' of --plan")
        check_head(m["spec"], f"method '{name}' of --plan")
    failed = run_batch(plan, report=a.report, memory_gb=a.memory_gb, gpu_memory_gb=a.gpu_memory_gb)
    if failed:
        raise BatchFailed(
            f"{len(failed)} of {len(plan['runs'])} runs failed (tracebacks above): "
            + ", ".join(failed)
            + ". The others are staged; a rerun trains only the failed ones."
        )


def _write_table(a: argparse.Namespace, rescore=None) -> None:
    from samcache.dataset_tables import KIND, is_statistics_table
    from samcache.tables import write_table

    spec = load_spec(a.spec)
    spec.setdefault("name", Path(a.md).stem)
    if is_statistics_table(spec):
        raise ValueError(
            f"table '{spec['name']}' is a {KIND} table: it has no runs to rescore; "
            "`samcache table` counts it from its dataset stores"
        )
    write_table(
        spec,
        a.records,
        a.md,
        a.csv,
        a.runs_csv,
        a.plot,
        tex=a.tex,
        compare_csv=a.compare_csv,
        html=a.html,
        rescore=rescore,
    )


def cmd_table(a: argparse.Namespace) -> None:
    from samcache.dataset_tables import is_statistics_table, write_statistics_table

    spec = load_spec(a.spec)
    if not is_statistics_table(spec):
        _write_table(a)
        log.info("wrote %s and %s from %d run records", a.md, a.csv, len(a.records))
        return
    spec.setdefault("name", Path(a.md).stem)
    write_statistics_table(
        spec,
        a.records,
        a.md,
        a.csv,
        a.runs_csv,
        a.plot,
        tex=a.tex,
        compare_csv=a.compare_csv,
        html=a.html,
        progress=True,
    )
    log.info("wrote %s and %s from the dataset stores %s", a.md, a.csv, ", ".join(a.records))


def cmd_rescore(a: argparse.Namespace) -> None:
    from samcache.rescore import parse_scorer

    scorers = dict(parse_scorer(m) for m in a.metric or [])
    _write_table(a, rescore=scorers)
    log.info(
        "rescored %d run records from their stored predictions%s: wrote %s and %s",
        len(a.records),
        f" (with {', '.join(scorers)})" if scorers else "",
        a.md,
        a.csv,
    )


def cmd_gallery(a: argparse.Namespace) -> None:
    from samcache.gallery import write_galleries

    spec = load_spec(a.spec)
    spec.setdefault("name", Path(a.out).name)
    written = write_galleries(spec, a.records, a.out, n_images=a.images)
    log.info("wrote %d galleries into %s", len(written), a.out)


def cmd_info(a: argparse.Namespace) -> None:
    from samcache.zarrio import open_group

    g = open_group(a.path, "r")
    print(json.dumps(dict(g.attrs), indent=1, default=str))
    for name, arr in sorted(g.members(max_depth=None)):
        if hasattr(arr, "chunks"):
            print(f"{name:24s} {str(arr.shape):28s} {str(arr.dtype):8s} chunks={arr.chunks}")


def cmd_verify(a: argparse.Namespace) -> int:
    from samcache.data.store import REBUILD_ADVICE
    from samcache.integrity import verify_store

    failed = False
    for path in a.paths:
        r = verify_store(path, full=not a.quick, repair=a.repair)
        what = "decoded" if not a.quick else "checked (files only)"
        if r.sound:
            print(f"{path}: sound ({r.n_items} items {what})")
            continue
        for d in r.damages[:20]:
            print(f"{path}: {d}")
        if len(r.damages) > 20:
            print(f"{path}: ... and {len(r.damages) - 20} more")
        if r.fingerprint_error:
            print(r.fingerprint_error)
        if r.cleared:
            print(
                f"{path}: cleared the completion flags of {r.cleared} damaged items; run "
                "snakemake again (or the samcache command that built this cache) to recompute them"
            )
            continue
        failed = True
        fix = (
            "Run `samcache verify --repair` on it to clear their flags, then snakemake again"
            if r.is_cache
            else REBUILD_ADVICE
        )
        print(f"{path}: damaged. {fix}.")
    return 1 if failed else 0


def _write_manifest(path: str, obj: dict[str, Any]) -> None:
    """Written whole or not at all: Snakemake never sees half a manifest."""
    from samcache.atomic import write_text_atomic

    write_text_atomic(path, json.dumps(obj, indent=1, default=str) + "\n")


# --- parser ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="samcache", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"samcache {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser(
        "download", help="fetch a dataset's files: resumed, retried, checksum-verified"
    )
    s.add_argument("--spec", required=True, help="the dataset's config entry (JSON or @file)")
    s.add_argument("--file", action="append", help="only this file name (repeatable)")
    s.add_argument(
        "--raw-dir", default="data/raw", help="raw-data root; files go to <root>/<source>"
    )
    s.add_argument("--retries", type=int, default=5, help="retries after a transient failure")
    s.add_argument(
        "--backoff", type=float, default=2.0, help="first retry delay, doubled each time"
    )
    s.add_argument(
        "--timeout", type=float, default=60.0, help="seconds without data before a retry"
    )
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_download)

    s = sub.add_parser("dataset", help="build a dataset store")
    s.add_argument("--name", required=True)
    s.add_argument("--spec", required=True, help="the dataset's config entry (JSON or @file)")
    s.add_argument("--raw-dir", default="data/raw", help="raw-data root (its source's files)")
    s.add_argument("--out", required=True, help="the store to write (<name>.zarr)")
    s.add_argument("--threads", type=int, default=1, help="threads decoding and resizing images")
    s.set_defaults(func=cmd_dataset)

    s = sub.add_parser("features", help="extract frozen SAM features into a resumable cache")
    s.add_argument("--dataset", required=True, help="dataset store")
    s.add_argument("--dataset-id", required=True, help="dataset identity for the cache key")
    s.add_argument("--spec", required=True, help="the feature set's config entry (JSON or @file)")
    s.add_argument("--out", required=True, help="feature store to create or resume")
    s.add_argument(
        "--checkpoint-dir",
        default="checkpoints",
        help="folder of official checkpoints (weights: official); downloaded there if missing",
    )
    s.add_argument("--expect-key", help="fail unless the settings give this cache key")
    s.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = its default)")
    s.add_argument("--batch-size", type=int, default=0, help="override the spec's batch_size")
    s.add_argument("--device", default="", help="override the spec's device (auto, cpu, cuda:0)")
    s.add_argument(
        "--attention",
        choices=["auto", "sdpa", "original"],
        default="auto",
        help="attention path: auto uses fused SDPA where it checks out as exact enough",
    )
    s.add_argument("--manifest", help="write a JSON manifest here when complete")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_features)

    s = sub.add_parser("checkpoint", help="download and verify an official SAM checkpoint")
    s.add_argument("--encoder", required=True, help="vit_h, vit_l or vit_b")
    s.add_argument("--dir", default="checkpoints", help="folder to download into or look in")
    s.add_argument("--url", help="another source than the official URL (needs --sha256)")
    s.add_argument("--sha256", help="SHA-256 of the file at --url")
    s.add_argument("--size", type=int, help="size in bytes of the file at --url")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_checkpoint)

    s = sub.add_parser("superpixels", help="compute SLIC label maps into a resumable cache")
    s.add_argument("--dataset", required=True)
    s.add_argument("--dataset-id", required=True)
    s.add_argument("--spec", required=True, help="SLIC parameters (JSON or @file)")
    s.add_argument("--out", required=True)
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--expect-key")
    s.add_argument("--manifest")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_superpixels)

    s = sub.add_parser("sam-prior", help="SAMAug-C prior maps from SAM's automatic masks")
    s.add_argument("--dataset", required=True)
    s.add_argument("--dataset-id", required=True)
    s.add_argument("--spec", required=True, help="the sam_priors entry (JSON or @file)")
    s.add_argument("--out", required=True)
    s.add_argument("--checkpoint", help="path of the official checkpoint (weights: official)")
    s.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = its default)")
    s.add_argument("--expect-key")
    s.add_argument("--manifest")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_sam_prior)

    s = sub.add_parser("train", help="train and evaluate one run, write its JSON record")
    s.add_argument("--dataset", required=True)
    s.add_argument("--features", help="feature store (for heads that read cached features)")
    s.add_argument("--superpixels", help="superpixel store (for heads that read superpixels)")
    s.add_argument("--sam-prior", help="SAMAug-C prior store (for heads that read sam_prior)")
    s.add_argument("--task", required=True)
    s.add_argument("--method-name", required=True)
    s.add_argument("--spec", required=True, help="the method's resolved config (JSON or @file)")
    s.add_argument("--fraction", type=float, required=True, help="percent of the training split")
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--expect-key", help="fail unless the feature store has this cache key")
    s.add_argument("--out", required=True)
    s.add_argument(
        "--staged",
        action="store_true",
        help="move the record this run's batch staged (<out dir>/.staged/) into place if it "
        "matches; train the run only if there is none",
    )
    s.set_defaults(func=cmd_train)

    s = sub.add_parser(
        "train-batch", help="train many runs in one process on resident inputs, staging records"
    )
    s.add_argument("--plan", required=True, help="the batch plan (JSON or @file)")
    s.add_argument("--report", help="write a JSON report here when every run succeeded")
    s.add_argument(
        "--memory-gb",
        type=float,
        default=8.0,
        help="host memory for resident inputs; above it inputs stream from Zarr (8)",
    )
    s.add_argument(
        "--gpu-memory-gb",
        type=float,
        default=None,
        help="GPU memory for resident inputs when training on CUDA (default: half of free)",
    )
    s.set_defaults(func=cmd_train_batch)

    for verb, func, text in (
        ("table", cmd_table, "aggregate run records into a paper-shaped table"),
        ("rescore", cmd_rescore, "a table with its metrics recomputed from stored predictions"),
    ):
        s = sub.add_parser(verb, help=text)
        s.add_argument("--spec", required=True, help="the table's config entry (JSON or @file)")
        s.add_argument("--md", required=True)
        s.add_argument("--csv", required=True)
        s.add_argument("--runs-csv", help="also write one row per run with its provenance")
        s.add_argument("--plot", help="also write a PNG of the metrics (and differences)")
        s.add_argument("--tex", help="also write the table as LaTeX (booktabs)")
        s.add_argument("--compare-csv", help="also write the paired comparisons, one row per seed")
        s.add_argument("--html", help="also write the table as a self-contained HTML page")
        if verb == "rescore":
            s.add_argument(
                "--metric",
                action="append",
                metavar="NAME=MODULE:FUNCTION",
                help="also compute NAME with FUNCTION(labels, scores) (repeatable); a table "
                "shows it when its spec lists NAME",
            )
        stores = " (a table of kind dataset_statistics: its blocks' dataset stores)"
        s.add_argument(
            "records",
            nargs="*",
            help="run records (JSON); each is validated" + (stores if verb == "table" else ""),
        )
        s.set_defaults(func=func)

    s = sub.add_parser("gallery", help="attention maps, predicted masks and SAM priors as images")
    s.add_argument("--spec", required=True, help="the table's config entry (JSON or @file)")
    s.add_argument("--out", required=True, help="folder for the gallery images")
    s.add_argument("--images", type=int, default=6, help="test images per gallery (6)")
    s.add_argument("records", nargs="+")
    s.set_defaults(func=cmd_gallery)

    s = sub.add_parser(
        "verify", help="check that stores hold what they claim: every item decoded, finite"
    )
    s.add_argument("paths", nargs="+", help="dataset stores or caches (<...>.zarr)")
    s.add_argument(
        "--quick", action="store_true", help="only the files' presence and shard indexes"
    )
    s.add_argument(
        "--repair",
        action="store_true",
        help="clear the completion flags of damaged cache items, so that a rerun recomputes them",
    )
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("info", help="print a store's attributes and arrays")
    s.add_argument("path")
    s.set_defaults(func=cmd_info)
    return p


def os_error_message(err: OSError) -> str:
    """One line naming the file and what to do; nothing half-written is left behind (stores,
    manifests, tables and locks are written under temporary names and renamed)."""
    where = f" ({err.filename})" if err.filename else ""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"no space left on the device{where}: {err.strerror}. Free space there and run "
            "again; finished work is kept and resumed"
        )
    return f"{err.strerror or err}{where}"


def _one_line_errors() -> tuple[type[Exception], ...]:
    """Errors a user can act on from their message alone. Imported only when something failed:
    a command that succeeds (a run's record moved into place) does not pay for zarr."""
    from samcache.archives import UnsafeArchiveError
    from samcache.batch import BatchFailed
    from samcache.download import DownloadError
    from samcache.zarrio import StoreError

    return (BatchFailed, StoreError, DownloadError, UnsafeArchiveError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        status = args.func(args)
    except KeyboardInterrupt:
        log.error("interrupted; completed work is kept and a re-run resumes it")
        return 130
    except Exception as err:
        plain = (FileNotFoundError, KeyError, ValueError, FloatingPointError)
        if isinstance(err, plain + _one_line_errors()):
            log.error("%s", err)
        elif isinstance(err, OSError):  # a full disk, a file that cannot be read: no traceback
            log.error("%s", os_error_message(err))
        else:
            raise
        return 1
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
