import random

import pytest

from reprotune.filters import FilterError, apply_filters, known


def chat(i, *turns, system="", source="s"):
    roles = ["user", "assistant"]
    return {"id": f"{source}/{i}", "source": source, "system": system,
            "messages": [{"role": roles[k % 2], "content": t} for k, t in enumerate(turns)]}


def text(i, t, source="t"):
    return {"id": f"{source}/{i}", "source": source, "text": t}


def ids(rows):
    return [r["id"] for r in rows]


def run(records, *specs):
    return apply_filters(records, list(specs))


def test_known_filters_and_unknown_name():
    assert {"empty_turns", "alternating", "refusals", "identity", "length",
            "exact_dedup", "near_dedup"} <= set(known())
    with pytest.raises(FilterError) as ei:
        run([chat(0, "q", "a")], {"name": "nope"})
    msg = str(ei.value)
    assert "nope" in msg and "near_dedup" in msg and "\n" not in msg
    with pytest.raises(FilterError, match="length"):
        run([], {"name": "length", "max_charz": 3})


def test_empty_turns():
    recs = [chat(0, "q", "a"), chat(1, "q", "   "), chat(2, "", "a"), chat(3, "q", "a", "q2", "\n\t"),
            {"id": "s/4", "source": "s", "system": "", "messages": []},
            text(5, "hello"), text(6, "  ")]
    kept, rej, stats = run(recs, {"name": "empty_turns"})
    assert ids(kept) == ["s/0", "t/5"]
    assert ids(rej) == ["s/1", "s/2", "s/3", "s/4", "t/6"]
    assert all(r["reason"] == "filter:empty_turns" for r in rej)
    assert rej[0]["row"] == recs[1]
    assert stats == [{"name": "empty_turns", "in": 7, "out": 2, "dropped": 5}]


def test_alternating():
    bad_start = {"id": "s/1", "source": "s", "system": "",
                 "messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]}
    double_user = {"id": "s/2", "source": "s", "system": "",
                   "messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "q"},
                                {"role": "assistant", "content": "a"}]}
    recs = [chat(0, "q", "a", "q", "a"), bad_start, double_user, chat(3, "q", "a", "q"), text(4, "x")]
    kept, rej, stats = run(recs, {"name": "alternating"})
    assert ids(kept) == ["s/0", "t/4"]
    assert stats[0]["dropped"] == 3
    kept, _, _ = run(recs, {"name": "alternating", "last": None})
    assert ids(kept) == ["s/0", "s/3", "t/4"]


def test_refusals_case_insensitive_assistant_only():
    recs = [
        chat(0, "Tell me a joke", "Why did the chicken cross the road?"),
        chat(1, "q", "AS AN AI LANGUAGE MODEL, I have no feelings."),
        chat(2, "As an AI language model, what do you think?", "I think it is fine."),  # user turn only
        chat(3, "q", "Sure.", "q2", "I\u2019m sorry, but I cannot help with that."),     # curly apostrophe, 2nd turn
        chat(4, "q", "I cannot fulfill this request."),
        text(5, "as an ai language model"),                                          # text passes
    ]
    kept, rej, stats = run(recs, {"name": "refusals"})
    assert ids(kept) == ["s/0", "s/2", "t/5"]
    assert ids(rej) == ["s/1", "s/3", "s/4"]
    assert stats == [{"name": "refusals", "in": 6, "out": 3, "dropped": 3}]


