"""Templated tokenization with assistant-only labels, and packing (``pack``).

``encode`` renders a record with its template into ``(text, trainable)`` segments (trainable:
inside the template's ``{% generation %}`` spans; bos and eos are the tokenizer's own), then
tokenizes the concatenated text ONCE (bos added by the tokenizer) and keeps a token's
label only when its character span ``[start, end)`` lies inside one trainable segment.
Everything else (bos, system prompt, user turns, role headers, separators) gets ``-100``.

Character spans come from the tokenizer itself: the ``offset_mapping`` of a fast
(``tokenizers``) tokenizer, or, for a slow SentencePiece tokenizer (recipe key
``tokenizer: {use_fast: false}``), from aligning the pieces of that same whole-text
encoding with the text (:func:`piece_offsets`: each piece, ``▁`` read as a space and
byte-fallback pieces as their bytes, must match the text where the previous one ended; the
dummy-prefix space is zero-width, spaces a whitespace-collapsing normalizer removed are
skipped). A piece that matches nowhere stops the job with a ``TokenizeError``: labels are
exact or there are none. A byte-level BPE tokenizer (the GPT-2 / Qwen2 / Llama-3 kind) whose
offsets are untrimmed is encoded without offsets (``encode_batch_fast``, a quarter less time):
its tokens tile the text, so each token's span is the running sum of the byte lengths of the
tokens before it (:class:`ByteSpans`), the very offsets the tokenizer would report; a row where
the sum does not come to the text's length goes through the offsets.

Tokenizing once means the ids are exactly those the model sees at inference for
the same text (no per-segment tokenization seams).  The price: a token whose span
straddles a segment boundary is masked (e.g. an answer starting with punctuation glued
to the end of its header); only that one token loses its label.

Truncation keeps the first ``max_length`` tokens; a record with no trainable
token left is dropped (``None``) and counted by ``encode_dataset``.

The tokenize stage takes the same rows as flat arrays (:func:`encode_columns`): per batch, a
byte-level BPE tokenizer's labels from numpy over all its tokens (a token's span is a running sum
of byte lengths, ``np.cumsum``; it is trained iff inside a trainable span, ``np.searchsorted``),
truncation and drops over the batch, no per-row lists or dicts; rows the byte lengths cannot label
go through the offsets as in ``encode_dataset``, which the tests compare it with row for row.

Label sanity (:func:`check_labels`, run by ``encode_dataset`` on the first rows it keeps):
the trained tokens of a row must decode to its answers. A template/tokenizer pair that
trains only end-of-turn tokens, or tokens outside the answers (offsets that do not match
the text), stops with one line naming the template, the row and what was trained.
"""
from __future__ import annotations

import bisect
import gc
import re
import unicodedata
import weakref
from itertools import accumulate, chain
from typing import Any, Iterable, NamedTuple

from reprotune.templates import Template, TemplateError

IGNORE_INDEX = -100
SANITY_ROWS = 32  # rows of each dataset whose labels check_labels verifies


class TokenizeError(ValueError):
    """Labels cannot be made right for this template/tokenizer pair; one printable line."""


def _inside(spans: list[tuple[int, int]], starts: list[int], start: int, end: int) -> bool:
    if end <= start:
        return False  # zero-width tokens (bos/eos added by the post-processor)
    i = bisect.bisect_right(starts, start) - 1
    return i >= 0 and spans[i][0] <= start and end <= spans[i][1]


_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _match_piece(text: str, pos: int, piece: str) -> tuple[int, int, int]:
    """Where the text of one SentencePiece piece lies in ``text`` at ``pos``: ``(start, end, next pos)``."""
    for q in _candidates(text, pos):
        if text.startswith(piece, q):
            return q, q + len(piece), q + len(piece)
        if piece.startswith(" ") and text.startswith(piece[1:], q):
            # the dummy prefix (or legacy space after a special token): not in the text. A lone
            # space piece takes the next character's span, as the fast tokenizer's offsets do.
            end = q + len(piece) - 1
            return q, end if end > q else min(q + 1, len(text)), end
    raise TokenizeError(f"cannot align the slow tokenizer's piece {piece!r} with the text at character {pos} "
                        f"({text[pos:pos + 30]!r}): its labels would not be exact")


