import fnmatch
import functools
import json
import os
import re
import shlex
import sys
from pathlib import Path

from snakemake.settings.types import DeploymentMethod
from snakemake.utils import min_version, validate

min_version("9.0")

# The Snakefile and every job use the samcache code of this checkout, also inside conda
# environments that do not have the package installed: its src/ goes first on the import path.
SRC = str(Path(workflow.basedir) / "src")
sys.path.insert(0, SRC)
PREFIX = "export PYTHONPATH=%s${{PYTHONPATH:+:$PYTHONPATH}}; " % shlex.quote(SRC)
# Jobs run `python`: without conda environments, that is the interpreter this workflow runs in
# (which has samcache's dependencies), not whatever `python` comes first on PATH.
if DeploymentMethod.CONDA not in workflow.deployment_settings.deployment_method:
    PREFIX += "export PATH=%s:$PATH; " % shlex.quote(os.path.dirname(sys.executable))
shell.prefix(PREFIX)

from samcache import __version__ as SAMCACHE_VERSION  # noqa: E402
from samcache.backbone_init import InitError, check_methods  # noqa: E402
from samcache.config import (  # noqa: E402
    ConfigError,
    check_config,
    check_method,
    check_unique_keys,
    config_error_message,
)
from samcache.integrity import manifest_problem  # noqa: E402
from samcache.features.checkpoints import (
    CHECKPOINT_DIR,
    official_checkpoint,
)  # noqa: E402
from samcache.features.sam_prior import sam_prior_key  # noqa: E402
from samcache.features.specs import (  # noqa: E402
    dataset_identity,
    feature_set_from_config,
    superpixel_key,
)
from samcache.sweep import (  # noqa: E402
    RunRef,
    batch_tag,
    plan_batches,
    tables_tag,
    tag_tables,
    tidy_staged,
)

try:
    for path in workflow.configfiles:  # YAML silently keeps one of two equal keys
        check_unique_keys(path)
    validate(config, "../schemas/config.schema.yaml")
    check_config(config)
except ConfigError as err:
    raise WorkflowError(f"invalid configuration: {err}") from None
except Exception as err:  # name the offending key and stop before any job runs
    raise WorkflowError(config_error_message(err)) from None


wildcard_constraints:
    dataset="[a-z][a-z0-9_]*",
    fset="[a-z][a-z0-9_]*",
    spset="[a-z][a-z0-9_]*",
    pset="[a-z][a-z0-9_]*",
    method="[a-z][a-z0-9_]*",
    task="[A-Za-z0-9_]+",
    key="[0-9a-f]{12}",
    fraction=r"\d+(\.\d+)?",
    seed=r"\d+",
    table="[a-z][a-z0-9_]*",
    batch="[a-z][a-z0-9_]*/(a|t[0-9a-f]+)-[0-9a-f]{12}",


def cfg_error(msg):
    raise WorkflowError(f"config.yaml: {msg}")


def dataset_cfg(name):
    if name not in config["datasets"]:
        cfg_error(
            f"dataset '{name}' is not defined under 'datasets' (defined: {sorted(config['datasets'])})"
        )
    return config["datasets"][name]


def dataset_raw_files(name):
    """The raw files a dataset's store is converted from: data/raw/<source>/<filename>."""
    from samcache.data.sources import raw_paths

    try:
        return raw_paths(dataset_cfg(name))
    except (KeyError, ValueError, ModuleNotFoundError) as err:
        cfg_error(f"datasets.{name}: {err}")


def raw_file_spec(folder, filename):
    """The config entry of the first dataset (by name) whose source needs this raw file."""
    target = f"data/raw/{folder}/{filename}"
    for name in sorted(config["datasets"]):
        if target in dataset_raw_files(name):
            return dataset_cfg(name)
    cfg_error(f"no dataset under 'datasets' needs {target}")


def dataset_id(name):
    return dataset_identity(name, dataset_cfg(name))


def dataset_store(name):
    return f"data/stores/{name}.zarr"


def feature_set(dataset, fset):
    if fset not in config["feature_sets"]:
        cfg_error(f"feature set '{fset}' is not defined under 'feature_sets'")
    return feature_set_from_config(config["feature_sets"][fset], dataset_id(dataset))


