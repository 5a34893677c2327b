"""Source readers registry: ``format`` name -> reader function.

A reader has the signature ``read(files, options=None, source=None)`` and yields,
in a deterministic order, either normalized records

    {"id": "<source>/<rowid>", "source": ..., "system": str,
     "messages": [{"role": "user"|"assistant", "content": str}, ...]}   (+ optional "input")

or, for plain-text formats, ``{"id", "source", "text"}``, or rejects

    {"id", "source", "reason": "<snake_case>", "row": <raw row excerpt>}.

``source`` defaults to the format name; ``options`` are validated against the
reader's ``defaults`` (unknown option -> ValueError). A file that does not match
the format at all raises :class:`SchemaError`.

One module per format lives next to this file; every non-underscore module is
imported here so that its ``@register`` runs.
"""
from __future__ import annotations

import copy
import importlib
import pkgutil
from pathlib import Path
from typing import Callable, Iterator

from ._common import SchemaError

Reader = Callable[..., Iterator[dict]]

_REGISTRY: dict[str, Reader] = {}


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


def defaults(name: str) -> dict:
    """Default options of format ``name`` (a copy)."""
    return copy.deepcopy(getattr(get(name), "defaults", {}))


def read(fmt: str, files, options: dict | None = None, source: str | None = None) -> Iterator[dict]:
    """Convenience: ``get(fmt)(files, options, source)``."""
    return get(fmt)(files, options, source)


def _import_formats() -> None:
    for info in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_import_formats()

__all__ = ["SchemaError", "register", "get", "names", "defaults", "read"]
