"""Source readers registry: ``format`` name -> reader function.

Three kinds of formats, one namespace (``names()``):

- generic layouts, configured by options: ``conversations`` (a column of role/content
  turns, ShareGPT style) and ``instruction`` (instruction/input/output/system columns);
- presets: ``presets/<name>.yaml``, pure config naming a generic layout and its
  options (``sharegpt``, ``tulu_v2``, ``airoboros``, ``platypus``, ``dolphin``,
  ``orca_mini``; see ``_presets.py``);
- reader modules with logic of their own: ``oasst1`` (trees), ``orca_chat``
  (input/output pairs), ``openorca`` (id prefixes), ``text`` (chunking).

A reader has the signature ``read(files, options=None, source=None)`` and yields,
in a deterministic order, either normalized records

    {"id": "<source>/<rowid>", "source": ..., "system": str,
     "messages": [{"role": "user"|"assistant", "content": str}, ...]}   (+ optional "input")

or, for plain-text formats, ``{"id", "source", "text"}``, or rejects

    {"id", "source", "reason": "<snake_case>", "row": <raw row excerpt>}.

``source`` defaults to the format name; ``options`` are validated against the
reader's ``options_schema`` (a JSON schema whose properties carry the defaults;
an unknown or invalid option raises :class:`SourceError`, one line). The recipe
schema takes the format enum and each format's options schema from here at load
(``reprotune.recipe``). A file that does not match the format at all raises
:class:`SchemaError`.

Both folders are scanned at import: every non-underscore module next to this file
(its ``@register`` runs) and every ``presets/*.yaml``; adding a format is one file.
"""
from __future__ import annotations

import copy
import importlib
import pkgutil
from pathlib import Path
from typing import Callable, Iterator

from reprotune.io import load_yaml

from ._common import SchemaError, SourceError, option_defaults
from ._presets import preset_reader

Reader = Callable[..., Iterator[dict]]

_REGISTRY: dict[str, Reader] = {}
PRESETS_DIR = Path(__file__).parent / "presets"


def register(name: str) -> Callable[[Reader], Reader]:
    """Decorator: register ``func`` as the reader for format ``name``."""

    def deco(func: Reader) -> Reader:
        if name in _REGISTRY and _REGISTRY[name] is not func:
            raise ValueError(f"source format {name!r} is already registered")
        _REGISTRY[name] = func
        func.format_name = name  # type: ignore[attr-defined]
        return func

    return deco


def get(name: str) -> Reader:
    """The reader for format ``name``; KeyError listing the known formats otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"unknown source format {name!r}; known formats: {', '.join(names())}"
        ) from None


def names() -> list[str]:
    return sorted(_REGISTRY)


def options_schema(name: str) -> dict:
    """The JSON schema of format ``name``'s options (a copy; any object for a reader without one)."""
    return copy.deepcopy(getattr(get(name), "options_schema", {"type": "object"}))


def defaults(name: str) -> dict:
    """Default options of format ``name``."""
    return option_defaults(options_schema(name))


def code_files(name: str) -> list[str]:
    """The files that define format ``name`` (rule inputs: editing them reruns its clean jobs):
    the module (and the modules it builds on), or the preset file and its base format's."""
    get(name)
    here = Path(__file__).parent
    preset = PRESETS_DIR / f"{name}.yaml"
    if preset.is_file():
        base = load_yaml(preset.read_text(encoding="utf-8"))["format"]
        return sorted({str(preset), str(here / "_presets.py"), *code_files(base)})
    module = importlib.import_module(f"{__name__}.{name}")
    deps = [m for m in vars(module).values() if getattr(m, "__name__", "").startswith(f"{__name__}.")
            and type(m) is type(module)]
    return sorted({str(here / f"{name}.py"), *(str(Path(m.__file__)) for m in deps)})


def read(fmt: str, files, options: dict | None = None, source: str | None = None) -> Iterator[dict]:
    """Convenience: ``get(fmt)(files, options, source)``."""
    return get(fmt)(files, options, source)


def _import_formats() -> None:
    for info in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def _load_presets() -> None:
    for path in sorted(PRESETS_DIR.glob("*.yaml")):
        register(path.stem)(preset_reader(path.stem, path, get))


_import_formats()
_load_presets()

__all__ = ["SchemaError", "SourceError", "register", "get", "names", "options_schema", "defaults", "read"]