def feature_dir(dataset, fset):
    return f"cache/features/{dataset}/{fset}-{feature_set(dataset, fset).key()}"


#: Settings of a feature set that change only speed, never values: not part of the cache key
#: and not a rerun trigger.
FEATURE_EXECUTION_KEYS = ("batch_size", "device")


def feature_cache_settings(fset):
    return {
        k: v
        for k, v in config["feature_sets"][fset].items()
        if k not in FEATURE_EXECUTION_KEYS
    }


def feature_execution_args(fset):
    cfg = config["feature_sets"][fset]
    return f"--batch-size {int(cfg['batch_size'])} --device {cfg['device']}"


OFFICIAL_CHECKPOINTS = {
    official_checkpoint(e).filename: e for e in ("vit_h", "vit_l", "vit_b")
}


def checkpoint_encoder(filename):
    if filename not in OFFICIAL_CHECKPOINTS:
        cfg_error(
            f"'{filename}' is not an official SAM checkpoint ({sorted(OFFICIAL_CHECKPOINTS)})"
        )
    return OFFICIAL_CHECKPOINTS[filename]


def feature_checkpoint(fset):
    """The checkpoint file a feature set loads ([] for random weights).

    ancient(): a checkpoint downloaded again, or touched, has the same content (its SHA-256 is
    in the cache key), so its modification time must not rerun the cache.
    """
    cfg = config["feature_sets"][fset]
    if cfg["weights"] == "random":
        return []
    if cfg["weights"] == "official":
        return ancient(
            f"{CHECKPOINT_DIR}/{official_checkpoint(cfg['encoder']).filename}"
        )
    return ancient(cfg["weights"])


def slic_settings(spset):
    return {k: v for k, v in config["superpixels"][spset].items() if k != "threads"}


def superpixel_dir(dataset, spset):
    key = superpixel_key(config["superpixels"][spset], dataset_id(dataset))
    return f"cache/superpixels/{dataset}/{spset}-{key}"


def sam_prior_cfg(name):
    if name not in config["sam_priors"]:
        cfg_error(
            f"SAM prior set '{name}' is not defined under 'sam_priors' (defined: {sorted(config['sam_priors'])})"
        )
    return config["sam_priors"][name]


def sam_prior_dir(dataset, pset):
    key = sam_prior_key(sam_prior_cfg(pset), dataset_id(dataset))
    return f"cache/sam_priors/{dataset}/{pset}-{key}"


def method_cfg(name):
    if name not in config["methods"]:
        cfg_error(
            f"method '{name}' is not defined under 'methods' (defined: {sorted(config['methods'])})"
        )
    return config["methods"][name]


def resolved_method(name, dataset=None):
    """The method's config with the training defaults filled in: what a run records.

    Precedence: the method's own `train`, then `train_by_dataset.<dataset>`, then `train`.
    """
    m = dict(method_cfg(name))
    per_dataset = config["train_by_dataset"].get(dataset, {}) if dataset else {}
    m["train"] = {**config["train"], **per_dataset, **m.get("train", {})}
    return m


def method_spec(name, dataset=None):
    """`resolved_method` of a method about to run: its backbone checkpoint must be in place."""
    require_initialisation([name])
    return resolved_method(name, dataset)


def train_on_cuda(method, dataset):
    return resolved_method(method, dataset)["train"]["device"].startswith("cuda")


def training_gpus(on_cuda, resource):
    """What a job that trains on CUDA asks for: one `gpu_slot` of the card on a workstation
    (several light runs share it; the profile sets how many), a whole `gpu` from a cluster's
    scheduler, which cannot share one between jobs."""
    if not on_cuda:
        return 0
    return int((resource == "gpu_slot") == bool(workflow.local_exec))


def training_mem_mb():
    """Memory of a training process: its resident inputs (sweep.memory_gb) and 2 GiB more."""
    return int((config["sweep"]["memory_gb"] + 2) * 1024)


def gpu_slots():
    """The `gpu_slot` cap of this invocation (the profile's `resources`), 1 when there is none.

    Training on CUDA holds one slot, so several light runs can share a card; an encoder job
    holds them all, so it never shares the card with training.
    """
    cap = workflow.global_resources.get("gpu_slot")
    value = getattr(cap, "value", cap)
    return int(value) if isinstance(value, int) and value > 0 else 1


