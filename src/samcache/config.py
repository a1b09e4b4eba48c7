"""Configuration checks and their messages.

``snakemake.utils.validate`` raises a ``WorkflowError`` whose text is jsonschema's report. This
module turns the underlying ``ValidationError`` into one line that names the offending key as a
dotted path (``train.epochs``), says what is wrong and how to fix it; and it checks what a
schema cannot: keys given twice in a YAML file, references between sections (a method's feature
set and taps, a table's methods), repeated entries, and a head's arguments against the head.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from jsonschema.exceptions import ValidationError, best_match


def _find_validation_error(err: BaseException) -> ValidationError | None:
    seen: set[int] = set()
    stack: list[BaseException | None] = [err]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ValidationError):
            return e
        stack += [e.__cause__, e.__context__]
        stack += [a for a in getattr(e, "args", ()) if isinstance(a, BaseException)]
    return None


def dotted(path: Iterable[object]) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def describe(err: ValidationError) -> str:
    if err.context:  # oneOf/anyOf: report the branch of the instance's own type
        same_type = [e for e in err.context if e.validator != "type"]
        err = best_match(same_type or err.context)
    where = dotted(err.absolute_path)
    if err.validator == "additionalProperties":
        extra = re.findall(r"'([^']+)' (?:was|were) unexpected", err.message)
        names = extra or re.findall(r"'([^']+)'", err.message.split("(")[-1])
        allowed = sorted(err.schema.get("properties", {}))
        keys = ", ".join(f"'{dotted([*err.absolute_path, n])}'" for n in names)
        return f"unknown key {keys}: not a setting here; allowed at {where}: {', '.join(allowed)}"
    if err.validator == "propertyNames":
        return f"invalid name under '{where}': {err.message}"
    if err.validator == "not" and "description" in err.schema:  # a key refused in this context
        return f"'{where}': {err.schema['description']}"
    if err.validator == "required":
        return f"'{where}' is missing a required key: {err.message}"
    return f"'{where}': {err.message}"


def config_error_message(err: BaseException) -> str:
    ve = _find_validation_error(err)
    if ve is None:
        return f"invalid configuration: {err}"
    return (
        f"invalid configuration: {describe(ve)}. Fix it in config.yaml (or the --configfile/--config "
        "that sets it); workflow/schemas/config.schema.yaml documents every key."
    )


# --- checks that a JSON schema cannot express ---------------------------------------------

#: The workflow's configuration schema (the checkout's; the package runs from its checkout).
SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
_TAP = re.compile(r"^(patch_embed|neck|block:[1-9][0-9]*)$")


class ConfigError(ValueError):
    """A configuration mistake; the message names the key (or file and line) and the fix."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (PyYAML silently keeps the last).

    Keys brought in by a ``<<:`` merge may be overridden: that is what merges are for.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False):  # type: ignore[override]
        seen: dict[object, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise ConfigError(
                    f"{key_node.start_mark.name}, line {key_node.start_mark.line + 1}: key "
                    f"'{key}' is given twice in one mapping (first on line {seen[key].line + 1}); "
                    "YAML keeps only one of them. Remove or rename one."
                )
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep)


