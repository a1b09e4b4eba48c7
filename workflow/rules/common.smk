import json
import sys
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("9.0")

# The Snakefile and every job use the samcache code of this checkout, also inside conda
# environments that do not have the package installed: its src/ goes first on the import path.
SRC = str(Path(workflow.basedir) / "src")
sys.path.insert(0, SRC)
shell.prefix("export PYTHONPATH=%s${{PYTHONPATH:+:$PYTHONPATH}}; " % SRC)

from samcache import __version__ as SAMCACHE_VERSION  # noqa: E402
from samcache.config import config_error_message  # noqa: E402
from samcache.features.checkpoints import (
    CHECKPOINT_DIR,
    official_checkpoint,
)  # noqa: E402
from samcache.features.specs import (  # noqa: E402
    dataset_identity,
    feature_set_from_config,
    superpixel_key,
)

try:
    validate(config, "../schemas/config.schema.yaml")
except Exception as err:  # name the offending key and stop before any job runs
    raise WorkflowError(config_error_message(err)) from None


wildcard_constraints:
    dataset="[a-z][a-z0-9_]*",
    fset="[a-z][a-z0-9_]*",
    spset="[a-z][a-z0-9_]*",
    method="[a-z][a-z0-9_]*",
    task="[A-Za-z0-9_]+",
    key="[0-9a-f]{12}",
    fraction=r"\d+(\.\d+)?",
    seed=r"\d+",
    table="[a-z][a-z0-9_]*",


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


def method_cfg(name):
    if name not in config["methods"]:
        cfg_error(
            f"method '{name}' is not defined under 'methods' (defined: {sorted(config['methods'])})"
        )
    return config["methods"][name]


def method_spec(name):
    """The method's config with the global training defaults filled in: what a run records."""
    m = dict(method_cfg(name))
    m["train"] = {**config["train"], **m.get("train", {})}
    return m


def run_record(dataset, task, method, fraction, seed):
    return f"results/runs/{dataset}/{task}/{method}/f{fraction:g}_s{seed}.json"


def table_cfg(name):
    if name not in config["tables"]:
        cfg_error(
            f"table '{name}' is not defined under 'tables' (defined: {sorted(config['tables'])})"
        )
    return config["tables"][name]


def table_row_methods(t):
    return [r if isinstance(r, str) else r["method"] for r in t["rows"]]


def table_records(name):
    t = table_cfg(name)
    return [
        run_record(b["dataset"], b["task"], m, float(f), int(s))
        for b in t["blocks"]
        for m in table_row_methods(t)
        for f in t["fractions"]
        for s in t["seeds"]
    ]


def target_tables():
    return config["targets"] or sorted(config["tables"])


def get_final_output():
    return [f"results/tables/{t}.md" for t in target_tables()] + get_cache_outputs()


def get_cache_outputs():
    out = []
    for t in target_tables():
        spec = table_cfg(t)
        for b in spec["blocks"]:
            for m in table_row_methods(spec):
                out.append(
                    f"{feature_dir(b['dataset'], method_cfg(m)['features'])}/manifest.json"
                )
            for sp in config["superpixels"]:
                out.append(f"{superpixel_dir(b['dataset'], sp)}/manifest.json")
    return sorted(set(out))
