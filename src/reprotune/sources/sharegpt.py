"""ShareGPT-style conversations: rows {<key>: [{"from": "human"|"gpt"|"system", "value"}]}.

Covers ehartford/samantha-data (key ``conversations``), openchat_sharegpt4
(key ``items``) and LDJnr/Puffin (``conversations``, sometimes a JSON-encoded
string, which is parsed). Roles human/user/prompter -> user, gpt/assistant/chatgpt
-> assistant; a leading system turn -> ``system``. Turn-order violations are
rejects (``first_not_user``, ``non_alternating``, ``last_not_assistant``).
Options: ``key`` (default "conversations"), ``id_key`` (default "id"; rows without
a usable id use their index).
"""
from __future__ import annotations

import json

from . import register
from ._common import RowError, merge_options, normalize_turns, read_rows

DEFAULTS: dict = {"key": "conversations", "id_key": "id"}


@register("sharegpt")
def read(files, options=None, source=None):
    source = source or "sharegpt"
    opts = merge_options("sharegpt", options, DEFAULTS)
    key = opts["key"]
    if not isinstance(key, str) or not key:
        raise ValueError("sharegpt: option 'key' must be a non-empty string")

    def convert(row: dict):
        if key not in row:
            raise RowError("missing_field")
        turns = row[key]
        if turns is None:
            raise RowError("null_field")
        if isinstance(turns, str):
            try:
                turns = json.loads(turns)
            except json.JSONDecodeError:
                raise RowError("bad_json") from None
        system, messages = normalize_turns(turns, "from", "value")
        return system, messages, None

    return read_rows(files, source, [key], [opts["id_key"]] if opts["id_key"] else [], convert,
                     id_key=opts["id_key"])


read.defaults = DEFAULTS
