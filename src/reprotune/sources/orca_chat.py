"""shahules786/orca-chat: JSON array of {instruction: <system>, conversation: [{input, output}, ...]}.

instruction -> system; each {input, output} pair -> one user turn + one assistant
turn. An empty conversation is a reject ``empty_conversation``. Options: none.
"""
from __future__ import annotations

from . import register
from ._common import RowError, get_str, merge_options, read_rows

OPTIONS: dict = {"type": "object", "additionalProperties": False, "properties": {}}
REQUIRED = ["instruction", "conversation"]


def _convert(row: dict):
    system = get_str(row, "instruction", optional=True)
    if "conversation" not in row:
        raise RowError("missing_field")
    conv = row["conversation"]
    if conv is None:
        raise RowError("null_field")
    if not isinstance(conv, list):
        raise RowError("bad_type")
    if not conv:
        raise RowError("empty_conversation")
    messages = []
    for turn in conv:
        if not isinstance(turn, dict):
            raise RowError("bad_type")
        messages.append({"role": "user", "content": get_str(turn, "input")})
        messages.append({"role": "assistant", "content": get_str(turn, "output")})
    return system, messages, None


@register("orca_chat")
def read(files, options=None, source=None):
    source = source or "orca_chat"
    merge_options("orca_chat", options, OPTIONS)
    return read_rows(files, source, REQUIRED, [], _convert)


read.options_schema = OPTIONS
