"""Readable messages for configuration errors.

``snakemake.utils.validate`` raises a ``WorkflowError`` whose text is jsonschema's report. This
module turns the underlying ``ValidationError`` into one line that names the offending key as a
dotted path (``train.epochs``), says what is wrong and how to fix it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

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