@functools.cache
def checked_method(name):
    """The method's config, once its references, taps, head and head_args are checked: for
    each method a planned run uses, while the DAG is built, so before any job runs."""
    m = method_cfg(name)
    try:
        check_method(name, config)
    except ConfigError as err:
        raise WorkflowError(f"invalid configuration: {err}") from None
    return m


def may_mark_outputs():
    """Whether this process plans jobs it will run here (not a job's own subprocess)."""
    return workflow.is_main_process and workflow.executor_plugin is not None


def mark_out_of_date(paths):
    """Give existing outputs a modification time in 1970, so that Snakemake reruns the job
    that makes them (their inputs are now newer) without deleting anything. (Not 0: Snakemake
    reads a zero modification time as none.)"""
    for path in paths:
        if os.path.exists(path):
            os.utime(path, (1, 1))


@functools.cache
def checked_manifest(manifest, rule):
    """A cache's manifest; if the store beside it no longer holds what it claims (deleted,
    flags cleared, a shard missing or truncated), the manifest is marked out of date so that
    `rule` resumes the cache, recomputing only what is missing or damaged."""
    if os.path.exists(manifest) and workflow.is_main_process:
        problem = manifest_problem(manifest)
        if problem is not None:
            print(
                f"samcache: {problem}. Rule {rule} resumes it and recomputes only the missing "
                "or damaged images.",
                file=sys.stderr,
            )
            if may_mark_outputs():
                mark_out_of_date([manifest])
    return manifest


def method_caches(dataset, method):
    """Manifests of the caches a method's runs on `dataset` read, by train-rule input name."""
    checked_method(method)
    return cache_manifests(dataset, method)


def cache_manifests(dataset, method):
    m = method_cfg(method)
    out = {}
    if m.get("features"):
        path = f"{feature_dir(dataset, m['features'])}/manifest.json"
        out["features"] = checked_manifest(path, "features")
    if m.get("sam_prior"):
        path = f"{sam_prior_dir(dataset, m['sam_prior'])}/manifest.json"
        out["sam_prior"] = checked_manifest(path, "sam_prior")
    if m.get("superpixels"):
        path = f"{superpixel_dir(dataset, m['superpixels'])}/manifest.json"
        out["superpixels"] = checked_manifest(path, "superpixels")
    return out


def method_stores(dataset, method):
    """Paths of the stores a method's runs read, as `samcache train` gets them."""
    return {
        name: str(Path(manifest).parent / f"{name}.zarr")
        for name, manifest in method_caches(dataset, method).items()
    }


def cache_args(inp):
    """Command-line options naming the stores beside the train rule's cache manifests."""
    args = []
    if "features" in inp.keys():
        store = Path(inp.features).parent
        args += [
            "--features",
            store / "features.zarr",
            "--expect-key",
            store.name.rsplit("-", 1)[1],
        ]
    # <cache dir>/<name>.zarr, as method_stores names them
    for name in ("sam_prior", "superpixels"):
        if name in inp.keys():
            args += [
                f"--{name.replace('_', '-')}",
                Path(getattr(inp, name)).parent / f"{name}.zarr",
            ]
    return " ".join(shlex.quote(str(a)) for a in args)


def run_record(dataset, task, method, fraction, seed):
    return RunRef(dataset, task, method, float(fraction), int(seed)).record


def table_cfg(name):
    if name not in config["tables"]:
        cfg_error(
            f"table '{name}' is not defined under 'tables' (defined: {sorted(config['tables'])})"
        )
    return config["tables"][name]


def is_statistics_table(t):
    """A table counted from its datasets' stores alone (samcache.dataset_tables): it has no
    runs, no caches and no gallery."""
    return t.get("kind") == "dataset_statistics"


def table_row_methods(t):
    """The methods of a table's rows; none for a statistics table (its rows are classes)."""
    if is_statistics_table(t):
        return []
    return [r if isinstance(r, str) else r["method"] for r in t["rows"]]


def run_table_names(names):
    """The tables among `names` that are made of runs, and so have a gallery."""
    return [n for n in names if not is_statistics_table(table_cfg(n))]


