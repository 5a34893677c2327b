"""Prompt templates: one Jinja file per format; exact bytes and trained spans per built-in,
exact labels with a Llama-family tokenizer, and the saved tokenizer's apply_chat_template
reproducing the trained text."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from reprotune import base_tokenizer, bases, templates, twin
from reprotune.templates import TemplateError, TemplateSourceError
from reprotune.tokenize import IGNORE_INDEX, encode_full, ids_and_offsets

REPO = Path(__file__).resolve().parents[1]
EOS = "</s>"
ORCA_SYSTEM = "You are an AI assistant that follows instruction extremely well. Help as much as you can."
ORCA_INSTRUCTION = ("Write a letter to Sam Altman, CEO of OpenAI, requesting him to convert GPT4 a private model "
                    "by OpenAI to an open source project")
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                 "helpful, detailed, and polite answers to the user's questions.")
SEEDS = ["fashiongpt", "oasst", "tulu", "orca_mini", "alpaca"]
NEW = ["chatml", "vicuna_v1.1", "llama2_chat", "zephyr", "mistral_instruct"]


def rec(*turns, system="", **extra):
    roles = ["user", "assistant"]
    return {"id": "t/0", "source": "t", "system": system,
            "messages": [{"role": roles[i % 2], "content": c} for i, c in enumerate(turns)], **extra}


def trained(name, r, eos=EOS):
    return [s for s, is_trained in templates.get(name).render_segments(r, eos) if is_trained]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """A Llama-2 tokenizer (SentencePiece BPE, byte fallback, <s>/</s>) as the twin builder writes it."""
    corpus = sorted({line for p in (REPO / "fixtures" / "hub").rglob("*.json*") if p.is_file()
                     for line in p.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()})
    d = tmp_path_factory.mktemp("llama2")
    twin.write_tokenizer(corpus, bases.get("meta-llama/Llama-2-13b-hf"), d)
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return d


@pytest.fixture(scope="module")
def llama_tok(llama_dir):
    return base_tokenizer.load(llama_dir)


# ---------------------------------------------------------------- registry
def test_registry_is_the_chat_folder():
    assert templates.names() == ["alpaca", "chatml", "fashiongpt", "llama2_chat", "mistral_instruct", "oasst",
                                 "orca_mini", "raw", "tulu", "vicuna_v1.1", "zephyr"]
    assert sorted(p.name for p in templates.CHAT_DIR.iterdir()) == [f"{n}.jinja" for n in templates.names()]
    with pytest.raises(KeyError) as e:
        templates.get("vicuna")
    assert "vicuna" in str(e.value) and "fashiongpt" in str(e.value) and "zephyr" in str(e.value)


def test_every_builtin_is_documented_and_valid():
    for name in templates.names():
        t = templates.get(name)
        assert t.origin == str(templates.CHAT_DIR / f"{name}.jinja")
        assert t.chat_template.startswith("{#-") and t.description and len(t.description) < 100
        templates.check(t.chat_template)
    for name in NEW + ["oasst", "tulu", "orca_mini", "alpaca", "fashiongpt"]:
        assert "Source:" in templates.get(name).chat_template, name


def test_adding_a_template_is_adding_a_file(tmp_path, monkeypatch):
    (tmp_path / "tulu.jinja").write_text(templates.get("tulu").chat_template)
    (tmp_path / "shout.jinja").write_text(
        "{#- shouting -#}{%- for m in messages -%}{%- if m['role'] == 'assistant' -%}"
        "{%- generation -%}{{- m['content'] | upper + eos_token -}}{%- endgeneration -%}"
        "{%- else -%}{{- m['content'] + ': ' -}}{%- endif -%}{%- endfor -%}")
    monkeypatch.setattr(templates, "CHAT_DIR", tmp_path)
    templates._builtins.cache_clear()
    try:
        assert templates.names() == ["shout", "tulu"]
        assert templates.get("shout").render_segments(rec("Q", "a"), EOS) == [("Q: ", False), ("A</s>", True)]
    finally:
        templates._builtins.cache_clear()


def test_derived_properties():
    assert [n for n in templates.names() if templates.get(n).has_input_block] == ["alpaca", "orca_mini"]
    assert [n for n in templates.names() if not templates.get(n).multi_turn] == ["alpaca", "orca_mini", "raw"]


# ---------------------------------------------------------------- seed formats: exact bytes and spans
def test_fashiongpt_card_format_single_turn():
    t = templates.get("fashiongpt")
    r = rec("What is 2+2?", "4.", system="You are helpful.")
    assert t.render(r, EOS) == "### System:\nYou are helpful.\n### User:\nWhat is 2+2?\n### Assistant:\n4.</s>"
    assert t.render_prompt(r, EOS) == "### System:\nYou are helpful.\n### User:\nWhat is 2+2?\n### Assistant:\n"
    assert t.render_segments(r, EOS) == [
        ("### System:\nYou are helpful.\n### User:\nWhat is 2+2?\n### Assistant:\n", False), ("4.</s>", True)]


def test_fashiongpt_multi_turn_no_system():
    t = templates.get("fashiongpt")
    r = rec("Q1", "A1", "Q2", "A2")
    assert t.render(r, EOS) == "### User:\nQ1\n### Assistant:\nA1</s>\n### User:\nQ2\n### Assistant:\nA2</s>"
    assert trained("fashiongpt", r) == ["A1</s>", "A2</s>"]
    assert t.render_prompt(rec("Q1", "A1", "Q2"), EOS) == "### User:\nQ1\n### Assistant:\nA1</s>\n### User:\nQ2\n### Assistant:\n"


def test_fashiongpt_uses_given_eos():
    assert templates.get("fashiongpt").render(rec("Q", "A"), "<|endoftext|>").endswith("A<|endoftext|>")


def test_oasst_card_examples():
    t = templates.get("oasst")
    # "For the initial response use (the system message is optional)"
    assert t.render_prompt(rec("user prompt", system="system message"), EOS) == \
        "<|system|>system message</s><|prompter|>user prompt</s><|assistant|>"
    # "For multi-turn conversations use"
    assert t.render_prompt(rec("Q1", "A1", "Q2", system="system message"), EOS) == \
        "<|system|>system message</s><|prompter|>Q1</s><|assistant|>A1</s><|prompter|>Q2</s><|assistant|>"
    assert t.render(rec("Q1", "A1", "Q2", "A2", system="system message"), EOS) == \
        "<|system|>system message</s><|prompter|>Q1</s><|assistant|>A1</s><|prompter|>Q2</s><|assistant|>A2</s>"


def test_oasst_empty_system_is_omitted_and_marker_trained():
    t = templates.get("oasst")
    r = rec("Q1", "A1")
    assert t.render(r, EOS) == "<|prompter|>Q1</s><|assistant|>A1</s>"
    assert t.render_segments(r, EOS) == [("<|prompter|>Q1</s><|assistant|>", False), ("A1</s>", True)]
    # the literal </s> is the format's own marker, whatever the tokenizer eos is
    assert t.render(r, "<|endoftext|>") == "<|prompter|>Q1</s><|assistant|>A1</s>"


def test_tulu_card_format():
    t = templates.get("tulu")
    assert t.render_prompt(rec("Your message here!"), EOS) == "<|user|>\nYour message here!\n<|assistant|>\n"
    r = rec("Q1", "A1", "Q2", "A2", system="Be brief.")
    assert t.render(r, EOS) == ("<|system|>\nBe brief.\n<|user|>\nQ1\n<|assistant|>\nA1</s>\n"
                                "<|user|>\nQ2\n<|assistant|>\nA2</s>\n")
    assert trained("tulu", r) == ["A1</s>\n", "A2</s>\n"]


def test_orca_mini_card_generate_text_prompt():
    t = templates.get("orca_mini")
    r = rec(ORCA_INSTRUCTION, "Dear Sam Altman,", system=ORCA_SYSTEM)
    expected_prompt = f"### System:\n{ORCA_SYSTEM}\n\n### User:\n{ORCA_INSTRUCTION}\n\n### Response:\n"
    assert t.render_prompt(r, EOS) == expected_prompt
    assert t.render(r, EOS) == expected_prompt + "Dear Sam Altman,</s>"


def test_orca_mini_with_input_block():
    t = templates.get("orca_mini")
    r = rec("Translate to French.", "Bonjour", system="S", input="Hello")
    assert t.render(r, EOS) == ("### System:\nS\n\n### User:\nTranslate to French.\n\n"
                                "### Input:\nHello\n\n### Response:\nBonjour</s>")
    # empty input: no Input block; empty system: the System block stays (as in the card's code)
    assert t.render(rec("I", "R", input=""), EOS) == "### System:\n\n\n### User:\nI\n\n### Response:\nR</s>"


def test_single_turn_formats_refuse_multi_turn():
    for name in ("orca_mini", "alpaca"):
        with pytest.raises(TemplateError, match=f"^{name}: single-turn format"):
            templates.get(name).render_segments(rec("Q1", "A1", "Q2", "A2"), EOS)
        with pytest.raises(TemplateError, match="single-turn"):
            templates.get(name).render_prompt(rec("Q1", "A1", "Q2"), EOS)


def test_alpaca_platypus_format():
    t = templates.get("alpaca")
    assert t.render(rec("Name a prime.", "7"), EOS) == "### Instruction:\n\nName a prime.\n\n### Response:\n7</s>"
    assert t.render(rec("Add.", "5", input="2 3"), EOS) == \
        "### Instruction:\n\nAdd.\n\n### Input:\n\n2 3\n\n### Response:\n5</s>"
    assert t.render(rec("Q", "A", system="Think step by step."), EOS) == \
        "Think step by step.\n\n### Instruction:\n\nQ\n\n### Response:\nA</s>"
    assert t.render_prompt(rec("Q"), EOS) == "### Instruction:\n\nQ\n\n### Response:\n"


SEED_SEGMENTS = [  # system, input and (where the format allows) two turns: every piece, byte for byte
    ("fashiongpt", rec("Q1", "A1", "Q2", "A2", system="S", input="IN"),
     [("### System:\nS\n### User:\nQ1\n\nIN\n### Assistant:\n", False), ("A1</s>", True),
      ("\n### User:\nQ2\n### Assistant:\n", False), ("A2</s>", True)]),
    ("oasst", rec("Q1", "A1", "Q2", "A2", system="S", input="IN"),
     [("<|system|>S</s><|prompter|>Q1\n\nIN</s><|assistant|>", False), ("A1</s>", True),
      ("<|prompter|>Q2</s><|assistant|>", False), ("A2</s>", True)]),
    ("tulu", rec("Q1", "A1", "Q2", "A2", system="S", input="IN"),
     [("<|system|>\nS\n<|user|>\nQ1\n\nIN\n<|assistant|>\n", False), ("A1</s>\n", True),
      ("<|user|>\nQ2\n<|assistant|>\n", False), ("A2</s>\n", True)]),
    ("orca_mini", rec("Q", "A", input="IN"),
     [("### System:\n\n\n### User:\nQ\n\n### Input:\nIN\n\n### Response:\n", False), ("A</s>", True)]),
    ("alpaca", rec("Q", "A", system="S", input="IN"),
     [("S\n\n### Instruction:\n\nQ\n\n### Input:\n\nIN\n\n### Response:\n", False), ("A</s>", True)]),
    ("tulu", {"system": "", "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
                                         {"role": "assistant", "content": ""}]},
     [("<|system|>\nS\n<|user|>\nQ\n<|assistant|>\n", False), ("</s>\n", True)]),
]


@pytest.mark.parametrize("name,r,segments", SEED_SEGMENTS)
def test_seed_segments_exact(name, r, segments):
    assert templates.get(name).render_segments(r, EOS) == segments


def test_raw_text_records_under_any_template():
    r = {"id": "rp/1", "source": "rp", "text": "Once upon a time."}
    for name in templates.names():
        assert templates.get(name).render_segments(r, EOS) == [("Once upon a time.</s>", True)]
    with pytest.raises(TemplateError, match="^raw: takes plain-text records"):
        templates.get("raw").render_segments(rec("Q", "A"), EOS)


def test_input_folded_into_first_user_message():
    r = rec("Summarize:", "Short.", "More?", "No.", input="Long text")
    assert templates.get("oasst").render(r, EOS) == \
        "<|prompter|>Summarize:\n\nLong text</s><|assistant|>Short.</s><|prompter|>More?</s><|assistant|>No.</s>"
    assert templates.get("tulu").render(r, EOS).startswith("<|user|>\nSummarize:\n\nLong text\n<|assistant|>\n")
    assert templates.get("orca_mini").to_messages(rec("I", "R", input="X"))[0] == \
        {"role": "user", "content": "I", "input": "X"}


def test_bad_roles_rejected():
    bad = {"system": "", "messages": [{"role": "assistant", "content": "x"}]}
    with pytest.raises(TemplateError, match="expected 'user'"):
        templates.get("tulu").render_segments(bad, EOS)
    with pytest.raises(TemplateError, match="end with an assistant"):
        templates.get("tulu").render_segments(rec("Q"), EOS)


# ---------------------------------------------------------------- new built-ins, as published
def test_chatml():
    t = templates.get("chatml")
    r = rec("Q1", "A1", "Q2", "A2", system="S")
    assert t.render_segments(r, EOS) == [
        ("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\n", False),
        ("A1<|im_end|>", True), ("\n<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n", False),
        ("A2<|im_end|>", True), ("\n", False)]
    assert t.render_prompt(rec("Q1"), EOS) == "<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\n"


def test_vicuna_v1_1():
    t = templates.get("vicuna_v1.1")
    r = rec("Hello!", "Hi.", "How are you?", "I am good.")
    assert t.render(r, EOS) == \
        f"{VICUNA_SYSTEM} USER: Hello! ASSISTANT: Hi.</s>USER: How are you? ASSISTANT: I am good.</s>"
    assert trained("vicuna_v1.1", r) == [" Hi.</s>", " I am good.</s>"]
    assert t.render_prompt(rec("Hello!", system="Be terse."), EOS) == "Be terse. USER: Hello! ASSISTANT:"
    assert t.render(rec("Q", "A"), "<|endoftext|>").endswith("ASSISTANT: A</s>")  # FastChat's literal sep2


def test_llama2_chat():
    t = templates.get("llama2_chat")
    r = rec("Q1", "A1", "Q2", "A2", system="S")
    assert t.render_segments(r, EOS) == [
        ("[INST] <<SYS>>\nS\n<</SYS>>\n\nQ1 [/INST]", False), (" A1 </s>", True),
        ("<s>[INST] Q2 [/INST]", False), (" A2 </s>", True)]
    assert t.render_prompt(rec("Q1", "A1", "Q2"), EOS) == "[INST] Q1 [/INST] A1 </s><s>[INST] Q2 [/INST]"
    assert t.render(rec("Q", "A"), "[eos]", bos="[bos]") == "[INST] Q [/INST] A [eos]"
    assert t.render(rec("Q", "A", "Q", "A"), "[eos]", bos="[bos]").count("[bos]") == 1


def test_zephyr():
    t = templates.get("zephyr")
    r = rec("Q1", "A1", "Q2", "A2", system="S")
    assert t.render(r, EOS) == ("<|system|>\nS</s>\n<|user|>\nQ1</s>\n<|assistant|>\nA1</s>\n"
                                "<|user|>\nQ2</s>\n<|assistant|>\nA2</s>\n")
    assert trained("zephyr", r) == ["A1</s>", "A2</s>"]
    assert t.render_prompt(rec("Q1"), EOS) == "<|user|>\nQ1</s>\n<|assistant|>\n"


def test_mistral_instruct():
    t = templates.get("mistral_instruct")
    chat = rec("Hello, how are you?", "I'm doing great. How can I help you today?",
               "I'd like to show off how chat templating works!")
    # the transformers chat-templating guide's output for Mistral-7B-Instruct-v0.1, bos left to the tokenizer
    assert t.render_prompt(chat, EOS) == ("[INST] Hello, how are you? [/INST]I'm doing great. How can I help you "
                                          "today?</s> [INST] I'd like to show off how chat templating works! [/INST]")
    r = rec("Q1", "A1", "Q2", "A2")
    assert t.render_segments(r, EOS) == [("[INST] Q1 [/INST]", False), ("A1</s>", True),
                                         (" [INST] Q2 [/INST]", False), ("A2</s>", True), (" ", False)]
    assert t.render(rec("Q", "A", system="S"), EOS) == "[INST] S\n\nQ [/INST]A</s> "  # system folded


# ---------------------------------------------------------------- labels with a Llama tokenizer
def _trained_runs(tok, enc):
    """The text covered by each run of trained tokens (by the tokens' own offsets)."""
    _, offsets = ids_and_offsets(tok, enc["text"])
    runs, start = [], None
    for i, label in enumerate(enc["labels"] + [IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = i
        elif label == IGNORE_INDEX and start is not None:
            runs.append(enc["text"][offsets[start][0]:offsets[i - 1][1]])
            start = None
    return runs


LABEL_RECORD = rec("What is 12 + 30?", "It is 42.", "And twice?", "Eighty-four, surely.", system="Be brief.")


@pytest.mark.parametrize("name", SEEDS + NEW)
def test_labels_are_exactly_the_generation_spans(llama_tok, name):
    t = templates.get(name)
    r = LABEL_RECORD if t.multi_turn else rec("What is 12 + 30?", "It is 42.", system="Be brief.", input="x")
    enc = encode_full(r, t, llama_tok, 10_000)
    assert enc["input_ids"][0] == llama_tok.bos_token_id and enc["labels"][0] == IGNORE_INDEX
    assert _trained_runs(llama_tok, enc) == trained(name, r)
    kept = [(i, lab) for i, lab in zip(enc["input_ids"], enc["labels"]) if lab != IGNORE_INDEX]
    assert all(i == lab for i, lab in kept)


def test_llama2_chat_bos_per_turn_once_each(llama_tok):
    enc = encode_full(LABEL_RECORD, templates.get("llama2_chat"), llama_tok, 10_000)
    bos = [i for i, x in enumerate(enc["input_ids"]) if x == llama_tok.bos_token_id]
    assert len(bos) == 2 and bos[0] == 0  # the tokenizer's, then the second turn's literal <s>
    assert enc["labels"][bos[1]] == IGNORE_INDEX


# ---------------------------------------------------------------- the saved tokenizer's chat template
@pytest.mark.parametrize("name", templates.names())
def test_saved_tokenizer_apply_chat_template_round_trip(llama_dir, tmp_path, name):
    from transformers import AutoTokenizer

    t = templates.get(name)
    base_tokenizer.copy_tokenizer_files(llama_dir, tmp_path, t.chat_template)
    assert (tmp_path / "chat_template.jinja").read_text(encoding="utf-8") == t.chat_template  # tags kept
    tok = AutoTokenizer.from_pretrained(tmp_path)
    records = [{"text": "Plain text, all trained."}] if name == "raw" else \
        [rec("Q", "A", system="S", input="I"), rec("Q", "A")] + ([LABEL_RECORD] if t.multi_turn else [])
    for r in records:
        messages = t.to_messages(r)
        assert tok.apply_chat_template(messages, tokenize=False) == t.render(r, tok.eos_token, tok.bos_token)
        if name != "raw":
            open_messages = t.to_messages(dict(r, messages=r["messages"][:-1]))
            assert tok.apply_chat_template(open_messages, tokenize=False, add_generation_prompt=True) == \
                t.render_prompt(r, tok.eos_token, tok.bos_token)
        # transformers' own assistant mask (no bos: apply_chat_template adds no special tokens) = our labels
        out = tok.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
        ours = encode_full(r, t, tok, 10_000)
        assert list(out["input_ids"]) == ours["input_ids"][1:]
        assert list(out["assistant_masks"]) == [int(lab != IGNORE_INDEX) for lab in ours["labels"][1:]]


# ---------------------------------------------------------------- checking a template's source
@pytest.mark.parametrize("source,message", [
    ("{% for m in messages %}{{ m['content'] }}\n{% if %}{% endfor %}", r"^Jinja syntax error at line 2: "),
    ("{{ messages[0]['content'] }}", r"^no \{% generation %\} block"),
    ("{# {% generation %}{% endgeneration %} #}{{ messages[0]['content'] }}", r"^no \{% generation %\} block"),
    ("{% generation %}{{ messages[0]['content'] + 1 }}{% endgeneration %}",
     r"^fails on a system/user/assistant conversation: TypeError"),
    ("{% generation %}{{ messages.nope.deeper }}{% endgeneration %}", r"UndefinedError"),
])
def test_check_rejects(source, message):
    with pytest.raises(TemplateSourceError, match=message) as e:
        templates.check(source)
    assert "\n" not in str(e.value)


def test_check_accepts_a_template_that_refuses_the_probe():
    templates.check("{{ raise_exception('no system prompts') if messages[0]['role'] == 'system' }}"
                    "{% generation %}{{ messages[-1]['content'] }}{% endgeneration %}")


def _varied_conversations(n: int = 150):
    """Seeded conversations of 1-3 turns, with and without system, input, odd content."""
    import random

    rnd = random.Random(7)
    words = ["alpha", "{{ x }}", "{% raw %}", "<s>", "</s>", "line\nbreak", "  spaced ", "ünïcode ✓", "", "#"]
    for i in range(n):
        turns = []
        for _ in range(1 + i % 3):
            turns.append({"role": "user", "content": " ".join(rnd.choice(words) for _ in range(rnd.randint(1, 6)))})
            turns.append({"role": "assistant", "content": " ".join(rnd.choice(words) for _ in range(rnd.randint(1, 6)))})
        r = {"id": f"v/{i}", "source": "v", "system": rnd.choice(["", "Be brief.", " sys\n"]), "messages": turns}
        if i % 4 == 0:
            r["input"] = rnd.choice(["some input", "x\ny"])
        yield r if i % 5 else {"id": f"v/{i}", "source": "v", "text": turns[0]["content"] + " " + turns[1]["content"]}


@pytest.mark.parametrize("name", templates.names())
def test_fast_renderer_equals_transformers_renderer(name):
    """The data path's renderer gives transformers' text and generation spans, for every built-in."""
    from reprotune.templates import engine

    t, compared = templates.get(name), 0
    for r in _varied_conversations():
        try:
            messages = t.to_messages(r)
            want = engine.render_reference(t.chat_template, messages, "<s>", "</s>")
        except TemplateError:
            continue
        assert engine.render(t.chat_template, messages, "<s>", "</s>") == want, r["id"]
        prompt = messages[:-1]
        assert engine.render(t.chat_template, prompt, "<s>", "</s>", True) == \
            engine.render_reference(t.chat_template, prompt, "<s>", "</s>", True), r["id"]
        compared += 1
    assert compared >= 25


# generation bodies whose meaning depends on the block being a scope of its own (transformers'
# call block): a plain `set` there is local to the block, so what follows it sees the outer value
_SCOPED_BODIES = {
    "set": "{% set tail = '!' %}{{ m['content'] }}",
    "set tuple": "{% set tail, other = '!', '?' %}{{ m['content'] }}",
    "set block": "{% set tail %}!{% endset %}{{ m['content'] }}",
}


@pytest.mark.parametrize("body", sorted(_SCOPED_BODIES))
def test_generation_body_with_its_own_scope_renders_as_transformers(body, monkeypatch):
    """A generation block that assigns a name keeps transformers' scoping (the call block), and the
    fast renderer still equals transformers' on it; inlined, the same template renders otherwise."""
    from reprotune.templates import engine

    source = ("{% set tail = '' %}{% for m in messages %}{% if m['role'] == 'assistant' %}"
              "{% generation %}" + _SCOPED_BODIES[body] + "{% endgeneration %}[{{ tail }}]"
              "{% else %}{{ m['content'] }}{% endif %}{% endfor %}")
    msgs = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]
    engine.check(source)
    assert engine.render(source, msgs, "<s>", "</s>") == ("ua[]", [(1, 2)])
    assert engine.render(source, msgs, "<s>", "</s>") == engine.render_reference(source, msgs, "<s>", "</s>")
    engine._fast.cache_clear()
    monkeypatch.setattr(engine, "_scoped", lambda body: False)
    try:
        assert engine.render(source, msgs, "<s>", "</s>") == ("ua[!]", [(1, 2)])  # why the fallback exists
    finally:
        engine._fast.cache_clear()


def test_generation_body_without_a_scope_of_its_own_is_inlined():
    """Every built-in's generation blocks (and a namespace assignment, which changes the same object
    in both) are plain output around the body: no macro call per block."""
    import jinja2.nodes as nodes

    from reprotune.templates import engine

    ns = ("{% set ns = namespace(n=0) %}{% for m in messages %}{% if m['role'] == 'assistant' %}"
          "{% generation %}{% set ns.n = ns.n + 1 %}{{ m['content'] }}{% endgeneration %}{{ ns.n }}"
          "{% else %}{{ m['content'] }}{% endif %}{% endfor %}")
    msgs = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}] * 2
    assert engine.render(ns, msgs, "<s>", "</s>") == engine.render_reference(ns, msgs, "<s>", "</s>")
    for source in [ns] + [templates.get(n).chat_template for n in templates.names()]:
        tree = engine._fast(source)[0].environment.parse(source)
        assert not list(tree.find_all(nodes.CallBlock)), source[:60]


