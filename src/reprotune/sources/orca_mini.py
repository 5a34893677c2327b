"""psmathur/*_orca (orca_mini): JSON arrays of {system, instruction, input, output}.

system -> system, instruction -> user, input -> record "input" (only if non-empty),
output -> assistant. Options: none.
"""
from __future__ import annotations

from . import register
from ._common import get_str, merge_options, read_rows

DEFAULTS: dict = {}
REQUIRED = ["system", "instruction", "input", "output"]


def _convert(row: dict):
    system = get_str(row, "system", optional=True)
    user = get_str(row, "instruction")
    inp = get_str(row, "input", optional=True)
    out = get_str(row, "output")
    return system, [{"role": "user", "content": user}, {"role": "assistant", "content": out}], inp


@register("orca_mini")
def read(files, options=None, source=None):
    source = source or "orca_mini"
    merge_options("orca_mini", options, DEFAULTS)
    return read_rows(files, source, REQUIRED, [], _convert)


read.defaults = DEFAULTS