def _candidates(text: str, pos: int):
    """``pos``, then positions past spaces a whitespace-collapsing normalizer dropped."""
    yield pos
    q = pos
    while q < len(text) and text[q] == " ":
        q += 1
        yield q


def piece_offsets(tokenizer, text: str, ids: list[int]) -> list[tuple[int, int]]:
    """Character spans of the tokens of a slow (SentencePiece) tokenizer's whole-text encoding.

    Literal special tokens in the text get their span; ones the tokenizer adds (bos) are
    zero-width; byte-fallback pieces of one character all get that character's span.
    """
    added = set(getattr(tokenizer, "added_tokens_encoder", {}) or {})
    text = text.replace("\u2581", " ")  # the tokenizer reads a literal \u2581 as a space too
    out: list[tuple[int, int]] = []
    pos, pending, pending_at = 0, bytearray(), []
    for piece in tokenizer.convert_ids_to_tokens(ids):
        m = _BYTE_PIECE.fullmatch(piece)
        if m:
            pending.append(int(m.group(1), 16))
            pending_at.append(len(out))
            out.append((pos, pos))
            try:
                ch = pending.decode("utf-8")
            except UnicodeDecodeError:
                continue
            start, end, pos = _match_piece(text, pos, ch)
            for i in pending_at:
                out[i] = (start, end)
            pending, pending_at = bytearray(), []
        elif piece in added and not text.startswith(piece, pos):
            out.append((pos, pos))  # added by the tokenizer (bos/eos), not written in the text
        else:
            start, end, pos = _match_piece(text, pos, piece if piece in added else piece.replace("\u2581", " "))
            out.append((start, end))
    return out