def test_refusals_phrases_file_override(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("# comment\n\nbanana split\n")
    recs = [chat(0, "q", "As an AI language model..."), chat(1, "q", "A BANANA  SPLIT please")]
    kept, rej, _ = run(recs, {"name": "refusals", "phrases_file": str(f)})
    assert ids(kept) == ["s/0"] and ids(rej) == ["s/1"]
    with pytest.raises(FilterError, match="not found"):
        run(recs, {"name": "refusals", "phrases_file": str(tmp_path / "missing.txt")})


def test_identity_word_boundary():
    recs = [
        chat(0, "q", "I was trained by OpenAI."),
        chat(1, "q", "I am ChatGPT, a large language model."),
        chat(2, "q", "Unlike GPT-4, I am small."),
        chat(3, "q", "gpt-3.5 said so"),
        chat(4, "Are you chatgpt?", "No, I am Samantha."),     # only the user says it
        chat(5, "q", "The chatgptish logo and openaire project."),  # not whole words
        chat(6, "q", "Plain answer."),
    ]
    kept, rej, stats = run(recs, {"name": "identity"})
    assert ids(kept) == ["s/4", "s/5", "s/6"]
    assert stats[0]["dropped"] == 4


def test_length_chars_and_tokens():
    recs = [chat(0, "ab", "cd"), chat(1, "abcdef", "ghij"), chat(2, "x" * 30, "y" * 30),
            text(3, "one two three four five six")]
    kept, _, stats = run(recs, {"name": "length", "min_chars": 5, "max_chars": 40})
    assert ids(kept) == ["s/1", "t/3"]
    assert stats[0] == {"name": "length", "in": 4, "out": 2, "dropped": 2}
    kept, _, _ = run(recs, {"name": "length", "min_tokens": 3, "max_tokens": 5})
    assert ids(kept) == []
    kept, _, _ = run(recs, {"name": "length", "max_tokens": 2})
    assert ids(kept) == ["s/0", "s/1", "s/2"]


def test_exact_dedup_keeps_first():
    recs = [chat(0, "Hello  World", "Hi"), chat(1, "hello world", "HI "),  # dup after normalisation
            chat(2, "hello world", "hi", system="be nice"),                  # system differs
            chat(3, "\uff28ello world", "hi"),                               # NFKC full-width H
            text(4, "Same text"), text(5, "same   TEXT"), text(6, "other")]
    kept, rej, stats = run(recs, {"name": "exact_dedup"})
    assert ids(kept) == ["s/0", "s/2", "t/4", "t/6"]
    assert ids(rej) == ["s/1", "s/3", "t/5"]
    assert stats[0]["dropped"] == 3


def _words(n, seed):
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(5000)]
    return [rng.choice(vocab) for _ in range(n)]


def test_near_dedup_one_word_changed():
    base = _words(300, 1)
    changed = list(base)
    changed[150] = "zzzchanged"
    other = _words(300, 2)
    recs = [chat(0, "Question?", " ".join(base)), chat(1, "Question?", " ".join(changed)),
            chat(2, "Question?", " ".join(other)),
            text(3, " ".join(base)), text(4, " ".join(changed))]
    kept, rej, stats = run(recs, {"name": "near_dedup"})
    # the text copy of `base` differs only by the "Question?" prefix from record 0: also a near dup
    assert ids(kept) == ["s/0", "s/2"]
    assert ids(rej) == ["s/1", "t/3", "t/4"]
    assert all(r["reason"] == "filter:near_dedup" for r in rej)
    # deterministic
    assert run(recs, {"name": "near_dedup"}) == (kept, rej, stats)
    # a strict threshold keeps the one-word variant
    kept2, _, _ = run(recs[:3], {"name": "near_dedup", "threshold": 0.99, "num_perm": 512})
    assert ids(kept2) == ["s/0", "s/1", "s/2"]
    with pytest.raises(FilterError, match="num_perm"):
        run(recs, {"name": "near_dedup", "threshold": 0.99})


def test_filter_order_and_stats():
    recs = [
        chat(0, "q", "a fine answer here"),
        chat(1, "q", ""),                                   # empty
        chat(2, "q", "As an AI language model, no."),       # refusal
        chat(3, "q", "a fine answer here"),                 # exact dup of 0
        chat(4, "q", "As an AI language model, no."),       # refusal AND dup of 2
        chat(5, "q", "x"),                                  # too short
    ]
    specs = [{"name": "empty_turns"}, {"name": "refusals"}, {"name": "exact_dedup"},
             {"name": "length", "min_chars": 5}]
    kept, rej, stats = apply_filters(recs, specs)
    assert ids(kept) == ["s/0"]
    assert [r["reason"] for r in rej] == ["filter:empty_turns", "filter:refusals", "filter:exact_dedup",
                                          "filter:refusals", "filter:length"]
    assert stats == [
        {"name": "empty_turns", "in": 6, "out": 5, "dropped": 1},
        {"name": "refusals", "in": 5, "out": 3, "dropped": 2},
        {"name": "exact_dedup", "in": 3, "out": 2, "dropped": 1},
        {"name": "length", "in": 2, "out": 1, "dropped": 1},
    ]
    # dedup before refusals: record 4 is now counted as a duplicate of 2
    _, rej2, stats2 = apply_filters(recs, [specs[0], specs[2], specs[1]])
    assert [s["dropped"] for s in stats2] == [1, 2, 1]
    assert apply_filters(recs, []) == (recs, [], [])


