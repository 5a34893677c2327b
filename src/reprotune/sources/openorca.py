"""Open-Orca/OpenOrca: parquet columns id, system_prompt, question, response.

The ``instruction`` layout with system_prompt -> system (may be ""), question ->
user, response -> assistant, record id from the row's ``id``; all four columns are
required. Its own logic: option ``id_prefixes`` (null = all; else a list such as
``["cot", "niv."]``: OpenOrca ids are ``<submix>.<n>``, so a prefix without the dot
gets one; rows whose id does not start with one of the prefixes are rejects with
reason ``id_prefix``).
"""
from __future__ import annotations

from . import instruction, register
from ._common import STR_LIST_OR_NULL, RowError, as_str_list, merge_options, option_defaults, read_rows

OPTIONS: dict = {"type": "object", "additionalProperties": False,
                 "properties": {"id_prefixes": {**STR_LIST_OR_NULL, "default": None}}}
LAYOUT = {"system": "system_prompt", "instruction": "question", "output": "response", "id_key": "id"}
REQUIRED = ["id", "system_prompt", "question", "response"]


def prefix_check(prefixes: list[str] | None):
    """Row check: the row's id starts with one of ``prefixes`` (None: every row)."""
    if prefixes is not None:
        prefixes = tuple(p if p.endswith(".") else p + "." for p in prefixes)

    def check(row: dict) -> None:
        rid = row.get("id")
        if prefixes is not None and not (isinstance(rid, str) and rid.startswith(prefixes)):
            raise RowError("id_prefix")

    return check


@register("openorca")
def read(files, options=None, source=None):
    opts = merge_options("openorca", options, OPTIONS)
    layout = {**option_defaults(instruction.OPTIONS), **LAYOUT}
    convert = instruction.converter(layout, prefix_check(as_str_list(opts["id_prefixes"])))
    return read_rows(files, source or "openorca", REQUIRED, [], convert, id_key="id")


read.options_schema = OPTIONS