def ids_and_offsets(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """The whole-text encoding (special tokens added) and each token's character span."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True, truncation=False)
        return list(enc["input_ids"]), [(int(a), int(b)) for a, b in enc["offset_mapping"]]
    ids = list(tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"])
    return ids, piece_offsets(tokenizer, text, ids)


def encode_full(record: dict, template: Template, tokenizer, max_length: int) -> dict[str, Any]:
    """Like :func:`encode` but never drops; also returns ``truncated`` and ``text``."""
    text, spans = template.render_spans(record, tokenizer.eos_token, tokenizer.bos_token or "")
    starts = [s for s, _ in spans]
    ids, offsets = ids_and_offsets(tokenizer, text)
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


def _squash(text: str, specials: Iterable[str]) -> str:
    for tok in specials:
        text = text.replace(tok, "")
    return "".join(text.replace("\u2581", " ").replace("\ufffd", "").split())


def _runs(labels: list[int]) -> list[tuple[int, int]]:
    runs, start = [], None
    for i, lab in enumerate(labels):
        if lab != IGNORE_INDEX and i > 0:
            start = i if start is None else start
        elif start is not None:
            runs.append((start, i))
            start = None
    return runs + ([(start, len(labels))] if start is not None else [])


def check_labels(samples: list[tuple[str, str, list, list, list]], tokenizer, template_name: str) -> None:
    """Verify that trained tokens are the answers: ``samples`` = ``(row id, text, spans, ids, labels)``.

    Every run of trained tokens must decode (whitespace and special tokens aside) to a piece of
    the row's answers, in order; and across the samples, most of the answer text must be trained.
    Raises ``TokenizeError`` (one line) otherwise.
    """
    specials = [t for t in getattr(tokenizer, "all_special_tokens", []) if t]
    answer_chars = trained_chars = 0
    for rid, text, spans, ids, labels in samples:
        answers = _squash("".join(text[a:b] for a, b in spans), specials)
        cursor = 0
        for a, b in _runs(labels):
            piece = _squash(tokenizer.decode(ids[a:b], skip_special_tokens=False), specials)
            at = answers.find(piece, cursor)
            if at < 0:
                raise TokenizeError(
                    f"template {template_name!r} with this tokenizer trains tokens outside the answers: row {rid}: "
                    f"trained tokens {a}..{b} decode to {piece[:60]!r}, not part of its answers {answers[:60]!r} "
                    "(the tokenizer's offsets do not match its text)")
            cursor = at + len(piece)
            trained_chars += len(piece)
        answer_chars += len(answers)
    if answer_chars and trained_chars * 2 < answer_chars:
        rid, text, spans, ids, labels = samples[0]
        trained = tokenizer.decode([t for t in labels[1:] if t != IGNORE_INDEX], skip_special_tokens=False)
        raise TokenizeError(
            f"template {template_name!r} with this tokenizer trains no assistant content: {trained_chars} of "
            f"{answer_chars} answer characters are trained in the first {len(samples)} rows (row {rid}: trained "
            f"tokens decode to {trained[:60]!r}, its answers are {text[spans[0][0]:spans[0][1]][:60]!r})"
            if spans else f"template {template_name!r} trains nothing in row {rid}")


# --------------------------------------------------------------------------- byte-level BPE
_NORMALIZERS_ASCII_SAFE = {"NFC", "NFD", "NFKC", "NFKD"}  # identity on ASCII text


def _components(cfg: dict | None, kind: str) -> list[dict]:
    if not cfg:
        return []
    return [c for part in cfg.get(kind, []) for c in _components(part, kind)] if cfg["type"] == "Sequence" else [cfg]


def _tiling_forms(cfg: dict) -> tuple[str, ...] | None:
    """The normalizer forms (``("NFC",)``, or none) of a ``tokenizer.json`` whose token byte spans tile
    an ASCII text exactly as its offsets do; None for any other tokenizer."""
    forms = tuple(n["type"] for n in _components(cfg.get("normalizer"), "normalizers"))
    pres = _components(cfg.get("pre_tokenizer"), "pretokenizers")
    posts = _components(cfg.get("post_processor"), "processors")
    ok = (cfg.get("model", {}).get("type") == "BPE" and (cfg.get("decoder") or {}).get("type") == "ByteLevel"
          and all(f in _NORMALIZERS_ASCII_SAFE for f in forms)
          and any(p["type"] == "ByteLevel" for p in pres)
          and all(p["type"] == "Split" or (p["type"] == "ByteLevel" and not p.get("add_prefix_space")) for p in pres)
          and all(p["type"] == "TemplateProcessing" or (p["type"] == "ByteLevel" and not p.get("trim_offsets"))
                  for p in posts))
    return forms if ok else None


class ByteSpans(NamedTuple):
    """What a byte-level BPE tokenizer's labels need without its offsets (:func:`byte_spans`).

    Its tokens tile the text: each vocabulary token stands for ``nbytes[id]`` bytes of it (an added
    token for its literal text), the post-processor's own tokens (``prefix``, ``suffix``: bos, eos)
    for none, and nothing normalizes or trims an ASCII text, so a token's character span is the
    running sum of the lengths before it: exactly the offsets the tokenizer would report.
    """

    nbytes: list[int]
    prefix: int
    suffix: int
    normal_forms: tuple[str, ...] = ()  # the normalizers (NFC ...): a text they would change is not tiled
    table: Any = None  # nbytes as an int64 numpy array (the columnar path, :func:`_labels_columns`)


_BAD = -(1 << 40)  # the length of a token that has none: its row's sum check fails


_BYTE_SPANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def byte_spans(tokenizer) -> ByteSpans | None:
    """:class:`ByteSpans` of a fast byte-level BPE tokenizer; None for any other (offsets are used).
    Worked out once per tokenizer and vocabulary size: every chunk of the tokenize stage asks, and it
    costs ~3 us per vocabulary entry (6 ms for the Qwen2 twin's 2,000; ~0.5 s for a real 150k)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not getattr(tokenizer, "is_fast", False):
        return None
    key = backend.get_vocab_size(with_added_tokens=True)
    cached = _BYTE_SPANS.get(tokenizer)
    if cached is None or cached[0] != key:
        cached = _BYTE_SPANS[tokenizer] = (key, _byte_spans(backend))
    return cached[1]


def _byte_spans(backend) -> ByteSpans | None:
    import json

    from tokenizers.pre_tokenizers import ByteLevel

    cfg = json.loads(backend.to_str())
    forms = _tiling_forms(cfg)
    if forms is None:
        return None
    alphabet = set(ByteLevel.alphabet())  # the 256 characters that stand for one byte each
    vocab = backend.get_vocab(with_added_tokens=False)
    nbytes = [_BAD] * (max(backend.get_vocab(with_added_tokens=True).values(), default=-1) + 1)
    for piece, i in vocab.items():
        nbytes[i] = len(piece) if piece and all(c in alphabet for c in piece) else _BAD  # 1 char = 1 byte
    for i, added in backend.get_added_tokens_decoder().items():
        plain = not (added.lstrip or added.rstrip) and added.content
        nbytes[i] = len(added.content.encode()) if plain else _BAD
    bare = backend.encode("a", add_special_tokens=False).ids
    full = backend.encode("a", add_special_tokens=True).ids
    at = next((k for k in range(len(full) - len(bare) + 1) if full[k:k + len(bare)] == bare), None)
    if at is None or not bare:
        return None
    import numpy as np

    return ByteSpans(nbytes, at, len(full) - len(bare) - at, forms, np.array(nbytes, dtype=np.int64))


def _labels_bytes(ids: list[int], text: str, spans: list[tuple[int, int]], bs: ByteSpans) -> list[int] | None:
    """Labels from the tokens' byte lengths (:class:`ByteSpans`): the same as :func:`_labels` on the
    tokenizer's offsets; None where they do not tile the text (a length unknown).

    Spans are compared in bytes. The tokenizer's character offsets of a token of bytes ``[a, b)``
    are the characters holding byte ``a`` and byte ``b - 1``; a span starts and ends at character
    boundaries, so a token lies inside it in characters exactly when it does in bytes."""
    size = len(text)
    if not text.isascii():  # characters -> bytes (ASCII: the same numbers, and no normalizer changes it)
        if not all(unicodedata.is_normalized(form, text) for form in bs.normal_forms):
            return None
        size = len(text.encode("utf-8"))
        spans = [(len(text[:s].encode("utf-8")), len(text[:e].encode("utf-8"))) for s, e in spans]
    core = ids[bs.prefix:len(ids) - bs.suffix]
    ends = list(accumulate(map(bs.nbytes.__getitem__, core)))
    if (ends[-1] if ends else 0) != size:  # every length is >= 1, or _BAD: the sum tells
        return None
    labels = [IGNORE_INDEX] * len(ids)
    for s, e in spans:
        # token j of the core covers [ends[j-1], ends[j]): from the first starting at or after s
        # to the last ending at or before e
        lo = bisect.bisect_left(ends, s) + 1 if s > 0 else 0
        hi = bisect.bisect_right(ends, e)
        if hi > lo:
            labels[bs.prefix + lo:bs.prefix + hi] = core[lo:hi]
    return labels


def _label_batch(tokenizer, backend, texts: list[str], spans_list: list,
                 bs: ByteSpans | None = None) -> list[tuple[list[int], list[int]]]:
    if bs is not None:  # ids only (no offsets computed), labels from the token lengths
        out, redo = [], []
        for i, (e, text, spans) in enumerate(zip(backend.encode_batch_fast(texts, add_special_tokens=True),
                                                 texts, spans_list)):
            ids = e.ids
            labels = _labels_bytes(ids, text, spans, bs)
            out.append((ids, labels))
            if labels is None:
                redo.append(i)
        for i, row in zip(redo, _label_batch(tokenizer, backend, [texts[i] for i in redo], [spans_list[i] for i in redo])):
            out[i] = row
        return out
    if backend is not None:  # the Rust tokenizer directly: no Python-side BatchEncoding
        out = []
        for e, spans in zip(backend.encode_batch(texts, add_special_tokens=True), spans_list):
            ids = e.ids  # a fresh list: the row keeps it
            out.append((ids, _labels_encoding(ids, e, spans)))
        return out
    out = []
    for text, spans in zip(texts, spans_list):
        ids, offsets = ids_and_offsets(tokenizer, text)
        out.append((ids, _labels(ids, offsets, spans)))
    return out


def _plain_backend(tokenizer):
    """The Rust tokenizer of a fast tokenizer, set to full-length encodings (truncation happens later)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        if backend.truncation is not None:
            backend.no_truncation()
        if backend.padding is not None:
            backend.no_padding()
    return backend


def new_stats() -> dict[str, int]:
    return {"records": 0, "kept": 0, "dropped_no_trainable": 0, "dropped_template": 0, "truncated": 0,
            "tokens": 0, "trainable_tokens": 0}


def _keep(ids: list[int], labels: list[int], max_length: int, stats: dict) -> dict | None:
    truncated = len(ids) > max_length
    if truncated:
        ids, labels = ids[:max_length], labels[:max_length]
    # trainable labels after position 0 (label 0 is never a target), counted in C
    n_train = len(labels) - labels.count(IGNORE_INDEX) - (bool(labels) and labels[0] != IGNORE_INDEX)
    if n_train == 0:
        stats["dropped_no_trainable"] += 1
        return None
    stats["kept"] += 1
    stats["truncated"] += truncated
    stats["tokens"] += len(ids)
    stats["trainable_tokens"] += n_train
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels, "truncated": truncated}


def _render_batches(records: Iterable[dict], template: Template, tokenizer, stats: dict, batch_size: int):
    """``(ids, texts, spans)`` per batch of renderable records (unrenderable ones are counted)."""
    rids, texts, spans_list = [], [], []
    eos, bos = tokenizer.eos_token, tokenizer.bos_token or ""  # looked up once, not per record
    for record in records:
        stats["records"] += 1
        try:
            text, spans = template.render_spans(record, eos, bos)
        except TemplateError:
            stats["dropped_template"] += 1
            continue
        rids.append(record.get("id", stats["records"] - 1))
        texts.append(text)
        spans_list.append(spans)
        if len(texts) >= batch_size:
            yield rids, texts, spans_list
            rids, texts, spans_list = [], [], []
    if texts:
        yield rids, texts, spans_list


def iter_encode(records: Iterable[dict], template: Template, tokenizer, max_length: int, stats: dict,
                batch_size: int = 1000):
    """The kept rows of :func:`encode_dataset`, one at a time (``stats`` is updated in place).

    The first :data:`SANITY_ROWS` kept rows are held back until those of them that were not
    truncated have passed :func:`check_labels`.
    """
    if max_length < 2:
        raise ValueError("max_length must be at least 2")
    backend, bs = _plain_backend(tokenizer), byte_spans(tokenizer)
    samples, held = [], []
    for rids, texts, spans_list in _render_batches(records, template, tokenizer, stats, batch_size):
        for rid, text, spans, (ids, labels) in zip(rids, texts, spans_list,
                                                   _label_batch(tokenizer, backend, texts, spans_list, bs)):
            row = _keep(ids, labels, max_length, stats)
            if row is None:
                continue
            if held is not None and len(held) < SANITY_ROWS:
                if not row["truncated"]:
                    samples.append((rid, text, spans, row["input_ids"], row["labels"]))
                held.append(row)
                continue
            if held is not None:
                check_labels(samples, tokenizer, template.name)
                yield from (_strip(r) for r in held)
                held = None
            yield _strip(row)
    if held is not None:
        check_labels(samples, tokenizer, template.name)
        yield from (_strip(r) for r in held)


def _strip(row: dict) -> dict:
    del row["truncated"]
    return row


def encode_dataset(
    records: Iterable[dict], template: Template, tokenizer, max_length: int, batch_size: int = 1000
) -> tuple[list[dict], dict[str, int]]:
    """Encode every record; returns ``(rows, stats)``.

    Same rows as calling :func:`encode` per record, but a fast tokenizer's Rust backend is
    called once per ``batch_size`` records and each label mask is found from a few tokens per
    trainable span (:func:`_labels_encoding`: the tokens at the span's ends; a bisection
    over probed offsets where those cannot tell), never from every token's offsets, so
    the data path runs close to raw ``tokenizer(batch)`` speed (``bench/data_prep.py``).
    A slow tokenizer encodes row by row, with offsets from :func:`piece_offsets`.

    ``stats``: ``records`` (seen), ``kept``, ``dropped_no_trainable`` (nothing left to
    train on after truncation), ``dropped_template`` (template cannot render it, e.g.
    multi-turn into a single-turn format), ``truncated`` (kept but cut), ``tokens``
    and ``trainable_tokens`` of the kept rows.  Row order is preserved.
    """
    stats = new_stats()
    # The rows are acyclic (lists of ints in dicts), but every cyclic-GC pass walks all
    # rows kept so far: ~10% of the time on 20k rows. Off while encoding, then restored.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        rows = list(iter_encode(records, template, tokenizer, max_length, stats, batch_size))
    finally:
        if gc_was_enabled:
            gc.enable()
    return rows, stats


# --------------------------------------------------------------------------- columnar (the tokenize stage)
class Columns(NamedTuple):
    """Encoded rows as flat arrays: row ``i`` is ``input_ids[o[i]:o[i + 1]]`` (the same of ``labels``),
    ``o`` the running sum of ``lengths`` (:func:`_row_offsets`). int32 ids and labels, int64 lengths."""

    input_ids: Any
    labels: Any
    lengths: Any


def _row_offsets(lengths):
    """``[0, l0, l0 + l1, ...]`` (int64): where each row starts in the flat arrays, and the end."""
    import numpy as np

    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


def encode_columns(records: Iterable[dict], template: Template, tokenizer, max_length: int,
                   batch_size: int = 1000) -> tuple[Columns, dict[str, int]]:
    """The rows and counts of :func:`encode_dataset` as :class:`Columns` (what the tokenize stage writes).

    Each batch goes through flat arrays instead of per-row lists and dicts: a byte-level BPE tokenizer's
    labels come from numpy over the batch's tokens (:func:`_labels_columns`; rows it cannot tile go
    through the offsets, as in :func:`_label_batch`), any other tokenizer's from :func:`_label_batch`;
    truncation and drops are decided over the batch (:func:`_keep_columns`). The label sanity check
    sees the same rows at the same point (when a kept row follows the first :data:`SANITY_ROWS`).
    Tests compare it with :func:`encode_dataset` row for row.
    """
    import numpy as np

    if max_length < 2:
        raise ValueError("max_length must be at least 2")
    stats = new_stats()
    backend, bs = _plain_backend(tokenizer), byte_spans(tokenizer)
    parts, samples, held = [], [], 0  # held: the kept rows seen so far, until the check is done
    for rids, texts, spans_list in _render_batches(records, template, tokenizer, stats, batch_size):
        cols, rows, truncated = _keep_columns(_batch_columns(tokenizer, backend, texts, spans_list, bs),
                                              max_length, stats)
        parts.append(cols)
        if held <= SANITY_ROWS:
            take = min(SANITY_ROWS - held, len(rows))
            o = _row_offsets(cols.lengths[:take])
            samples += [(rids[r], texts[r], spans_list[r], cols.input_ids[o[k]:o[k + 1]].tolist(),
                         cols.labels[o[k]:o[k + 1]].tolist()) for k, r in enumerate(rows[:take]) if not truncated[k]]
            held += take + (len(rows) > take)  # past SANITY_ROWS: a kept row follows them
            if held > SANITY_ROWS:
                check_labels(samples, tokenizer, template.name)
    if held <= SANITY_ROWS:
        check_labels(samples, tokenizer, template.name)
    empty = np.zeros(0, dtype=np.int32)
    return Columns(*(np.concatenate([empty.astype(dt)] + [c[i] for c in parts])
                     for i, dt in enumerate((np.int32, np.int32, np.int64)))), stats


def _batch_columns(tokenizer, backend, texts: list[str], spans_list: list, bs: ByteSpans | None) -> Columns:
    """:func:`_label_batch`'s ids and labels of one batch, as :class:`Columns`."""
    import numpy as np

    if bs is None:
        rows = _label_batch(tokenizer, backend, texts, spans_list)
        lengths = np.fromiter((len(ids) for ids, _ in rows), dtype=np.int64, count=len(rows))
        total = int(lengths.sum())
        return Columns(np.fromiter(chain.from_iterable([ids for ids, _ in rows]), dtype=np.int32, count=total),
                       np.fromiter(chain.from_iterable([lab for _, lab in rows]), dtype=np.int32, count=total),
                       lengths)
    ids_list = [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=True)]
    lengths = np.fromiter(map(len, ids_list), dtype=np.int64, count=len(ids_list))
    ids = np.fromiter(chain.from_iterable(ids_list), dtype=np.int32, count=int(lengths.sum()))
    labels, redo = _labels_columns(ids, lengths, texts, spans_list, bs)
    cols = Columns(ids, labels, lengths)
    if redo:  # through the offsets, as _label_batch does
        cols = _splice(cols, redo, _label_batch(tokenizer, backend, [texts[i] for i in redo],
                                                [spans_list[i] for i in redo]))
    return cols