def require_initialisation(methods):
    """Stop before any job runs when a method's pretrained backbone has no checkpoint file."""
    try:
        check_methods([(m, method_cfg(m)) for m in methods])
    except InitError as err:
        cfg_error(str(err))


def table_spec(name):
    """What the table command needs: the table's config and its blocks' dataset entries."""
    t = table_cfg(name)
    datasets = {b["dataset"]: dataset_cfg(b["dataset"]) for b in t["blocks"]}
    return {"name": name, **t, "datasets": datasets}


def table_runs(name):
    t = table_cfg(name)
    return [
        RunRef(b["dataset"], b["task"], m, float(f), int(s))
        for b in t["blocks"]
        for m in table_row_methods(t)
        for f in t["fractions"]
        for s in t["seeds"]
    ]


def table_records(name):
    require_initialisation(table_row_methods(table_cfg(name)))
    return [r.record for r in table_runs(name)]


def table_stores(name):
    """The dataset stores and SAM-prior caches a table's galleries read."""
    t = table_cfg(name)
    if is_statistics_table(t):
        return []
    out = set()
    for b in t["blocks"]:
        out.add(dataset_store(b["dataset"]))
        for m in table_row_methods(t):
            if method_cfg(m).get("sam_prior"):
                out.add(method_caches(b["dataset"], m)["sam_prior"])
    return sorted(out)


def check_baselines():
    """Every row's `baseline` is another row of its table: checked before any job runs."""
    for name, t in config["tables"].items():
        if is_statistics_table(t):  # its rows are classes, checked against its store
            continue
        methods = table_row_methods(t)
        for r in t["rows"]:
            base = r.get("baseline") if isinstance(r, dict) else None
            if base is not None and (base not in methods or base == r["method"]):
                cfg_error(
                    f"tables.{name}: row '{r['method']}' names baseline '{base}', which is not "
                    f"another row of the table (rows: {methods})"
                )


check_baselines()


# --- batches: many runs per training process (samcache.sweep) ---------------------------------


@functools.cache
def tables_of_runs():
    """Every run some table of the configuration needs, with the names of those tables."""
    out = {}
    for name in config["tables"]:
        for r in table_runs(name):
            out.setdefault(r, set()).add(name)
    return {r: frozenset(names) for r, names in out.items()}


def run_execution(r):
    t = resolved_method(r.method, r.dataset)["train"]
    return (t["device"], t["threads"])


def requested_tables():
    """The tables this invocation builds, from its targets (the default target's when none):
    `results/tables/<t>.<ext>`, `results/galleries/<t>`, and the rules all, all_tables and
    all_galleries. Other targets (a record, a cache) request no table."""
    by_rule = {
        "all": target_tables,
        "all_tables": all_table_names,
        "all_galleries": all_table_names,
    }
    out = set()
    for target in workflow.dag_settings.targets or {"all"}:
        if target in by_rule:
            out |= set(by_rule[target]())
        elif m := re.match(
            r"^results/(?:tables/(\w+)\.[\w.]+|galleries/(\w+))/?$", target
        ):
            out.add(m.group(1) or m.group(2))
    return sorted(t for t in out if t in config["tables"])


def run_inputs(r):
    return [
        method_cfg(r.method).get(k)
        for k in ("features", "sam_prior", "superpixels", "image_size")
    ]


@functools.cache
def batch_plan(tag="a"):
    """Batches of runs by id (`<dataset>/<tag>-<hash>`), a pure function of the configuration
    and of the tables they are planned for, so that every process that parses the workflow (a
    cluster job included) plans the same batch from its name.

    For the tables an invocation builds (tag `t<hex>`): all of their runs, grouped only by
    dataset and how they execute. Every other run of a table (tag `a`): grouped also by the set
    of tables that need it, so that building one table never trains a run only another needs.
    """
    if config["sweep"]["runs_per_job"] == 1:
        return {}
    if tag == "a":
        runs = tables_of_runs()
        tables_of = runs.__getitem__
    else:
        tables = frozenset(tag_tables(config["tables"], tag))
        runs = {r for t in tables for r in table_runs(t)}
        tables_of = lambda r: tables
    return plan_batches(
        runs,
        tables_of=tables_of,
        execution_of=run_execution,
        inputs_of=run_inputs,
        runs_per_job=config["sweep"]["runs_per_job"],
        tag=tag,
    )


