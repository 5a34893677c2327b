"""Prompt-format registry: one Jinja chat template per format.

The built-ins are the files ``chat/<name>.jinja`` of this package, found by scanning that
folder (adding a format is adding one file); each documents its format and the decisions
taken in the Jinja comment it starts with. A recipe may carry its own template instead:
``template: {name: <id>, chat_template: <Jinja text>}`` or ``{name: <id>, path: <.jinja file,
relative to the recipe>}`` (:func:`resolve` checks it and reads the file, so what the stages
get is self-contained).

``get(name_or_mapping)`` returns a :class:`~reprotune.templates.base.Template` with
``render_segments(record, eos) -> [(text, trainable), ...]``, ``render``, ``render_prompt``
(inference prompt), ``to_messages`` and ``chat_template`` (the Jinja text, for the tokenizer).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from reprotune.templates.base import Segment, Template, is_text_record
from reprotune.templates.engine import TemplateError, TemplateSourceError, check

CHAT_DIR = Path(__file__).resolve().parent / "chat"


class TemplateSpecError(ValueError):
    """A recipe's ``template`` value is not usable; ``key`` is the sub-key at fault ('' or '.path' ...)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


@lru_cache(maxsize=None)
def _builtins() -> dict[str, Template]:
    return {p.name[:-len(".jinja")]: Template(p.name[:-len(".jinja")], p.read_text(encoding="utf-8"), str(p))
            for p in sorted(CHAT_DIR.glob("*.jinja"))}


def names() -> list[str]:
    return sorted(_builtins())


def get(spec: str | dict) -> Template:
    """A built-in by name, or a recipe's own template (a mapping, see :func:`resolve`)."""
    if isinstance(spec, str):
        try:
            return _builtins()[spec]
        except KeyError:
            raise KeyError(f"unknown template {spec!r}; known templates: {', '.join(names())}") from None
    spec = resolve(spec)
    return _custom(spec["name"], spec["chat_template"])


@lru_cache(maxsize=64)
def _custom(name: str, source: str) -> Template:
    return Template(name, source)


def resolve(value: str | dict, base_dir: str | Path = ".") -> str | dict:
    """A recipe's ``template`` value, checked and self-contained: a built-in's name as is, a
    mapping as ``{name, chat_template}`` (a ``path``, relative to ``base_dir``, read). Raises
    TemplateSpecError (one line; ``.key`` names the sub-key)."""
    if isinstance(value, str):
        if value not in _builtins():
            raise TemplateSpecError("", f"{value!r} is not allowed (expected a built-in template: "
                                        f"{', '.join(names())}; or a mapping {{name, chat_template or path}})")
        return value
    if value.get("name") in _builtins():
        raise TemplateSpecError(".name", f"{value['name']!r} is a built-in template: a recipe's own template "
                                         "needs a name of its own")
    if ("chat_template" in value) == ("path" in value):
        raise TemplateSpecError("", "give either 'chat_template' or 'path', not both" if "path" in value else
                                "needs 'chat_template' (the Jinja text) or 'path' (a .jinja file, relative to "
                                "the recipe)")
    key, source = (".chat_template", value["chat_template"]) if "path" not in value else \
        (".path", _read(Path(base_dir), value["path"]))
    try:
        check(source)
    except TemplateSourceError as e:
        where = f"{value['path']}: " if "path" in value else ""
        raise TemplateSpecError(key, f"{where}{e}") from None
    return {"name": value["name"], "chat_template": source}


def _read(base_dir: Path, rel: str) -> str:
    path = base_dir / rel
    if not path.is_file():
        raise TemplateSpecError(".path", f"no such file {rel!r} (relative to {base_dir})")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TemplateSpecError(".path", f"cannot read {rel!r}: {e}") from None


def code_files(spec: str | dict | None) -> list[str]:
    """The files that define template ``spec`` (rule inputs: editing them reruns the stages that
    render it): this package's modules and, for a built-in, its ``.jinja`` file. A recipe's own
    template is not a file here: its text travels in the stage's spec."""
    files = sorted(str(p) for p in Path(__file__).resolve().parent.glob("*.py"))
    return files + ([get(spec).origin] if isinstance(spec, str) else [])


__all__ = ["Segment", "Template", "TemplateError", "TemplateSourceError", "TemplateSpecError", "check", "code_files",
           "get", "is_text_record", "names", "resolve"]
