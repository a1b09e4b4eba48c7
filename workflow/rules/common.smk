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


def method_feature_manifest(dataset, method):
    """The manifest of the feature cache a method reads; [] when its head reads none."""
    fset = method_cfg(method).get("features")
    return [f"{feature_dir(dataset, fset)}/manifest.json"] if fset else []


def feature_args(manifests):
    """`samcache train` options naming the feature store and its cache key, if any."""
    manifests = [manifests] if isinstance(manifests, str) else list(manifests)
    if not manifests:
        return ""
    cache = Path(manifests[0]).parent
    return f"--features {cache / 'features.zarr'} --expect-key {cache.name.rsplit('-', 1)[1]}"


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
                out += method_feature_manifest(b["dataset"], m)
            for sp in config["superpixels"]:
                out.append(f"{superpixel_dir(b['dataset'], sp)}/manifest.json")
    return sorted(set(out))
