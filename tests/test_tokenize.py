"""Offsets-based assistant-only labels, truncation and drop counting."""
from __future__ import annotations

from pathlib import Path

import pytest

from reprotune import templates
from reprotune.tokenize import IGNORE_INDEX, encode, encode_dataset


def rec(*turns, system="", **extra):
    roles = ["user", "assistant"]
    return {"id": "t/0", "source": "t", "system": system,
            "messages": [{"role": roles[i % 2], "content": c} for i, c in enumerate(turns)], **extra}


def _hf(tok):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="module")
def byte_tok():
    """No merges: every ASCII character is one token, special tokens are one token."""
    from reprotune.tinybase import train_tokenizer

    return _hf(train_tokenizer(["ab"], vocab_size=259, min_frequency=1000))


@pytest.fixture(scope="module")
def bpe_tok():
    from reprotune.tinybase import train_tokenizer

    corpus = [f"<|prompter|>question {i} about the fox</s><|assistant|>the quick brown fox answer {i}</s>"
              for i in range(200)] + ["### User:\n### Assistant:\n<|user|>\n<|assistant|>\n"] * 20
    return _hf(train_tokenizer(corpus, vocab_size=400, min_frequency=2))


def _expected(pieces):
    """(text, trained) -> per-token expected labels for the byte tokenizer (bos first)."""
    out = [False]
    for text, trained in pieces:
        i = 0
        while i < len(text):
            if text.startswith("</s>", i):
                out.append(trained)
                i += 4
            else:
                out.append(trained)
                i += 1
    return out


def test_exact_label_positions_multi_turn_oasst(byte_tok):
    t = templates.get("oasst")
    r = rec("Q1", "A1", "Q2", "Ans2", system="S")
    enc = encode(r, t, byte_tok, max_length=1000)
    expected = _expected([("<|system|>S</s><|prompter|>Q1</s><|assistant|>", False), ("A1</s>", True),
                          ("<|prompter|>Q2</s><|assistant|>", False), ("Ans2</s>", True)])
    assert len(enc["input_ids"]) == len(expected)
    assert [label != IGNORE_INDEX for label in enc["labels"]] == expected
    trained = [i for i, label in enumerate(enc["labels"]) if label != IGNORE_INDEX]
    assert [enc["input_ids"][i] for i in trained] == [enc["labels"][i] for i in trained]
    assert enc["input_ids"][0] == byte_tok.bos_token_id and enc["labels"][0] == IGNORE_INDEX
    assert enc["attention_mask"] == [1] * len(enc["input_ids"])
    # every </s> after a prompter turn is context, every </s> after an answer is trained
    eos_positions = [i for i, x in enumerate(enc["input_ids"]) if x == byte_tok.eos_token_id]
    assert [enc["labels"][i] != IGNORE_INDEX for i in eos_positions] == [False, False, True, False, True]


def _trained_runs(enc, tok):
    runs, cur = [], []
    for tid, label in zip(enc["input_ids"], enc["labels"]):
        if label != IGNORE_INDEX:
            cur.append(tid)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return [tok.decode(run) for run in runs]


@pytest.mark.parametrize("name,markers", [
    ("oasst", ["</s>", "</s>", "</s>"]),
    ("tulu", ["</s>\n", "</s>\n", "</s>\n"]),
    ("fashiongpt", ["</s>", "</s>", "</s>"]),
])
def test_trained_tokens_decode_to_answers_bpe(bpe_tok, name, markers):
    answers = ["the quick brown fox answer 1", "Sure: a fox", "the lazy dog"]
    r = rec("question 1 about the fox", answers[0], "and then?", answers[1], "why", answers[2], system="be nice")
    enc = encode(r, templates.get(name), bpe_tok, max_length=4096)
    assert _trained_runs(enc, bpe_tok) == [a + m for a, m in zip(answers, markers)]
    # the masked part decodes to exactly the rest of the rendered text
    masked = [tid for tid, label in zip(enc["input_ids"], enc["labels"]) if label == IGNORE_INDEX]
    full = templates.get(name).render(r, "</s>")
    rest = full
    for a, m in zip(answers, markers):
        rest = rest.replace(a + m, "", 1)
    assert bpe_tok.decode(masked[1:]) == rest