@functools.cache
def batch_of_run():
    """The batch each run trains in: this invocation's tables' batches first, then the rest."""
    out = {r: b for b, runs in batch_plan().items() for r in runs}
    requested = requested_tables()
    if requested:
        tag = tables_tag(config["tables"], requested)
        out |= {r: b for b, runs in batch_plan(tag).items() for r in runs}
    return out


def run_of(w):
    return RunRef(w.dataset, w.task, w.method, float(w.fraction), int(w.seed))


def batch_runs(batch):
    plan = batch_plan(batch_tag(batch))
    if batch not in plan:
        raise WorkflowError(
            f"no batch '{batch}' in this configuration's plan (it changed since the batch was "
            "asked for): run snakemake again"
        )
    return plan[batch]


#: The scheduling priority of cache jobs, above every batch of runs (`batch_cost`).
CACHE_PRIORITY = 10**6


def batch_cost(batch):
    """A rough relative cost of a batch, a scheduling hint only: epochs times the share of the
    training split, four times more for a head that reads images or whole maps than for a
    probe of pooled features."""
    cost = 0.0
    for r in batch_runs(batch):
        m = resolved_method(r.method, r.dataset)
        probe = (
            m.get("features")
            and not m.get("image_size")
            and m["head"].endswith("_probe")
        )
        cost += m["train"]["epochs"] * r.fraction / 100 * (1 if probe else 4)
    return min(int(cost), CACHE_PRIORITY - 1)


def batch_on_cuda(batch):
    return run_execution(batch_runs(batch)[0])[0].startswith("cuda")


def batch_report_path(batch):
    """A batch's report: `<batch>.json` (rule train_batch), `<batch>.cuda.json` for a batch
    that trains on CUDA (rule train_batch_cuda), so that a cluster profile can send the one
    rule to its CPU partition and the other to its GPU partition."""
    return f"results/batches/{batch}{'.cuda' if batch_on_cuda(batch) else ''}.json"


def batch_report(w):
    """{"batch": the report of the run's batch}, or {} when the run trains on its own.

    Under a cluster executor, a run that trains on CUDA must train in a batch: only
    train_batch_cuda jobs go to the GPU partition."""
    b = batch_of_run().get(run_of(w))
    if not b and not workflow.local_exec and train_on_cuda(w.method, w.dataset):
        raise WorkflowError(
            f"run {run_of(w).record} trains on CUDA in its own `train` job, which a cluster "
            "profile does not send to a GPU partition (only batches of runs, rule "
            "train_batch_cuda): set sweep.runs_per_job to 2 or more in the config, and ask for "
            "a table that needs the run rather than its record alone"
        )
    return {"batch": batch_report_path(b)} if b else {}


def trains_here_on_cuda(w):
    """Whether a run's `train` job itself trains on CUDA: not when its batch trained it (the
    job then only moves the record, and holds no GPU)."""
    return train_on_cuda(w.method, w.dataset) and not batch_report(w)


def batch_inputs(batch, cuda):
    """The inputs of a batch's job; `cuda`: whether the rule is the one for CUDA batches."""
    if batch_on_cuda(batch) != cuda:
        raise WorkflowError(
            f"batch '{batch}' trains on {'CUDA' if not cuda else 'the CPU'}: its report is "
            f"{batch_report_path(batch)}"
        )
    runs = batch_runs(batch)
    out = {"store": dataset_store(runs[0].dataset)}
    for r in runs:
        for name, manifest in method_caches(r.dataset, r.method).items():
            out[f"{name}_{r.method}"] = manifest
    return out


def batch_plan_json(batch):
    """What `samcache train-batch` trains: the runs, each method's settings and stores."""
    runs = batch_runs(batch)
    dataset = runs[0].dataset
    methods = {}
    for m in sorted({r.method for r in runs}):
        stores = method_stores(dataset, m)
        features = method_cfg(m).get("features")
        methods[m] = {
            "spec": method_spec(m, dataset),
            "features": stores.get("features"),
            "expect_key": feature_set(dataset, features).key() if features else None,
            "sam_prior": stores.get("sam_prior"),
            "superpixels": stores.get("superpixels"),
        }
    return {
        "batch": batch,
        "dataset": dataset_store(dataset),
        "methods": methods,
        "runs": [[r.task, r.method, r.fraction, r.seed, r.record] for r in runs],
    }


