"""Offsets-based assistant-only labels, truncation and drop counting."""
from __future__ import annotations

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