def test_orca_mini_and_raw(byte_tok):
    enc = encode(rec("I", "R", system="S", input="X"), templates.get("orca_mini"), byte_tok, 1000)
    assert _trained_runs(enc, byte_tok) == ["R</s>"]
    enc = encode({"id": "rp/0", "source": "rp", "text": "abc"}, templates.get("tulu"), byte_tok, 1000)
    assert enc["labels"] == [IGNORE_INDEX] + enc["input_ids"][1:]
    assert len(enc["input_ids"]) == 5  # <s> a b c </s>


def test_truncation_and_drops(byte_tok):
    t = templates.get("oasst")
    r = rec("Q1", "A1")  # <s> + "<|prompter|>Q1</s><|assistant|>" (1 + 12 + 2 + 1 + 13 = 29 tokens) + "A1</s>"
    full = encode(r, t, byte_tok, 1000)
    assert len(full["input_ids"]) == 32
    assert encode(r, t, byte_tok, 29) is None           # prompt fills the window: nothing to train
    cut = encode(r, t, byte_tok, 30)                    # one answer token survives
    assert cut is not None and len(cut["input_ids"]) == 30
    assert sum(label != IGNORE_INDEX for label in cut["labels"]) == 1
    rows, stats = encode_dataset([r, rec("Q1", "A1", "Q2", "A2"), {"text": "zz"}], templates.get("orca_mini"),
                                 byte_tok, 30)
    assert stats["records"] == 3 and stats["dropped_template"] == 1  # orca_mini is single-turn
    rows, stats = encode_dataset([r, rec("a much longer question " * 3, "A"), {"text": "zz"}], t, byte_tok, 30)
    assert stats == {"records": 3, "kept": 2, "dropped_no_trainable": 1, "dropped_template": 0,
                     "truncated": 1, "tokens": 30 + 4, "trainable_tokens": 1 + 3}
    assert [len(x["input_ids"]) for x in rows] == [30, 4]


@pytest.mark.parametrize("batch_size", [1, 3, 1000])
def test_batched_encode_dataset_equals_per_record_encode(bpe_tok, batch_size):
    """The batched/numpy path gives exactly the rows of per-record ``encode``."""
    t = templates.get("oasst")
    records = [rec(f"question {i} about the fox", f"the quick brown fox answer {i}",
                   *(["(yes) more", "(no) fox"] if i % 3 == 0 else []), system="sys" if i % 2 else "")
               for i in range(17)]
    records.append({"id": "rp/1", "source": "rp", "text": "the quick brown fox " * 5})
    records.append(rec("a long question " * 30, "short"))  # truncated to nothing trainable at 64
    rows, stats = encode_dataset(records, t, bpe_tok, 64, batch_size=batch_size)
    expected = [e for e in (encode(r, t, bpe_tok, 64) for r in records) if e is not None]
    assert rows == expected
    assert stats["records"] == 19 and stats["kept"] == len(expected) == 18
    assert stats["dropped_no_trainable"] == 1


# ---------------------------------------------------------------- labels from probed offsets
def _tok_variants():
    """Byte-level BPE tokenizers that differ in what the post-processor adds: bos (the
    project's), bos + a trailing eos (zero-width tokens at both ends), nothing."""
    from tokenizers import processors

    from reprotune.tinybase import train_tokenizer

    corpus = ["the quick brown fox answer (yes) caf\u00e9 \u00e9t\u00e9 \U0001F600 \u4f60\u597d </s> ###"] * 20
    out = {}
    for name in ("bos", "bos_eos", "none"):
        tok = train_tokenizer(corpus, vocab_size=300, min_frequency=2)
        if name == "bos_eos":
            tok.post_processor = processors.TemplateProcessing(
                single="<s>:0 $A:0 </s>:0", special_tokens=[("<s>", 1), ("</s>", 2)])
        elif name == "none":
            tok.post_processor = processors.TemplateProcessing(single="$A:0", special_tokens=[])
        out[name] = tok
    return out


