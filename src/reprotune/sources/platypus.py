"""garage-bAInd/Open-Platypus: parquet columns input, output, instruction, data_source.

instruction -> user, input -> record "input" (only if non-empty), output -> assistant,
system "". Options: none.
"""
from __future__ import annotations

from . import register
from ._common import get_str, merge_options, read_rows

DEFAULTS: dict = {}
REQUIRED = ["instruction", "input", "output"]
OPTIONAL = ["data_source"]


def _convert(row: dict):
    user = get_str(row, "instruction")
    inp = get_str(row, "input", optional=True)
    out = get_str(row, "output")
    return "", [{"role": "user", "content": user}, {"role": "assistant", "content": out}], inp


@register("platypus")
def read(files, options=None, source=None):
    source = source or "platypus"
    merge_options("platypus", options, DEFAULTS)
    return read_rows(files, source, REQUIRED, OPTIONAL, _convert)


read.defaults = DEFAULTS