def _splice(cols: Columns, at: list[int], rows: list[tuple[list[int], list[int]]]) -> Columns:
    """``cols`` with the rows ``at`` (ascending) replaced by ``rows`` (``(ids, labels)`` lists)."""
    import numpy as np

    o, lengths = _row_offsets(cols.lengths), cols.lengths.copy()
    ids, labels, prev = [], [], 0
    for i, (row_ids, row_labels) in zip(at, rows):
        ids += [cols.input_ids[o[prev]:o[i]], np.array(row_ids, dtype=np.int32)]
        labels += [cols.labels[o[prev]:o[i]], np.array(row_labels, dtype=np.int32)]
        lengths[i], prev = len(row_ids), i + 1
    ids.append(cols.input_ids[o[prev]:])
    labels.append(cols.labels[o[prev]:])
    return Columns(np.concatenate(ids), np.concatenate(labels), lengths)


def _byte_rows(texts: list[str], spans_list: list, bs: ByteSpans):
    """Each text's size in bytes (-1 where a normalizer would change it: not tiled) and its spans in bytes."""
    import numpy as np

    sizes = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    spans_b = spans_list
    for i, text in enumerate(texts):
        if text.isascii():  # characters are bytes
            continue
        if spans_b is spans_list:
            spans_b = list(spans_list)
        if not all(unicodedata.is_normalized(form, text) for form in bs.normal_forms):
            sizes[i], spans_b[i] = -1, []
            continue
        sizes[i] = len(text.encode("utf-8"))
        spans_b[i] = [(len(text[:s].encode("utf-8")), len(text[:e].encode("utf-8"))) for s, e in spans_list[i]]
    return sizes, spans_b