@pytest.fixture(scope="module")
def tok_variants():
    return _tok_variants()


def _per_token(ids, offsets, spans):
    from reprotune.tokenize import _inside

    starts = [s for s, _ in spans]
    return [tid if _inside(spans, starts, s, e) else IGNORE_INDEX for tid, (s, e) in zip(ids, offsets)]


@pytest.mark.parametrize("variant", ["bos", "bos_eos", "none"])
def test_probed_offsets_labels_equal_per_token_labels(tok_variants, variant):
    """Labels from bisection over lazily probed offsets (``_EncodingOffsets``) and from
    the tokens at the span ends (``_labels_encoding``) equal the per-token test on the
    full offsets list: spans on token boundaries, starting or
    ending inside a token (byte tokens of one emoji, merged words), empty texts, spans
    at both ends, zero-width special tokens before and after."""
    import random

    from _tokens import trainable_spans

    from reprotune.tokenize import _EncodingOffsets, _labels, _labels_encoding

    tok = tok_variants[variant]
    rng = random.Random(7)
    texts = ["the quick brown fox", "(yes) caf\u00e9 \u00e9t\u00e9", "\U0001F600\U0001F600 fox\u4f60\u597d</s>",
             "a", "</s>", "###\n(yes)</s>the"]
    checked = 0
    for text in texts:
        enc = tok.encode(text)
        ids, offsets = enc.ids, enc.offsets
        n = len(text)
        cases = [[(s, e)] for s in range(n + 1) for e in range(s + 1, n + 1)]  # every single span
        for _ in range(200):  # random segmentations into context/trained pieces
            cuts = sorted(rng.sample(range(1, n), min(n - 1, rng.randrange(0, 5)))) if n > 1 else []
            bounds = [0, *cuts, n]
            segs = [(text[a:b], rng.random() < 0.5) for a, b in zip(bounds, bounds[1:])]
            cases.append(trainable_spans(segs))
        for spans in cases:
            expected = _per_token(ids, offsets, spans)
            assert _labels(ids, offsets, spans) == expected, (text, spans)
            assert _labels(ids, _EncodingOffsets(enc), spans) == expected, (text, spans)
            assert _labels_encoding(ids, enc, spans) == expected, (text, spans)
            checked += 1
    assert checked > 1000


@pytest.mark.parametrize("variant", ["bos", "bos_eos", "none"])
@pytest.mark.parametrize("max_length", [2, 7, 12, 4096])
def test_encode_dataset_equals_encode_on_tricky_records(tok_variants, variant, max_length):
    t = templates.get("oasst")
    hf = _hf(tok_variants[variant])
    records = [
        rec("q", "(yes) fox"),                       # answer glued to the header's punctuation
        rec("caf\u00e9", "\U0001F600 \u00e9t\u00e9", system="\u4f60\u597d"),  # multi-byte characters
        rec("q", ""),                                # empty answer: only its </s> is trained
        rec("q", "the quick brown fox " * 3, "and?", "yes"),
        {"id": "rp/0", "source": "rp", "text": "the quick fox"},  # trained from character 0
        {"id": "rp/1", "source": "rp", "text": ""},
    ]
    rows, stats = encode_dataset(records, t, hf, max_length, batch_size=4)
    expected = [e for e in (encode(r, t, hf, max_length) for r in records) if e is not None]
    assert rows == expected
    assert stats["kept"] == len(expected) and stats["records"] == len(records)
    assert stats["dropped_no_trainable"] == len(records) - len(expected)
    assert stats["trainable_tokens"] == sum(
        sum(label != IGNORE_INDEX for label in r["labels"][1:]) for r in expected)
    if variant == "bos_eos" and max_length == 4096:
        # the appended eos is a zero-width post-processor token: never a target
        assert all(r["input_ids"][-1] == 2 and r["labels"][-1] == IGNORE_INDEX for r in rows)