def test_marker_characters_in_content_take_the_reference_path():
    from reprotune.templates import engine

    t = templates.get("chatml")
    msgs = [{"role": "user", "content": "a \ue000 b"}, {"role": "assistant", "content": "c \ue001"}]
    text, spans = engine.render(t.chat_template, msgs, "<s>", "</s>")
    assert "\ue000" in text and "\ue001" in text
    assert (text, spans) == engine.render_reference(t.chat_template, msgs, "<s>", "</s>")


def test_unmark_finds_every_marker():
    """``engine._unmark`` (``str.find``) cuts the markers as a regex scan does, in any order or nesting."""
    import random
    import re

    from reprotune.templates.engine import CLOSE, OPEN, _unmark

    def by_regex(marked):
        text, spans, length, start, at = [], [], 0, 0, 0
        for m in re.finditer(f"[{OPEN}{CLOSE}]", marked):
            text.append(marked[at:m.start()])
            length += m.start() - at
            if m.group() == OPEN:
                start = length
            else:
                spans.append((start, length))
            at = m.end()
        return "".join(text) + marked[at:], spans

    rng = random.Random(0)
    for _ in range(5000):
        marked = "".join(rng.choice(["a", "bb", OPEN, CLOSE, " ", "\u00e9"]) for _ in range(rng.randrange(0, 12)))
        assert _unmark(marked) == by_regex(marked), marked