def _labels_columns(ids, lengths, texts: list[str], spans_list: list, bs: ByteSpans):
    """:func:`_labels_bytes` of every row of a batch at once: ``(labels, rows it cannot tile)``.

    The batch's tokens are laid end to end on one byte axis (each token as long as its bytes, the
    post-processor's own ``prefix``/``suffix`` tokens zero-width): a row tiles when its tokens' bytes
    add up to its text's; its spans, shifted to where the row starts on the axis, are then sorted and
    disjoint across the batch, and a token of nonzero width is trained iff it lies inside one of them:
    each span's tokens are a run, from the first token starting at or after the span's start to the
    last ending at or before its end (two ``np.searchsorted`` over the tokens, per span): the run
    :func:`_labels_bytes` bisects for."""
    import numpy as np

    sizes, spans_b = _byte_rows(texts, spans_list, bs)
    o = _row_offsets(lengths)
    nb = bs.table[ids]
    for j in range(bs.prefix):  # zero-width: the post-processor's tokens
        nb[o[:-1][lengths > j] + j] = 0
    for j in range(1, bs.suffix + 1):
        nb[o[1:][lengths >= j] - j] = 0
    ok = sizes >= 0
    bad = nb < 0  # a token of unknown length: its row is not tiled
    if bad.any():
        nbad = _row_offsets(bad)
        ok &= nbad[o[1:]] == nbad[o[:-1]]
        nb[bad] = 0
    end = _row_offsets(nb)  # end[k]: where token k starts on the axis; end[k + 1]: where it ends
    base = end[o]
    ok &= base[1:] - base[:-1] == sizes
    rows = np.flatnonzero(ok).tolist() if not ok.all() else range(len(texts))
    counts = np.fromiter((len(spans_b[r]) for r in rows), dtype=np.int64, count=len(rows))
    flat = np.fromiter(chain.from_iterable(chain.from_iterable([spans_b[r] for r in rows])), dtype=np.int64,
                       count=2 * int(counts.sum()))
    shift = np.repeat(base[:-1][np.asarray(rows, dtype=np.int64)], counts)
    starts, ends = flat[0::2] + shift, flat[1::2] + shift
    lo = np.searchsorted(end[:-1], starts, side="left")  # each span's first token starting in it
    hi = np.searchsorted(end[1:], ends, side="right")  # past its last token ending in it
    has = hi > lo
    n = len(ids) + 1  # bincount, not a fancy +=: two ranges may start at one zero-width token
    depth = np.cumsum(np.bincount(lo[has], minlength=n) - np.bincount(hi[has], minlength=n))[:-1]
    inside = (depth > 0) & (nb > 0)
    return np.where(inside, ids, IGNORE_INDEX).astype(np.int32, copy=False), np.flatnonzero(~ok).tolist()


