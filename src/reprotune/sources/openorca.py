"""Open-Orca/OpenOrca: parquet columns id, system_prompt, question, response.

system_prompt -> system (may be ""), question -> user, response -> assistant;
record id uses the row's ``id``. Options: ``id_prefixes`` (null = all; else a
list such as ``["cot", "niv."]``: rows whose id does not start with one of the
prefixes are rejects with reason ``id_prefix``).
"""
from __future__ import annotations

from . import register
from ._common import RowError, as_str_list, get_str, merge_options, read_rows

DEFAULTS: dict = {"id_prefixes": None}
REQUIRED = ["id", "system_prompt", "question", "response"]


@register("openorca")
def read(files, options=None, source=None):
    source = source or "openorca"
    opts = merge_options("openorca", options, DEFAULTS)
    prefixes = as_str_list(opts["id_prefixes"], "openorca", "id_prefixes")
    if prefixes is not None:
        prefixes = [p if p.endswith(".") else p + "." for p in prefixes]

    def convert(row: dict):
        system = get_str(row, "system_prompt", optional=True)
        user = get_str(row, "question")
        out = get_str(row, "response")
        if prefixes is not None:
            rid = row.get("id")
            if not isinstance(rid, str) or not rid.startswith(tuple(prefixes)):
                raise RowError("id_prefix")
        return system, [{"role": "user", "content": user}, {"role": "assistant", "content": out}], None

    return read_rows(files, source, REQUIRED, [], convert, id_key="id")


read.defaults = DEFAULTS
