"""Generic conversation layout (ShareGPT style): one row per conversation, a column of turns.

Reads a JSON array, JSON lines or parquet. Options (defaults)::

    field: conversations     column holding the turns: a list of objects, or a JSON string of one
    role_key: from           key of a turn's role
    content_key: value       key of a turn's text
    roles: {human: user, gpt: assistant, system: system}
                             raw role -> user | assistant | system (replaces the default map);
                             a turn's role is stripped and lower-cased before the look-up
    id_key: null             column holding the row id (null: the row index)
    keep: {}                 {column: value or [values]}: other rows are rejects, reason <column>

A first turn mapped to ``system`` becomes the record's ``system``; a system turn
anywhere else is a reject ``system_not_first``. The remaining turns must alternate
user/assistant, starting with user and ending with assistant (rejects
``first_not_user``, ``non_alternating``, ``last_not_assistant``). Other rejects:
``missing_field`` / ``null_field`` (the column, or a turn's role/text key),
``bad_json`` (a string that does not parse), ``bad_type`` (turns not a list of
objects, a role or text that is not a string), ``unknown_role`` (a role the map
lacks), ``empty_conversation``. Keys of a turn other than role and text (e.g.
OpenHermes' ``weight``) are ignored. Parquet files are read with every column, so
that a reject shows the whole row, as for JSON.
"""
from __future__ import annotations

import json

from . import register
from ._common import (COLUMN, ID_KEY, KEEP, RowError, keep_check, merge_options, normalize_turns,
                      read_rows, role_map)

ROLE_TARGETS = ["user", "assistant", "system"]

OPTIONS: dict = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "field": {**COLUMN, "default": "conversations"},
        "role_key": {**COLUMN, "default": "from"},
        "content_key": {**COLUMN, "default": "value"},
        "roles": {"type": "object", "minProperties": 1,
                  "propertyNames": {"pattern": r"^[^A-Z\s]+$"},  # matched stripped and lower-cased
                  "additionalProperties": {"enum": ROLE_TARGETS},
                  "default": {"human": "user", "gpt": "assistant", "system": "system"}},
        "id_key": ID_KEY,
        "keep": KEEP,
    },
}


def converter(opts: dict):
    """``convert(row) -> (system, messages, None)`` for merged options ``opts``."""
    field, role_key, content_key = opts["field"], opts["role_key"], opts["content_key"]
    roles = role_map(opts["roles"])
    check = keep_check(opts["keep"])

    def convert(row: dict):
        if field not in row:
            raise RowError("missing_field")
        turns = row[field]
        if turns is None:
            raise RowError("null_field")
        if isinstance(turns, str):
            try:
                turns = json.loads(turns)
            except json.JSONDecodeError:
                raise RowError("bad_json") from None
        system, messages = normalize_turns(turns, role_key, content_key, roles)
        check(row)
        return system, messages, None

    return convert


@register("conversations")
def read(files, options=None, source=None):
    opts = merge_options("conversations", options, OPTIONS)
    optional = [c for c in [opts["id_key"], *opts["keep"]] if c]
    return read_rows(files, source or "conversations", [opts["field"]], optional, converter(opts),
                     id_key=opts["id_key"], all_columns=True)


read.options_schema = OPTIONS
