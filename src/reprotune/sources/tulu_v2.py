"""allenai/tulu-v2-sft-mixture: parquet columns dataset, id, messages [{role, content}].

A first ``system`` message -> ``system``; the rest must alternate user/assistant,
starting with user and ending with assistant (else reject). Record id uses the
row's ``id``. Options: none.
"""
from __future__ import annotations

from . import register
from ._common import RowError, merge_options, normalize_turns, read_rows

DEFAULTS: dict = {}
REQUIRED = ["id", "messages"]
OPTIONAL = ["dataset"]


def _convert(row: dict):
    if "messages" not in row:
        raise RowError("missing_field")
    if row["messages"] is None:
        raise RowError("null_field")
    system, messages = normalize_turns(row["messages"], "role", "content")
    return system, messages, None


@register("tulu_v2")
def read(files, options=None, source=None):
    source = source or "tulu_v2"
    merge_options("tulu_v2", options, DEFAULTS)
    return read_rows(files, source, REQUIRED, OPTIONAL, _convert, id_key="id")


read.defaults = DEFAULTS