def check_unique_keys(path: str | Path) -> None:
    """Raise ``ConfigError`` if a YAML (or JSON) config file gives a key twice in one mapping."""
    with open(path) as fh:
        yaml.load(fh, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


@functools.cache
def config_schema() -> dict[str, Any]:
    if not SCHEMA_PATH.is_file():
        raise FileNotFoundError(
            f"{SCHEMA_PATH}: samcache's config schema is missing; run samcache from its checkout"
        )
    return yaml.safe_load(SCHEMA_PATH.read_text())


def validate_method(spec: Mapping[str, Any], where: str) -> None:
    """Check one method's settings (resolved or not) against the config schema's definition."""
    from jsonschema import Draft202012Validator

    schema = config_schema()
    sub = {"$defs": schema["$defs"], **schema["properties"]["methods"]["additionalProperties"]}
    error = best_match(Draft202012Validator(sub).iter_errors(spec))
    if error is not None:
        raise ConfigError(f"{where}: {describe(error)}")


def _tap_names(taps: Sequence[str | Mapping[str, Any]]) -> list[str]:
    return [t if isinstance(t, str) else t["name"] for t in taps]


def _named_taps(value: Any) -> list[str]:
    """Tap names among a head argument's values (a name, or a list of names)."""
    values = value if isinstance(value, list) else [value]
    return [v for v in values if isinstance(v, str) and _TAP.match(v)]


def check_config(config: Mapping[str, Any]) -> None:
    """What the schema cannot say: references between sections, taps against encoders, and
    repeated entries. Raises ``ConfigError`` naming the key; imports no torch."""
    from samcache.features.specs import encoder_spec, parse_taps

    for name, fs in config["feature_sets"].items():  # taps only: weights are checked when used
        try:
            encoder = encoder_spec(fs["encoder"])
            for tap in parse_taps(fs["taps"], fs.get("grid"), fs.get("dtype", "float16")):
                tap.validate(encoder)
        except (ValueError, KeyError) as err:
            raise ConfigError(f"feature_sets.{name}: {err.args[0]}") from None
    for name, t in config["tables"].items():
        rows = [r if isinstance(r, str) else r["method"] for r in t["rows"]]
        for key, values in (
            ("rows", rows),
            ("blocks", [(b["dataset"], b["task"]) for b in t["blocks"]]),
        ):
            repeated = sorted({str(v) for v in values if values.count(v) > 1})
            if repeated:
                raise ConfigError(f"tables.{name}.{key}: {repeated} listed more than once")
        if t.get("kind") == "dataset_statistics":  # rows are classes, checked against the store
            continue
        undefined = sorted(set(rows) - set(config["methods"]))
        if undefined:
            raise ConfigError(
                f"tables.{name}.rows: methods {undefined} are not defined under 'methods'"
            )


def check_method(name: str, config: Mapping[str, Any]) -> None:
    """One method against the rest of the config: the sections it names, the taps it reads
    (stored by its feature set, named by its head arguments), its head and the head's
    arguments. The workflow asks it of each method a planned run uses; it imports the heads."""
    m, where = config["methods"][name], f"methods.{name}"
    feature_taps = {n: _tap_names(fs["taps"]) for n, fs in config["feature_sets"].items()}
    sections = (("features", "feature_sets"), ("sam_prior", "sam_priors"))
    for key, section in (*sections, ("superpixels", "superpixels")):
        if m.get(key) and m[key] not in config[section]:
            raise ConfigError(
                f"{where}.{key}: '{m[key]}' is not defined under '{section}' "
                f"(defined: {sorted(config[section])})"
            )
    available = feature_taps.get(m.get("features"), [])
    taps = list(m.get("taps") or available)
    if m.get("taps") and not m.get("features"):
        raise ConfigError(f"{where}.taps: the method reads no feature set ('features' is not set)")
    missing = [t for t in taps if t not in available]
    if missing:
        raise ConfigError(
            f"{where}.taps: {missing} are not in feature set '{m['features']}', which stores "
            f"{available}; add them there or read other taps"
        )
    repeated = sorted({t for t in taps if taps.count(t) > 1})
    if repeated:
        raise ConfigError(f"{where}.taps: {repeated} listed more than once")
    for arg, value in (m.get("head_args") or {}).items():
        unread = [t for t in _named_taps(value) if t not in taps]
        if unread:
            raise ConfigError(
                f"{where}.head_args.{arg}: names taps {unread} that the method does not read "
                f"(it reads {taps})"
            )
    check_head(m, where)


def check_head(m: Mapping[str, Any], where: str) -> None:
    """The method's head is registered and accepts its ``head_args`` (imports the heads)."""
    from samcache.heads import HEADS
    from samcache.heads.base import head_arguments

    if m["head"] not in HEADS:
        raise ConfigError(
            f"{where}.head: '{m['head']}' is not a registered head; known: {sorted(HEADS)}"
        )
    accepted = head_arguments(m["head"])
    unknown = sorted(set(m.get("head_args") or {}) - accepted)
    if unknown:
        raise ConfigError(
            f"{where}.head_args: {unknown} are not settings of head '{m['head']}'; it takes "
            f"{sorted(accepted)}"
        )
