"""Prompt-format registry: one module per template.

``get(name)`` returns a :class:`~reprotune.templates.base.Template` with
``render_segments(record, eos) -> [(text, trainable), ...]``, ``render``,
``render_prompt`` (inference prompt), ``to_messages`` and ``chat_template``.
"""
from __future__ import annotations

import importlib

from reprotune.templates.base import Segment, Template, TemplateError, is_text_record

_REGISTRY: dict[str, Template] = {}
_MODULES = ("fashiongpt", "oasst", "tulu", "orca_mini", "alpaca", "raw")


def register(template: Template) -> Template:
    if not template.name:
        raise ValueError("template has no name")
    if template.name in _REGISTRY and _REGISTRY[template.name] is not template:
        if type(_REGISTRY[template.name]) is not type(template):
            raise ValueError(f"template {template.name!r} registered twice")
    _REGISTRY[template.name] = template
    return template


def _load_all() -> None:
    for mod in _MODULES:
        importlib.import_module(f"{__name__}.{mod}")


def names() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get(name: str) -> Template:
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown template {name!r}; known templates: {', '.join(sorted(_REGISTRY))}") from None


__all__ = ["Segment", "Template", "TemplateError", "get", "is_text_record", "names", "register"]