def _keep_columns(cols: Columns, max_length: int, stats: dict) -> tuple[Columns, list[int], Any]:
    """:func:`_keep` over a batch: the kept rows (truncated to ``max_length``), their indices in the
    batch and whether each was truncated; ``stats`` updated."""
    import numpy as np

    lengths = cols.lengths
    o = _row_offsets(lengths)
    cut = lengths > max_length
    trained = cols.labels != IGNORE_INDEX
    window = None
    if cut.any():
        window = np.arange(len(trained)) - np.repeat(o[:-1], lengths) < max_length
        trained &= window
    counted = _row_offsets(trained)
    n_train = counted[o[1:]] - counted[o[:-1]]
    nonempty = lengths > 0
    n_train[nonempty] -= trained[o[:-1][nonempty]]  # label 0 is never a target
    kept = n_train > 0
    stats["dropped_no_trainable"] += int(len(kept) - kept.sum())
    stats["kept"] += int(kept.sum())
    stats["truncated"] += int((cut & kept).sum())
    new_lengths = np.minimum(lengths, max_length)[kept]
    stats["tokens"] += int(new_lengths.sum())
    stats["trainable_tokens"] += int(n_train[kept].sum())
    if window is not None or not kept.all():
        mask = np.repeat(kept, lengths) if window is None else window & np.repeat(kept, lengths)
        cols = Columns(cols.input_ids[mask], cols.labels[mask], new_lengths)
    return cols, np.flatnonzero(kept).tolist(), cut[kept]


