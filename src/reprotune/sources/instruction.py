"""Generic instruction layout (alpaca style): one row per single-turn example, one column per part.

Reads a JSON array, JSON lines or parquet. Options (defaults)::

    instruction: instruction   column of the user turn
    input: null                column of the extra input block -> the record's "input"
                               (left out when empty or whitespace), or null
    output: output             column of the assistant turn
    system: null               column of the system prompt, or null (system "")
    id_key: null               column holding the row id (null: the row index)
    keep: {}                   {column: value or [values]}: other rows are rejects, reason <column>

The instruction and output columns must hold strings (rejects ``missing_field``,
``null_field``, ``bad_type``); the system and input columns may be missing or
null (read as ""), but not another type (``bad_type``). Columns are checked in the
order system, instruction, input, output, then ``keep``. Parquet files are read
with every column, so that a reject shows the whole row, as for JSON.
"""
from __future__ import annotations

from . import register
from ._common import COLUMN, ID_KEY, KEEP, get_str, keep_check, merge_options, read_rows

OPTIONAL_COLUMN = {"type": ["string", "null"], "minLength": 1, "default": None}

OPTIONS: dict = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "instruction": {**COLUMN, "default": "instruction"},
        "input": OPTIONAL_COLUMN,
        "output": {**COLUMN, "default": "output"},
        "system": OPTIONAL_COLUMN,
        "id_key": ID_KEY,
        "keep": KEEP,
    },
}


def converter(opts: dict, check=None):
    """``convert(row) -> (system, messages, input)`` for merged options ``opts``;
    ``check(row)`` (default: the ``keep`` check) runs last and may raise RowError."""
    system_col, user_col, input_col, output_col = opts["system"], opts["instruction"], opts["input"], opts["output"]
    check = check or keep_check(opts["keep"])

    def convert(row: dict):
        system = get_str(row, system_col, optional=True) if system_col else ""
        user = get_str(row, user_col)
        inp = get_str(row, input_col, optional=True) if input_col else None
        out = get_str(row, output_col)
        check(row)
        return system, [{"role": "user", "content": user}, {"role": "assistant", "content": out}], inp

    return convert


@register("instruction")
def read(files, options=None, source=None):
    opts = merge_options("instruction", options, OPTIONS)
    optional = [c for c in [opts["system"], opts["input"], opts["id_key"], *opts["keep"]] if c]
    return read_rows(files, source or "instruction", [opts["instruction"], opts["output"]], optional,
                     converter(opts), id_key=opts["id_key"], all_columns=True)


read.options_schema = OPTIONS
