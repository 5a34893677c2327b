"""Prompt-format registry: one Jinja chat template per format.

The built-ins are the files ``chat/<name>.jinja`` of this package, found by scanning that
folder (adding a format is adding one file); each documents its format and the decisions
taken in the Jinja comment it starts with.

``get(name)`` returns a :class:`~reprotune.templates.base.Template` with
``render_segments(record, eos) -> [(text, trainable), ...]``, ``render``, ``render_prompt``
(inference prompt), ``to_messages`` and ``chat_template`` (the Jinja text, for the tokenizer).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from reprotune.templates.base import Segment, Template, is_text_record
from reprotune.templates.engine import TemplateError, TemplateSourceError, check

CHAT_DIR = Path(__file__).resolve().parent / "chat"


@lru_cache(maxsize=None)
def _builtins() -> dict[str, Template]:
    return {p.name[:-len(".jinja")]: Template(p.name[:-len(".jinja")], p.read_text(encoding="utf-8"), str(p))
            for p in sorted(CHAT_DIR.glob("*.jinja"))}


def names() -> list[str]:
    return sorted(_builtins())


def get(name: str) -> Template:
    try:
        return _builtins()[name]
    except KeyError:
        raise KeyError(f"unknown template {name!r}; known templates: {', '.join(names())}") from None


def code_files(name: str | None) -> list[str]:
    """The files that define template ``name`` (rule inputs: editing them reruns the stages that
    render it): this package's modules and the built-in's ``.jinja`` file."""
    files = sorted(str(p) for p in Path(__file__).resolve().parent.glob("*.py"))
    return files + ([get(name).origin] if name else [])


__all__ = ["Segment", "Template", "TemplateError", "TemplateSourceError", "check", "code_files", "get",
           "is_text_record", "names"]
