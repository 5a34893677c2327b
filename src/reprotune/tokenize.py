"""Templated tokenization with assistant-only labels.

``encode`` renders a record with its template into ``(text, trainable)`` segments,
tokenizes the concatenated text ONCE (bos added by the tokenizer) with
``return_offsets_mapping=True`` and keeps a token's label only when its character
span ``[start, end)`` lies inside one trainable segment.  Everything else
(bos, system prompt, user turns, role headers, separators) gets ``-100``.

Tokenizing once means the ids are exactly those the model sees at inference for
the same text (no per-segment tokenization seams).  The price: a token whose span
straddles a segment boundary is masked; with byte-level BPE this only happens when
an answer starts with punctuation glued to punctuation at the end of its header
(e.g. ``<|assistant|>`` + ``(yes)``), and then only that one token loses its label.

Truncation keeps the first ``max_length`` tokens; a record with no trainable
token left is dropped (``None``) and counted by ``encode_dataset``.
"""
from __future__ import annotations

import bisect
from typing import Any, Iterable

from reprotune.templates import Template, TemplateError

IGNORE_INDEX = -100


def _trainable_spans(segments: list[tuple[str, bool]]) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    pos = 0
    for text, trainable in segments:
        end = pos + len(text)
        if trainable and end > pos:
            if spans and spans[-1][1] == pos:
                spans[-1] = (spans[-1][0], end)
            else:
                spans.append((pos, end))
        pos = end
    return spans


def _inside(spans: list[tuple[int, int]], starts: list[int], start: int, end: int) -> bool:
    if end <= start:
        return False  # zero-width tokens (bos/eos added by the post-processor)
    i = bisect.bisect_right(starts, start) - 1
    return i >= 0 and spans[i][0] <= start and end <= spans[i][1]


def encode_full(record: dict, template: Template, tokenizer, max_length: int) -> dict[str, Any]:
    """Like :func:`encode` but never drops; also returns ``truncated`` and ``text``."""
    segments = template.render_segments(record, tokenizer.eos_token)
    text = "".join(t for t, _ in segments)
    spans = _trainable_spans(segments)
    starts = [s for s, _ in spans]
    enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True, truncation=False)
    ids = list(enc["input_ids"])
    offsets = enc["offset_mapping"]
    labels = [tid if _inside(spans, starts, int(s), int(e)) else IGNORE_INDEX for tid, (s, e) in zip(ids, offsets)]
    truncated = len(ids) > max_length
    if truncated:
        ids, labels = ids[:max_length], labels[:max_length]
    return {
        "input_ids": ids,
        "attention_mask": [1] * len(ids),
        "labels": labels,
        "truncated": truncated,
        "text": text,
    }


def encode(record: dict, template: Template, tokenizer, max_length: int) -> dict | None:
    """``{"input_ids", "attention_mask", "labels"}`` for one record, or ``None`` when
    no trainable token survives truncation.  Raises ``TemplateError`` for records the
    template cannot render."""
    if max_length < 2:
        raise ValueError("max_length must be at least 2")
    out = encode_full(record, template, tokenizer, max_length)
    # label 0 is never a target (nothing precedes it), so it does not count
    if all(label == IGNORE_INDEX for label in out["labels"][1:]):
        return None
    return {k: out[k] for k in ("input_ids", "attention_mask", "labels")}


def encode_dataset(
    records: Iterable[dict], template: Template, tokenizer, max_length: int
) -> tuple[list[dict], dict[str, int]]:
    """Encode every record; returns ``(rows, stats)``.

    ``stats``: ``records`` (seen), ``kept``, ``dropped_no_trainable`` (nothing left to
    train on after truncation), ``dropped_template`` (template cannot render it, e.g.
    multi-turn into a single-turn format), ``truncated`` (kept but cut), ``tokens``
    and ``trainable_tokens`` of the kept rows.  Row order is preserved.
    """
    rows: list[dict] = []
    stats = {
        "records": 0,
        "kept": 0,
        "dropped_no_trainable": 0,
        "dropped_template": 0,
        "truncated": 0,
        "tokens": 0,
        "trainable_tokens": 0,
    }
    for record in records:
        stats["records"] += 1
        try:
            full = encode_full(record, template, tokenizer, max_length)
        except TemplateError:
            stats["dropped_template"] += 1
            continue
        n_train = sum(1 for label in full["labels"][1:] if label != IGNORE_INDEX)
        if n_train == 0:
            stats["dropped_no_trainable"] += 1
            continue
        stats["kept"] += 1
        stats["truncated"] += int(full["truncated"])
        stats["tokens"] += len(full["input_ids"])
        stats["trainable_tokens"] += n_train
        rows.append({k: full[k] for k in ("input_ids", "attention_mask", "labels")})
    return rows, stats
