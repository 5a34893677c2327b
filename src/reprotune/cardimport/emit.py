"""The draft as YAML, with a ``# from: <where>`` comment on each value read from the card.

Block style for mappings; lists of scalars and small mappings in flow style; multi-line strings
as literal blocks. ``yaml.safe_load`` of the text gives back the draft's mapping (tested).
"""
from __future__ import annotations

from typing import Any

import yaml


class _Literal(yaml.SafeDumper):
    pass


def _str(dumper, value: str):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Literal.add_representer(str, _str)


def _scalar(value: Any) -> str:
    text = yaml.dump(value, Dumper=_Literal, default_flow_style=True, width=10**9, allow_unicode=True)
    return text[:-len("\n...\n")] if text.endswith("\n...\n") else text.rstrip("\n")


def _flow(value: Any) -> bool:
    if isinstance(value, list):
        return sum(len(str(v)) for v in value) < 100 and all(not isinstance(v, (dict, list)) and not (isinstance(v, str) and "\n" in v) for v in value)
    if isinstance(value, dict):
        return len(value) <= 4 and all(not isinstance(v, (dict, list, str)) or (isinstance(v, str) and len(v) < 40
                                       and "\n" not in v) for v in value.values()) and bool(value)
    return True


def _comment(where: dict, path: tuple) -> str:
    w = where.get(path)
    return f"  # from: {w}" if w else ""


def _multiline(indent: str, value: str) -> list[str]:
    lines = _scalar(value).split("\n")
    return [lines[0]] + [indent + "  " + ln if ln else "" for ln in lines[1:]]


def lines(data: dict, where: dict, path: tuple = (), indent: str = "") -> list[str]:
    out = []
    for key, value in data.items():
        p = (*path, key)
        k = _scalar(key)
        if isinstance(value, dict) and value and not (_flow(value) and p in where):
            out.append(f"{indent}{k}:{_comment(where, p)}")
            out += lines(value, where, p, indent + "  ")
        elif isinstance(value, list) and value and not _flow(value):
            out.append(f"{indent}{k}:{_comment(where, p)}")
            for item in value:
                out += _item(item, where, p, indent)
        elif isinstance(value, str) and "\n" in value:
            first, *rest = _multiline(indent, value)
            out.append(f"{indent}{k}: {first}{_comment(where, p)}")
            out += rest
        else:
            out.append(f"{indent}{k}: {_scalar(value)}{_comment(where, p)}")
    return out


def _item(item: Any, where: dict, path: tuple, indent: str) -> list[str]:
    if isinstance(item, str) and "\n" in item:
        first, *rest = _multiline(indent, item)
        return [f"{indent}  - {first}"] + rest
    if isinstance(item, dict) and not _flow(item):
        sub = lines(item, where, path, indent + "    ")
        return [f"{indent}  - {sub[0].lstrip()}"] + sub[1:]
    return [f"{indent}  - {_scalar(item)}"]


def dump(data: dict, where: dict, header: list[str]) -> str:
    return "\n".join([*(f"# {h}" if h else "#" for h in header), *lines(data, where)]) + "\n"
