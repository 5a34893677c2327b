"""Templated tokenization with assistant-only labels, and packing (``pack``).

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
import gc
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


def _start(offset) -> int:
    return offset[0]


def _end(offset) -> int:
    return offset[1]


class _EncodingOffsets:
    """``offsets[i]`` of one ``tokenizers.Encoding`` without building its offsets list.

    ``Encoding.offsets`` makes a Python tuple for every token; the label runs only
    need the few tokens a bisection probes (about 2 log2(n) per span), which
    ``token_to_chars(i)`` reads one at a time from the same offsets vector. Tokens
    added by the post-processor (bos) belong to no sequence and have no
    ``token_to_chars``; for them the full list is read (once per encoding), so every
    item is exactly ``Encoding.offsets[i]``.
    """

    __slots__ = ("_enc", "_all")

    def __init__(self, enc):
        self._enc = enc
        self._all = None

    def __len__(self) -> int:
        return len(self._enc)

    def __getitem__(self, i: int) -> tuple[int, int]:
        o = self._enc.token_to_chars(i)
        if o is None:
            if self._all is None:
                self._all = self._enc.offsets
            o = self._all[i]
        return o


def _labels(ids, offsets, spans: list[tuple[int, int]]) -> list[int]:
    """Per-token labels, the same as testing each token with ``_inside``, without a
    Python loop over the tokens.

    Offsets of a left-to-right tokenizer never go backwards, so the tokens lying
    inside one trainable span ``[s, e)`` are one contiguous run, found by bisection:
    from the first token starting at or after ``s`` to the last ending at or before
    ``e``. The only zero-width tokens are those the post-processor adds, with offsets
    ``(0, 0)``; they are never targets. Leading ones (bos) keep the offsets ordered and
    can only open a run, whose first token is then masked; trailing ones (eos, on
    tokenizers that append it) would break the order, so the bisection stops before
    them. ``offsets`` is any sequence of ``(start, end)`` (a list, or an
    :class:`_EncodingOffsets`: only the probed tokens are read, a few per span).
    Checked against ``encode`` in the tests.
    """
    n = len(ids)
    labels = [IGNORE_INDEX] * n
    end = n
    while end > 0:
        s0, e0 = offsets[end - 1]
        if e0 > s0:
            break
        end -= 1  # a zero-width token appended by the post-processor
    for s, e in spans:
        lo = bisect.bisect_left(offsets, s, 0, end, key=_start)
        hi = bisect.bisect_right(offsets, e, lo, end, key=_end)
        if hi > lo:
            labels[lo:hi] = ids[lo:hi]
            if offsets[lo][1] <= offsets[lo][0]:  # a zero-width special token at the run's start
                labels[lo] = IGNORE_INDEX
    return labels


def _labels_encoding(ids: list[int], enc, spans: list[tuple[int, int]]) -> list[int]:
    """:func:`_labels` for a ``tokenizers.Encoding``, locating each run from the tokens
    at its two ends (:func:`_run_from_ends`) instead of bisecting; whenever that cannot
    vouch for a run, or the encoding ends with a zero-width token the post-processor
    appended (eos), the row goes through :func:`_labels` instead. Six or so token
    lookups per span.
    """
    n = len(ids)
    last = enc.token_to_chars(n - 1) if n else None
    if last is not None and last[1] > last[0]:
        labels = [IGNORE_INDEX] * n
        for s, e in spans:
            run = _run_from_ends(enc, n, s, e)
            if run is None:
                break
            lo, hi = run
            labels[lo:hi] = ids[lo:hi]
        else:
            return labels
    return _labels(ids, _EncodingOffsets(enc), spans)


def _run_from_ends(enc, n: int, s: int, e: int) -> tuple[int, int] | None:
    """The tokens ``[lo, hi)`` lying inside the span ``[s, e)`` of an encoding of ``n``
    tokens, or None when the ends alone cannot tell.

    ``char_to_token(s)`` is the token holding the span's first character: the run
    starts there, or at the next token when ``s`` falls inside it; the run ends with
    the token holding the span's last character, or just before it when that token
    runs past the span. Each end is then checked against its neighbour (starts before
    ``s`` / ends after ``e``), the same partition the bisection of :func:`_labels`
    finds. None when a check fails, the span is empty, or a special token (no
    ``token_to_chars``: bos before a run that starts at 0) is in the way.
    """
    at, to_token = enc.token_to_chars, enc.char_to_token
    if e <= s:
        return None
    c = to_token(s)
    o = at(c) if c is not None else None
    if o is None:
        return None
    if o[0] < s:  # s inside token c: the run starts after it
        lo = c + 1
        if lo < n:
            q = at(lo)
            if q is None or q[0] < s:
                return None
    else:
        lo = c
        if c:
            q = at(c - 1)
            if q is None or q[0] >= s:
                return None
    c = to_token(e - 1)
    o = at(c) if c is not None else None
    if o is None:
        return None
    if o[1] > e:  # token c runs past the span: the run ends before it
        hi = c
        if hi > lo:
            q = at(c - 1)
            if q is None or q[1] > e:
                return None
    else:
        hi = c + 1
        if hi < n:
            q = at(hi)
            if q is None or q[1] <= e:
                return None
    if hi > lo:
        q = at(lo)
        if q is None or q[1] <= q[0]:
            return None
    return lo, hi


def encode_dataset(
    records: Iterable[dict], template: Template, tokenizer, max_length: int, batch_size: int = 1000
) -> tuple[list[dict], dict[str, int]]:
    """Encode every record; returns ``(rows, stats)``.

    Same rows as calling :func:`encode` per record, but the (Rust) tokenizer is called
    once per ``batch_size`` records and each label mask is found from a few tokens per
    trainable span (:func:`_labels_encoding`: the tokens at the span's ends; a bisection
    over probed offsets where those cannot tell), never from every token's offsets, so
    the data path runs close to raw ``tokenizer(batch)`` speed
    (``bench/data_prep.py``).

    ``stats``: ``records`` (seen), ``kept``, ``dropped_no_trainable`` (nothing left to
    train on after truncation), ``dropped_template`` (template cannot render it, e.g.
    multi-turn into a single-turn format), ``truncated`` (kept but cut), ``tokens``
    and ``trainable_tokens`` of the kept rows.  Row order is preserved.
    """
    if max_length < 2:
        raise ValueError("max_length must be at least 2")
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
    eos = tokenizer.eos_token
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # plain full-length encodings, as ``encode`` asks for (truncation happens below)
        if backend.truncation is not None:
            backend.no_truncation()
        if backend.padding is not None:
            backend.no_padding()

    def flush(texts: list[str], spans_list: list[list[tuple[int, int]]]) -> None:
        if not texts:
            return
        if backend is not None:  # the Rust tokenizer directly: no Python-side BatchEncoding
            labelled = []
            for e, spans in zip(backend.encode_batch(texts, add_special_tokens=True), spans_list):
                ids = e.ids  # a fresh list: the row keeps it
                labelled.append((ids, _labels_encoding(ids, e, spans)))
        else:
            enc = tokenizer(texts, add_special_tokens=True, return_offsets_mapping=True, truncation=False)
            labelled = [(list(ids), _labels(ids, offsets, spans))
                        for ids, offsets, spans in zip(enc["input_ids"], enc["offset_mapping"], spans_list)]
        kept = truncated_rows = tokens = trainable = dropped = 0
        for ids, labels in labelled:
            truncated = len(ids) > max_length
            if truncated:
                ids, labels = ids[:max_length], labels[:max_length]
            # trainable labels after position 0 (label 0 is never a target), counted in C
            n_train = len(labels) - labels.count(IGNORE_INDEX) - (bool(labels) and labels[0] != IGNORE_INDEX)
            if n_train == 0:
                dropped += 1
                continue
            kept += 1
            truncated_rows += truncated
            tokens += len(ids)
            trainable += n_train
            rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
        stats["kept"] += kept
        stats["dropped_no_trainable"] += dropped
        stats["truncated"] += truncated_rows
        stats["tokens"] += tokens
        stats["trainable_tokens"] += trainable

    texts: list[str] = []
    spans_list: list[list[tuple[int, int]]] = []
    # The rows are acyclic (lists of ints in dicts), but every cyclic-GC pass walks all
    # rows kept so far: ~10% of the time on 20k rows. Off while encoding, then restored.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for record in records:
            stats["records"] += 1
            try:
                segments = template.render_segments(record, eos)
            except TemplateError:
                stats["dropped_template"] += 1
                continue
            texts.append("".join([t for t, _ in segments]))
            spans_list.append(_trainable_spans(segments))
            if len(texts) >= batch_size:
                flush(texts, spans_list)
                texts, spans_list = [], []
        flush(texts, spans_list)
    finally:
        if gc_was_enabled:
            gc.enable()
    return rows, stats


# --------------------------------------------------------------------------- packing
def pack(rows: list[dict], capacity: int) -> tuple[list[dict], dict[str, Any]]:
    """Pack encoded rows into rows of at most ``capacity`` tokens (best-fit decreasing).

    Padding-free packing: each packed row is the concatenation of several samples,
    with ``position_ids`` that restart at 0 for every sample and ``seq_lens`` (the
    sample lengths, in order).  The first token of every sample gets label ``-100``
    so that no sample is trained to predict its first token from the previous
    sample (``encode`` already masks bos; this makes it hold for any tokenizer).
    Attention never crosses samples: the collator passes the restarting position ids
    and no attention mask, from which transformers builds a per-sample causal
    (block-diagonal) mask on sdpa/eager and uses the varlen kernel on flash-attn.

    Deterministic: samples are taken longest first (ties by input order), each goes
    into the fullest row it still fits in (ties: the oldest row), rows come out in the
    order they were opened.  Returns ``(packed_rows, stats)`` with ``stats``:
    ``samples``, ``rows``, ``tokens``, ``fill`` (tokens / (rows * capacity)).
    """
    if capacity < 1:
        raise ValueError("capacity must be >= 1")
    order = sorted(range(len(rows)), key=lambda i: (-len(rows[i]["input_ids"]), i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (remaining capacity, bin index)
    for i in order:
        n = len(rows[i]["input_ids"])
        if n > capacity:
            raise ValueError(f"row {i} has {n} tokens, more than the packing capacity {capacity}")
        j = bisect.bisect_left(free, (n, -1))
        if j < len(free):
            rem, b = free.pop(j)
        else:
            rem, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        if rem - n > 0:
            bisect.insort(free, (rem - n, b))
    packed: list[dict] = []
    tokens = 0
    for members in bins:
        ids: list[int] = []
        labels: list[int] = []
        pos: list[int] = []
        lens: list[int] = []
        for i in members:
            r = rows[i]
            n = len(r["input_ids"])
            ids.extend(r["input_ids"])
            labels.append(IGNORE_INDEX)
            labels.extend(r["labels"][1:])
            pos.extend(range(n))
            lens.append(n)
        tokens += len(ids)
        packed.append({"input_ids": ids, "labels": labels, "position_ids": pos, "seq_lens": lens})
    stats = {
        "samples": len(rows),
        "rows": len(packed),
        "tokens": tokens,
        "fill": round(tokens / (len(packed) * capacity), 6) if packed else 0.0,
    }
    return packed, stats
