"""Plain-text language-modelling sources (RedPajama samples, fanfics).

Rows of .jsonl / .json / .parquet files with a text field; each output is
``{"id", "source", "text"}`` (the ``raw`` template, loss on every token).
Options: ``text_field`` (default "text"); ``max_chunk_size`` (default null = one
record per row; else an int: texts longer than that many characters are split on
paragraph, then line, then word boundaries into chunks of at most that size, one
record per chunk with id ``<source>/<row>-<k>``). Whitespace-only texts are
rejects ``empty_text``.
"""
from __future__ import annotations

import re
from typing import Iterator

from . import register
from ._common import RowError, UniqueIds, get_str, iter_rows, merge_options, reject, sorted_files

OPTIONS: dict = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "text_field": {"type": "string", "minLength": 1, "default": "text"},
        "max_chunk_size": {"type": ["integer", "null"], "minimum": 1, "default": None},
    },
}

_WS = re.compile(r"\s")


def _cut_point(window: str) -> int:
    """Where to end a chunk inside ``window`` (the next max_chunk_size characters):
    the last paragraph break, else line break, else whitespace in the second half
    of the window if there is one; else a hard cut at the window's end."""
    half = len(window) // 2
    for sep in ("\n\n", "\n"):
        i = window.rfind(sep)
        if i >= half:
            return i
    for i in range(len(window) - 1, half - 1, -1):
        if window[i].isspace():
            return i
    # no boundary in the second half: any whitespace at all, else a hard cut
    for i in range(half - 1, 0, -1):
        if window[i].isspace():
            return i
    return len(window)


def chunk_text(text: str, max_chunk_size: int) -> list[str]:
    """Split ``text`` into stripped chunks of at most ``max_chunk_size`` characters.

    Only whitespace is ever dropped (around cut points), so the chunks joined
    back equal the text modulo whitespace."""
    if max_chunk_size < 1:
        raise ValueError("max_chunk_size must be >= 1")
    chunks: list[str] = []
    pos, n = 0, len(text)
    while pos < n:
        while pos < n and text[pos].isspace():
            pos += 1
        if pos >= n:
            break
        if n - pos <= max_chunk_size:
            cut = n
        else:
            cut = pos + _cut_point(text[pos:pos + max_chunk_size])
        chunk = text[pos:cut].strip()
        if chunk:
            chunks.append(chunk)
        pos = cut
    return chunks


@register("text")
def read(files, options=None, source=None) -> Iterator[dict]:
    source = source or "text"
    opts = merge_options("text", options, OPTIONS)
    field = opts["text_field"]
    size = None if opts["max_chunk_size"] is None else int(opts["max_chunk_size"])  # the schema allows 5.0
    ids = UniqueIds()
    index = -1
    for path in sorted_files(files):
        for row in iter_rows(path, [field]):
            index += 1
            rid = ids(index)
            if isinstance(row, RowError):
                yield reject(source, rid, row.reason, getattr(row, "raw", None))
                continue
            if not isinstance(row, dict):
                yield reject(source, rid, "bad_type", row)
                continue
            try:
                text = get_str(row, field)
            except RowError as e:
                yield reject(source, rid, e.reason, row)
                continue
            if not text.strip():
                yield reject(source, rid, "empty_text", row)
                continue
            if size is None:
                yield {"id": f"{source}/{rid}", "source": source, "text": text}
                continue
            for k, chunk in enumerate(chunk_text(text, size)):
                yield {"id": f"{source}/{rid}-{k}", "source": source, "text": chunk}


read.options_schema = OPTIONS
