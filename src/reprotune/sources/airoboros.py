"""jondurbin/airoboros-gpt4-*: jsonl rows {instruction, response[, category]}.

instruction -> user, response -> assistant, system "".
Options: ``category`` (null = all rows; a string or list keeps only those
categories, e.g. ``misconception``; other rows are rejects with reason ``category``).
"""
from __future__ import annotations

from . import register
from ._common import RowError, as_str_list, get_str, merge_options, read_rows

DEFAULTS: dict = {"category": None}
REQUIRED = ["instruction", "response"]
OPTIONAL = ["category"]


@register("airoboros")
def read(files, options=None, source=None):
    source = source or "airoboros"
    opts = merge_options("airoboros", options, DEFAULTS)
    keep = as_str_list(opts["category"], "airoboros", "category")

    def convert(row: dict):
        user = get_str(row, "instruction")
        out = get_str(row, "response")
        if keep is not None and row.get("category") not in keep:
            raise RowError("category")
        return "", [{"role": "user", "content": user}, {"role": "assistant", "content": out}], None

    return read_rows(files, source, REQUIRED, OPTIONAL, convert)


read.defaults = DEFAULTS