def compare_tokenizers(records: Iterable[dict], template: Template, fast, slow, limit: int) -> dict:
    """How many of the first ``limit`` renderable rows ``fast`` and ``slow`` encode differently
    (the rendered training text, special tokens added); the first such row's id as an example."""
    compared = differ = 0
    example = None
    for record in records:
        if compared >= limit:
            break
        try:
            text = template.render(record, fast.eos_token, fast.bos_token or "")
        except TemplateError:
            continue
        compared += 1
        if fast(text, add_special_tokens=True)["input_ids"] != slow(text, add_special_tokens=True)["input_ids"]:
            differ += 1
            example = example or record.get("id")
    return {"rows_compared": compared, "rows_encoded_differently": differ, "first_differing_row": example}


# --------------------------------------------------------------------------- packing
def pack_plan(lengths, capacity: int) -> list[list[int]]:
    """Which samples go into which packed row: best-fit decreasing over ``lengths`` (see :func:`pack`)."""
    if capacity < 1:
        raise ValueError("capacity must be >= 1")
    lengths = [int(n) for n in lengths]
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (remaining capacity, bin index)
    for i in order:
        n = lengths[i]
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
    return bins


def pack_stats(samples: int, rows: int, tokens: int, capacity: int) -> dict[str, Any]:
    return {"samples": samples, "rows": rows, "tokens": tokens,
            "fill": round(tokens / (rows * capacity), 6) if rows else 0.0}


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
    bins = pack_plan([len(r["input_ids"]) for r in rows], capacity)
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
    return packed, pack_stats(len(rows), len(packed), tokens, capacity)