def test_labels_from_span_ends_need_no_bisection_on_ordinary_rows(tok_variants, monkeypatch):
    """The usual row (bos first, answer after a header, spans starting or ending inside
    a merged token) is labelled from the tokens at the span ends alone."""
    import reprotune.tokenize as tk

    tok = tok_variants["bos"]
    text = "### q\n(yes) the quick \U0001F600 brown fox</s>"
    enc = tok.encode(text)
    cases = [[(text.index("("), len(text))], [(text.index("the"), text.index(" quick"))],
             [(6, 9), (text.index("quick") + 1, len(text) - 2)]]
    expected = [tk._labels(enc.ids, enc.offsets, spans) for spans in cases]
    monkeypatch.setattr(tk, "_labels", lambda *a: pytest.fail("fell back to the bisection"))
    assert [tk._labels_encoding(enc.ids, enc, spans) for spans in cases] == expected
    assert any(label != IGNORE_INDEX for labels in expected for label in labels)


def test_encode_dataset_restores_the_garbage_collector(byte_tok):
    import gc

    t = templates.get("oasst")
    assert gc.isenabled()
    encode_dataset([rec("Q", "A")], t, byte_tok, 64)
    assert gc.isenabled()

    def failing():
        yield rec("Q", "A")
        raise RuntimeError("reader broke")

    with pytest.raises(RuntimeError):
        encode_dataset(failing(), t, byte_tok, 64)
    assert gc.isenabled()
    gc.disable()
    try:
        encode_dataset([rec("Q", "A")], t, byte_tok, 64)
        assert not gc.isenabled()  # left as the caller had it
    finally:
        gc.enable()


# ---------------------------------------------------------------- labels from byte lengths
_ALPHABET = ["a", "b", " ", "  ", "\n", "the", " fox", "</s>", "<s>", "x.", "\t", "\u0120", "\u00e9", "\u65e5\u672c",
             "\U0001F642", "\u00a0", "\u010a\u0120", "(yes)"]


def _random_rows(n: int, seed: int):
    """Texts of awkward pieces (runs of spaces, literal special tokens, the byte-level alphabet's own
    characters, multi-byte characters) with random trainable spans, on and off token boundaries."""
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        text = "".join(rng.choice(_ALPHABET) for _ in range(rng.randrange(0, 30)))
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.choice([2, 4, 6]))))
        rows.append((text, [(a, b) for a, b in zip(cuts[::2], cuts[1::2]) if b > a]))
    return rows


def _twin_tokenizer(base_id: str, root: Path):
    """The tokenizer of a base's twin (one pre-training step: only the tokenizer is used)."""
    from reprotune import bases, twin
    from reprotune.base_tokenizer import load

    twin.build({"profile": bases.get(base_id), "seed": 0, "pretrain": {"steps": 1, "batch_size": 4}},
               sorted(p for p in (Path(__file__).parents[1] / "fixtures" / "hub" / "datasets").rglob("*.jsonl")), root)
    return load(root / "hub" / "models" / base_id)


def _byte_level_tokenizers(tmp_path_factory):
    from transformers import PreTrainedTokenizerFast

    out = {k: PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<s>", eos_token="</s>")
           for k, t in _tok_variants().items()}
    out["qwen2-twin"] = _twin_tokenizer("Qwen/Qwen2-7B", tmp_path_factory.mktemp("qwen2"))  # NFC, Split + ByteLevel
    return out


@pytest.fixture(scope="module")
def byte_level_tokenizers(tmp_path_factory):
    return _byte_level_tokenizers(tmp_path_factory)