def _wordlevel_tokenizer(d):
    """A tokenizer.json that splits on whitespace AND punctuation (so counts differ from str.split)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    d.mkdir(parents=True, exist_ok=True)
    tok.save(str(d / "tokenizer.json"))
    return d


def test_length_tokens_with_base_tokenizer(tmp_path):
    from reprotune.filters import make

    tdir = _wordlevel_tokenizer(tmp_path / "base")
    recs = [chat(0, "hello, world!", "ok."), chat(1, "one two", "three"), text(2, "a,b,c")]
    # whitespace words: 3, 3, 1 -- tokenizer tokens: 6 (hello , world ! ok .), 3, 5 (a , b , c)
    kept, _, _ = run(recs, {"name": "length", "max_tokens": 3})
    assert ids(kept) == ["s/0", "s/1", "t/2"]
    kept, rejects, stats = apply_filters(recs, [{"name": "length", "max_tokens": 3, "tokenizer": "base"}],
                                         {"tokenizer_dir": str(tdir)})
    assert ids(kept) == ["s/1"] and [r["reason"] for r in rejects] == ["filter:length"] * 2
    assert stats == [{"name": "length", "in": 3, "out": 1, "dropped": 2}]
    kept, _, _ = run(recs, {"name": "length", "min_tokens": 5, "tokenizer": str(tdir)})
    assert ids(kept) == ["s/0", "t/2"]
    with pytest.raises(FilterError, match="tokenizer 'base' needs the base model directory"):
        make({"name": "length", "max_tokens": 3, "tokenizer": "base"})


def test_lang_filter_on_record_field():
    recs = [dict(chat(0, "q", "a"), lang="en"), dict(chat(1, "q", "b"), lang="de"), chat(2, "q", "c")]
    kept, _, stats = run(recs, {"name": "lang", "allow": ["en"]})
    assert ids(kept) == ["s/0", "s/2"] and stats[0]["dropped"] == 1
    kept, _, _ = run(recs, {"name": "lang", "allow": "de", "missing": "drop"})
    assert ids(kept) == ["s/1"]
    with pytest.raises(FilterError, match="missing"):
        run(recs, {"name": "lang", "allow": ["en"], "missing": "maybe"})


def test_every_filter_counted_in_order_even_when_earlier_ones_drop():
    recs = [chat(0, "", "x"), chat(1, "q", "As an AI language model, no."), chat(2, "q", "a"), chat(3, "q", "a"),
            dict(chat(4, "q2", "a2"), lang="fr")]
    specs = [{"name": "empty_turns"}, {"name": "refusals"}, {"name": "lang", "allow": "en"},
             {"name": "exact_dedup"}, {"name": "near_dedup", "threshold": 0.9}]
    kept, rejects, stats = run(recs, *specs)
    assert ids(kept) == ["s/2"]
    assert [(s["name"], s["in"], s["dropped"]) for s in stats] == [
        ("empty_turns", 5, 1), ("refusals", 4, 1), ("lang", 3, 1), ("exact_dedup", 2, 1), ("near_dedup", 1, 0)]
    assert [(r["id"], r["reason"]) for r in rejects] == [  # record order
        ("s/0", "filter:empty_turns"), ("s/1", "filter:refusals"), ("s/3", "filter:exact_dedup"),
        ("s/4", "filter:lang")]


def test_hashset64_matches_a_python_set_across_grows():
    from reprotune.filters import HashSet64

    hs = HashSet64(flush=50)  # merges into the sorted part (and remaps it) many times below
    rng = random.Random(1)
    vals = [rng.getrandbits(64) for _ in range(3000)]
    vals += [k << 32 for k in range(500)] + list(range(1, 500)) + [2**64 - 1, 0]  # structured ints cluster
    vals += vals[::7]  # repeats, after the grows that moved their first copies
    ref: set[int] = set()
    for v in vals:
        assert hs.add(v) == (v not in ref)
        ref.add(v)
    assert len(hs) == len(ref)
    assert all(v in hs for v in ref)
    assert [hs.add(v) for v in vals] == [False] * len(vals)  # everything found after the last grow
    assert sum(rng.getrandbits(64) in hs for _ in range(2000)) == 0
    for bad in (2**64, -1):
        with pytest.raises(ValueError):
            hs.add(bad)
    assert len(hs) == len(ref)