def batch_execution_args():
    s = config["sweep"]
    gpu = s["gpu_memory_gb"]
    return f"--memory-gb {s['memory_gb']}" + (
        f" --gpu-memory-gb {gpu}" if gpu is not None else ""
    )


TABLE_SUFFIXES = (".md", ".html", ".tex", ".csv", ".runs.csv", ".compare.csv", ".png")


@functools.cache
def stale_table(name):
    """Why a built table is stale (a run record behind it is missing: a failed rerun, a record
    deleted by hand), or "" if it is not built or not stale."""
    md = f"results/tables/{name}.md"
    records = table_records(name)
    missing = [r for r in records if not os.path.exists(r)]
    if not missing or not os.path.exists(md):
        return ""
    more = ", ..." if len(missing) > 1 else ""
    return f"{len(missing)} of its run records are missing ({missing[0]}{more})"


def table_inputs(name):
    """The table's run records. Snakemake reruns nothing for a missing input of an existing
    output, so a stale table is removed first; it is then rebuilt with the missing runs.
    A statistics table's inputs are the dataset stores of its blocks, which it counts.
    """
    t = table_cfg(name)
    if is_statistics_table(t):
        return sorted({dataset_store(b["dataset"]) for b in t["blocks"]})
    why = stale_table(name)
    if why and workflow.is_main_process:
        print(
            f"samcache: table results/tables/{name}.md is stale: {why}; it is rebuilt.",
            file=sys.stderr,
        )
        if may_mark_outputs() and not workflow.dryrun:
            for suffix in TABLE_SUFFIXES:
                path = f"results/tables/{name}{suffix}"
                if os.path.exists(path):
                    os.remove(path)
    return table_records(name)


def table_plan_marker(name):
    """A table params entry: a dry run removes nothing, so there a stale table's params differ
    from its last run's, and the plan shows the rebuild. Always "" in a real run."""
    return stale_table(name) if workflow.dryrun else ""


@functools.cache
def tables_with_datasets():
    """Tables whose datasets are all defined; the others are named once on stderr."""
    ready, waiting = [], []
    for name, t in sorted(config["tables"].items()):
        missing = sorted({b["dataset"] for b in t["blocks"]} - set(config["datasets"]))
        (waiting if missing else ready).append((name, missing))
    for name, missing in waiting:
        print(
            f"samcache: table '{name}' is not a default target until datasets {missing} are "
            "defined under 'datasets' (name it as a target to see the error)",
            file=sys.stderr,
        )
    return [name for name, _ in ready]


def target_tables():
    return config["targets"] or tables_with_datasets()


def all_table_names():
    """The tables the `all_tables` target builds: those matching `all_tables` (all if empty)."""
    patterns = config["all_tables"] or ["*"]
    names = [
        t
        for t in sorted(config["tables"])
        if any(fnmatch.fnmatchcase(t, p) for p in patterns)
    ]
    if not names:
        cfg_error(f"all_tables: {patterns} matches no table under 'tables'")
    return names


def gallery_records(name):
    """The run records a table's gallery shows; a statistics table has none, and no gallery."""
    if is_statistics_table(table_cfg(name)):
        cfg_error(
            f"table '{name}' is a dataset_statistics table: it has no runs, so no gallery "
            f"(results/tables/{name}.md is the table)"
        )
    return table_records(name)


def get_final_output():
    tables = target_tables()
    return (
        [f"results/tables/{t}.md" for t in tables]
        + [f"results/galleries/{t}" for t in run_table_names(tables)]
        + get_cache_outputs()
    )


def get_cache_outputs():
    out = []
    for t in target_tables():
        spec = table_cfg(t)
        for b in spec["blocks"]:  # a statistics table has no methods, hence no caches
            for m in table_row_methods(spec):
                out += cache_manifests(b["dataset"], m).values()
    return sorted(set(out))