@pytest.mark.parametrize("name", ["bos", "bos_eos", "none", "qwen2-twin"])
def test_labels_from_byte_lengths_equal_labels_from_offsets(byte_level_tokenizers, name):
    """A byte-level BPE tokenizer is encoded without offsets (``encode_batch_fast``) and labelled from
    its tokens' byte lengths: the same ids and labels as from the tokenizer's own offsets, on every
    row (all of them on that path: multi-byte characters included)."""
    from reprotune import tokenize as tk

    tok = byte_level_tokenizers[name]
    bs, backend = tk.byte_spans(tok), tk._plain_backend(tok)
    assert bs is not None and bs.prefix == (name in ("bos", "bos_eos")) and bs.suffix == (name == "bos_eos")
    rows = _random_rows(3000, seed=len(name))
    texts, spans = [t for t, _ in rows], [s for _, s in rows]
    fast = [tk._labels_bytes(e.ids, t, s, bs) for e, t, s in zip(backend.encode_batch_fast(texts), texts, spans)]
    assert all(labels is not None for labels in fast)
    expected = tk._label_batch(tok, backend, texts, spans)  # offsets
    assert [(e.ids, labels) for e, labels in zip(backend.encode_batch_fast(texts), fast)] == expected
    assert tk._label_batch(tok, backend, texts, spans, bs) == expected
    assert sum(label != IGNORE_INDEX for _, labels in expected for label in labels) > 10_000


def test_byte_lengths_only_where_they_are_the_offsets(byte_level_tokenizers, tmp_path):
    """Trimmed offsets (GPT-2's ByteLevel post-processor), an added prefix space and SentencePiece
    tokenizers are labelled from offsets; an added token that swallows spaces (lstrip) sends only
    the rows holding it there, with the same labels."""
    from tokenizers import AddedToken, processors
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    from reprotune import tokenize as tk
    from reprotune.tinybase import train_tokenizer

    def fast(t):
        return PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<s>", eos_token="</s>")

    trimmed = train_tokenizer(["the quick fox"] * 5, vocab_size=270, min_frequency=1)
    trimmed.post_processor = processors.ByteLevel(trim_offsets=True)
    prefixed = train_tokenizer(["the quick fox"] * 5, vocab_size=270, min_frequency=1)
    prefixed.pre_tokenizer = ByteLevel(add_prefix_space=True)
    assert tk.byte_spans(fast(trimmed)) is None and tk.byte_spans(fast(prefixed)) is None
    # SentencePiece (Llama-2's fast tokenizer: Metaspace pieces, byte fallback)
    assert tk.byte_spans(_twin_tokenizer("meta-llama/Llama-2-13b-hf", tmp_path)) is None
    greedy = train_tokenizer(["the quick fox"] * 5, vocab_size=270, min_frequency=1)
    greedy.add_special_tokens([AddedToken("<sep>", lstrip=True, rstrip=True)])
    tok = fast(greedy)
    bs, backend = tk.byte_spans(tok), tk._plain_backend(tok)
    texts = ["the fox", "the  <sep>  fox", "fox<sep>"]
    spans = [[(0, 7)], [(0, 15)], [(3, 8)]]
    ids = [e.ids for e in backend.encode_batch_fast(texts)]
    assert [tk._labels_bytes(i, t, s, bs) is None for i, t, s in zip(ids, texts, spans)] == [False, True, True]
    assert tk._label_batch(tok, backend, texts, spans, bs) == tk._label_batch(tok, backend, texts, spans)
    # Qwen2 normalizes to NFC: a text NFC would change (decomposed, marks out of order) is not tiled
    qwen = byte_level_tokenizers["qwen2-twin"]
    bs, backend = tk.byte_spans(qwen), tk._plain_backend(qwen)
    assert bs.normal_forms == ("NFC",)
    texts = ["cafe\u0301 ok", "caf\u00e9 ok", "a\u0307\u0323 x"]
    spans = [[(2, len(t))] for t in texts]
    ids = [e.ids for e in backend.encode_batch_fast(texts)]
    assert [tk._labels_bytes(i, t, s, bs) is None for i, t, s in zip(ids, texts, spans)] == [True, False, True]
    assert tk._label_batch(qwen, backend, texts, spans, bs) == tk._label_batch(qwen, backend, texts, spans)


