"""Presets: source formats that are pure config over a generic layout.

``presets/<name>.yaml`` registers format ``<name>``::

    description: one line: which datasets, what the columns are
    format: conversations          # the reader it configures (a module format)
    options: {field: items, ...}   # that reader's options, as this preset fixes them
    params: {key: field}           # the options a recipe may give this preset -> the
                                   # (dotted) option of the reader each one sets

A recipe's options for a preset are its ``params`` only (defaults: the values the
preset's ``options`` give those targets); for any other layout use the base
format itself. A preset file that does not fit this raises SourceError naming it.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

from reprotune.io import load_yaml

from ._common import SourceError, merge_options, schema_problem

PRESET_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["description", "format"],
    "properties": {
        "description": {"type": "string", "minLength": 1},
        "format": {"type": "string", "minLength": 1},
        "options": {"type": "object"},
        "params": {"type": "object", "additionalProperties": {"type": "string", "minLength": 1}},
    },
}


def _subschema(schema: dict, path: str) -> dict | None:
    """The options schema of the (dotted) option ``path``, None if there is none."""
    for part in path.split("."):
        if part in schema.get("properties", {}):
            schema = schema["properties"][part]
        elif isinstance(schema.get("additionalProperties"), dict):
            schema = schema["additionalProperties"]
        else:
            return None
    return schema


def _lookup(options: dict, path: str) -> Any:
    for part in path.split("."):
        options = options[part]
    return options


def _assign(options: dict, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        options = options[part]
    options[last] = value


def _read_spec(path: Path, get: Callable) -> dict:
    with open(path, encoding="utf-8") as f:
        spec = load_yaml(f)
    problem = schema_problem(PRESET_SCHEMA, spec)
    if problem:
        raise SourceError(f"{path}: key {problem}")
    try:
        base = get(spec["format"])
    except KeyError as e:
        raise SourceError(f"{path}: key 'format': {e.args[0]}") from None
    if hasattr(base, "base_format") or not hasattr(base, "options_schema"):
        raise SourceError(f"{path}: key 'format': {spec['format']!r} is not a reader module with an options schema")
    return spec


def preset_reader(name: str, path: Path, get: Callable) -> Callable:
    """The reader of preset file ``path`` (``get``: the registry's look-up of its base)."""
    spec = _read_spec(path, get)
    base = get(spec["format"])
    fixed = merge_options(str(path), spec.get("options"), base.options_schema)
    params = spec.get("params") or {}
    properties = {}
    for param, target in params.items():
        sub = _subschema(base.options_schema, target)
        try:
            default = _lookup(fixed, target)
        except (KeyError, TypeError):
            sub = None
        if sub is None:
            raise SourceError(f"{path}: key 'params.{param}': {target!r} is not an option of {spec['format']!r} "
                              "set by the preset's options")
        properties[param] = {**sub, "default": default}
    schema = {"type": "object", "additionalProperties": False, "properties": properties}

    def read(files, options=None, source=None):
        opts = merge_options(name, options, schema)
        base_options = copy.deepcopy(fixed)
        for param, target in params.items():
            _assign(base_options, target, opts[param])
        return base(files, base_options, source or name)

    read.options_schema = schema
    read.base_format = spec["format"]
    read.description = spec["description"]
    return read
