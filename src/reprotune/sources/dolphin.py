"""ehartford/dolphin: jsonl rows {instruction: <system prompt>, input: <user>, output}.

instruction -> system (may be ""), input -> user, output -> assistant. Options: none.
"""
from __future__ import annotations

from . import register
from ._common import get_str, merge_options, read_rows

DEFAULTS: dict = {}
REQUIRED = ["instruction", "input", "output"]


def _convert(row: dict):
    system = get_str(row, "instruction", optional=True)
    user = get_str(row, "input")
    out = get_str(row, "output")
    return system, [{"role": "user", "content": user}, {"role": "assistant", "content": out}], None


@register("dolphin")
def read(files, options=None, source=None):
    source = source or "dolphin"
    merge_options("dolphin", options, DEFAULTS)
    return read_rows(files, source, REQUIRED, [], _convert)


read.defaults = DEFAULTS