# ---------------------------------------------------------------- the batched path: rendering, columns
def _random_records(n: int, seed: int):
    """Records of the awkward pieces of ``_random_rows`` (and decomposed characters a normalizer would
    change), one to three turns, some long enough to be truncated, some plain text (two in a row:
    where one row's trained run ends, at its end, the next one's begins, at its start)."""
    import random

    rng = random.Random(seed)
    pieces = _ALPHABET + ["e\u0301", "a\u0307\u0323", " " * 5]

    def text(k):
        return "".join(rng.choice(pieces) for _ in range(rng.randrange(0, k)))

    out = []
    for i in range(n):
        if i % 9 in (0, 1):
            out.append({"id": f"t/{i}", "source": "t", "text": text(40)})
            continue
        turns = [text(60 if i % 4 == 0 else 15) for _ in range(2 * rng.randrange(1, 4))]
        out.append(rec(*turns, system=text(8) if i % 3 else "") | {"id": f"r/{i}"})
    return out


def _column_rows(cols):
    from reprotune.tokenize import _row_offsets

    o = _row_offsets(cols.lengths)
    return [(cols.input_ids[a:b].tolist(), cols.labels[a:b].tolist()) for a, b in zip(o[:-1], o[1:])]


def _greedy_tokenizer():
    """A byte-level BPE tokenizer with an added token that swallows spaces (lstrip, rstrip): the rows
    that hold it cannot be labelled from byte lengths."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    from reprotune.tinybase import train_tokenizer

    tok = train_tokenizer([t for t in _ALPHABET if t.isascii()] * 20, vocab_size=300, min_frequency=2)
    tok.add_special_tokens([AddedToken("(yes)", lstrip=True, rstrip=True)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


@pytest.mark.parametrize("name", ["bos", "bos_eos", "none", "qwen2-twin", "greedy", "byte_tok"])
def test_columns_are_the_rows_of_encode_dataset(byte_level_tokenizers, byte_tok, monkeypatch, name):
    """``encode_columns`` (numpy labels over a batch's flat tokens, vectorised truncation and drops) gives
    exactly the rows and counts of ``encode_dataset``, on random rows: multi-byte characters, runs of
    spaces, rows truncated, rows dropped with no trained token left, rows that go through the offsets
    (an added token that swallows spaces; a text Qwen2's NFC would change); any batch size. (Random
    text trips the label sanity check here and there: it is off, the next test checks it sees the same.)"""
    from reprotune import tokenize as tk

    tok = {"greedy": _greedy_tokenizer(), "byte_tok": byte_tok}.get(name) or byte_level_tokenizers[name]
    monkeypatch.setattr(tk, "check_labels", lambda *a: None)
    spliced = []
    splice = tk._splice
    monkeypatch.setattr(tk, "_splice", lambda cols, at, rows: spliced.extend(at) or splice(cols, at, rows))
    records = _random_records(400, seed=len(name))
    for template in ("oasst", "tulu"):
        t = templates.get(template)
        for max_length, batch_size in ((4096, 1000), (40, 7), (12, 1), (2, 64)):
            rows, stats = encode_dataset(records, t, tok, max_length, batch_size=batch_size)
            cols, cstats = tk.encode_columns(records, t, tok, max_length, batch_size=batch_size)
            assert cstats == stats, (template, max_length)
            assert _column_rows(cols) == [(r["input_ids"], r["labels"]) for r in rows], (template, max_length)
            assert cols.input_ids.dtype == cols.labels.dtype == "int32"
            if max_length == 40:
                assert stats["truncated"] > 0 and stats["dropped_no_trainable"] > 0 and stats["kept"] > 0
    assert bool(spliced) == (name in ("qwen2-twin", "greedy"))


def test_columns_check_labels_on_the_same_rows(byte_level_tokenizers, monkeypatch):
    """The label sanity check sees the same rows, at the same point of the input (a failing check stops
    both paths with the same records read), in both paths."""
    from reprotune import tokenize as tk

    seen, read = [], []

    def failing(samples, tok, name):
        seen.append(samples)
        raise tk.TokenizeError("stop")

    def counted(records):
        for i, r in enumerate(records):
            read[-1] = i + 1
            yield r

    monkeypatch.setattr(tk, "check_labels", failing)
    tok, t = byte_level_tokenizers["bos"], templates.get("oasst")
    records = _random_records(100, seed=3)
    for batch_size in (1, 5, 1000):
        for limit, max_length in ((10, 4096), (33, 30), (40, 4096), (100, 60)):
            for encoder in (encode_dataset, tk.encode_columns):
                read.append(0)
                with pytest.raises(tk.TokenizeError, match="stop"):
                    encoder(counted(records[:limit]), t, tok, max_length, batch_size=batch_size)
            assert len(seen) == 2 and seen[0] == seen[1] and read[0] == read[1], (batch_size, limit)
            assert seen[0] or max_length == 30
            seen.clear()
            read.clear()


def _raw_segments(t, r, eos, bos):
    """The pieces of a record cut at the renderer's own generation spans (as rendered, unmerged)."""
    from reprotune.templates.base import is_text_record, split

    if is_text_record(r):
        return [(r["text"] + eos, True)] if r["text"] + eos else []
    messages = t.to_messages(r)
    if messages[-1]["role"] != "assistant":
        raise templates.TemplateError("a training record must end with an assistant turn")
    return split(*t._render(messages, bos, eos, False))


def test_render_spans_are_the_segments(byte_tok):
    """``Template.render_spans`` (and so ``render_segments``, built on it): the text and trainable
    spans of the pieces cut at the renderer's generation spans, every template."""
    from _tokens import trainable_spans

    records = _random_records(200, seed=5) + [rec("q", ""), {"id": "e", "source": "t", "text": ""}]
    for name in templates.names():
        t = templates.get(name)
        for r in records:
            for eos, bos in (("</s>", "<s>"), ("", "")):
                try:
                    segments = _raw_segments(t, r, eos, bos)
                except templates.TemplateError:
                    with pytest.raises(templates.TemplateError):
                        t.render_spans(r, eos, bos)
                    continue
                assert t.render_spans(r, eos, bos) == ("".join(s for s, _ in segments), trainable_spans(segments))
                assert t.render_segments(r, eos, bos) == segments


def test_columns_labels_when_a_span_holds_no_token_start():
    """A trained span inside one token (no token starts in it) followed, across the row boundary, by
    the next row's span from its start: both runs begin at the zero-width bos between them. The
    labels are :func:`_labels_bytes`' row by row (the first row trains nothing, the second its token)."""
    import numpy as np

    from reprotune import tokenize as tk

    nbytes = [3, 4, 1]  # bos "<s>" (zero-width where the post-processor adds it), "abcd", "x"
    bs = tk.ByteSpans(nbytes, 1, 0, (), np.array(nbytes, dtype=np.int64))
    texts, spans, rows = ["abcd", "x"], [[(2, 4)], [(0, 1)]], [[0, 1], [0, 2]]
    ids = np.array([i for r in rows for i in r], dtype=np.int32)
    labels, redo = tk._labels_columns(ids, np.array([2, 2], dtype=np.int64), texts, spans, bs)
    want = [tk._labels_bytes(r, t, s, bs) for r, t, s in zip(rows, texts, spans)]
    assert want == [[IGNORE_INDEX, IGNORE_INDEX], [IGNORE_INDEX, 2]] and redo == []
    assert labels.tolist() == want[0] + want[1]
