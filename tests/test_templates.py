"""Prompt templates: byte-exact strings from the seed cards, chat_template == render_segments."""
from __future__ import annotations

import pytest

from reprotune import templates
from reprotune.templates import TemplateError

EOS = "</s>"
ORCA_SYSTEM = "You are an AI assistant that follows instruction extremely well. Help as much as you can."
ORCA_INSTRUCTION = ("Write a letter to Sam Altman, CEO of OpenAI, requesting him to convert GPT4 a private model "
                    "by OpenAI to an open source project")


def rec(*turns, system="", **extra):
    roles = ["user", "assistant"]
    return {"id": "t/0", "source": "t", "system": system,
            "messages": [{"role": roles[i % 2], "content": c} for i, c in enumerate(turns)], **extra}


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import PreTrainedTokenizerFast

    from reprotune.tinybase import train_tokenizer

    tok = train_tokenizer(["hello world", "the quick brown fox"], vocab_size=300, min_frequency=1)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


# ---------------------------------------------------------------- registry
def test_registry_names_and_unknown():
    assert templates.names() == ["alpaca", "fashiongpt", "oasst", "orca_mini", "raw", "tulu"]
    with pytest.raises(KeyError) as e:
        templates.get("vicuna")
    assert "vicuna" in str(e.value) and "fashiongpt" in str(e.value) and "tulu" in str(e.value)


# ---------------------------------------------------------------- fashiongpt
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
    assert [s for s, trained in t.render_segments(r, EOS) if trained] == ["A1</s>", "A2</s>"]
    assert t.render_prompt(rec("Q1", "A1", "Q2"), EOS) == "### User:\nQ1\n### Assistant:\nA1</s>\n### User:\nQ2\n### Assistant:\n"


def test_fashiongpt_uses_given_eos():
    assert templates.get("fashiongpt").render(rec("Q", "A"), "<|endoftext|>").endswith("A<|endoftext|>")


# ---------------------------------------------------------------- oasst
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


# ---------------------------------------------------------------- tulu
def test_tulu_card_format():
    t = templates.get("tulu")
    assert t.render_prompt(rec("Your message here!"), EOS) == "<|user|>\nYour message here!\n<|assistant|>\n"
    r = rec("Q1", "A1", "Q2", "A2", system="Be brief.")
    assert t.render(r, EOS) == ("<|system|>\nBe brief.\n<|user|>\nQ1\n<|assistant|>\nA1</s>\n"
                                "<|user|>\nQ2\n<|assistant|>\nA2</s>\n")
    assert [s for s, trained in t.render_segments(r, EOS) if trained] == ["A1</s>\n", "A2</s>\n"]


# ---------------------------------------------------------------- orca_mini
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


def test_single_turn_formats_reject_multi_turn():
    for name in ("orca_mini", "alpaca"):
        with pytest.raises(TemplateError, match="single-turn"):
            templates.get(name).render_segments(rec("Q1", "A1", "Q2", "A2"), EOS)


# ---------------------------------------------------------------- alpaca / platypus
def test_alpaca_platypus_format():
    t = templates.get("alpaca")
    assert t.render(rec("Name a prime.", "7"), EOS) == "### Instruction:\n\nName a prime.\n\n### Response:\n7</s>"
    assert t.render(rec("Add.", "5", input="2 3"), EOS) == \
        "### Instruction:\n\nAdd.\n\n### Input:\n\n2 3\n\n### Response:\n5</s>"
    assert t.render(rec("Q", "A", system="Think step by step."), EOS) == \
        "Think step by step.\n\n### Instruction:\n\nQ\n\n### Response:\nA</s>"
    assert t.render_prompt(rec("Q"), EOS) == "### Instruction:\n\nQ\n\n### Response:\n"


# ---------------------------------------------------------------- raw + input folding
def test_raw_text_records_under_any_template():
    r = {"id": "rp/1", "source": "rp", "text": "Once upon a time."}
    for name in templates.names():
        assert templates.get(name).render_segments(r, EOS) == [("Once upon a time.</s>", True)]
    with pytest.raises(TemplateError):
        templates.get("raw").render_segments(rec("Q", "A"), EOS)


def test_input_folded_into_first_user_message():
    r = rec("Summarize:", "Short.", "More?", "No.", input="Long text")
    assert templates.get("oasst").render(r, EOS) == \
        "<|prompter|>Summarize:\n\nLong text</s><|assistant|>Short.</s><|prompter|>More?</s><|assistant|>No.</s>"
    assert templates.get("tulu").render(r, EOS).startswith("<|user|>\nSummarize:\n\nLong text\n<|assistant|>\n")


def test_bad_roles_rejected():
    bad = {"system": "", "messages": [{"role": "assistant", "content": "x"}]}
    with pytest.raises(TemplateError, match="expected 'user'"):
        templates.get("tulu").render_segments(bad, EOS)
    with pytest.raises(TemplateError, match="end with an assistant"):
        templates.get("tulu").render_segments(rec("Q"), EOS)


# ---------------------------------------------------------------- chat_template equivalence
CASES = [
    rec("Hi", "Hello!"),
    rec("Hi", "Hello!", system="You are a bot."),
    rec("Q1", "A1", "Q2", "A2", "Q3", "A3", system="Sys"),
    rec("Q1", "A1", "Q2", "A2"),
    rec("Do it", "Done", input="the input", system="S"),
    rec("Do it", "Done", input="the input"),
    rec("multi\nline {{ not jinja }} %}", "answer with 'quotes' and \"dq\"\n\n", system="s\n"),
]


@pytest.mark.parametrize("name", ["fashiongpt", "oasst", "tulu", "orca_mini", "alpaca"])
def test_chat_template_matches_render(tokenizer, name):
    t = templates.get(name)
    tokenizer.chat_template = t.chat_template
    checked = 0
    for r in CASES:
        if not t.multi_turn and sum(m["role"] == "user" for m in r["messages"]) > 1:
            with pytest.raises(Exception):
                tokenizer.apply_chat_template(t.to_messages(r), tokenize=False)
            continue
        messages = t.to_messages(r)
        if r["system"]:
            assert messages[0] == {"role": "system", "content": r["system"]}
        assert tokenizer.apply_chat_template(messages, tokenize=False) == \
            "".join(text for text, _ in t.render_segments(r, tokenizer.eos_token))
        open_r = dict(r, messages=r["messages"][:-1])
        assert tokenizer.apply_chat_template(t.to_messages(open_r), tokenize=False, add_generation_prompt=True) == \
            t.render_prompt(open_r, tokenizer.eos_token) == t.render_prompt(r, tokenizer.eos_token)
        checked += 1
    assert checked >= 4


def test_raw_chat_template(tokenizer):
    t = templates.get("raw")
    tokenizer.chat_template = t.chat_template
    r = {"text": "plain text"}
    assert tokenizer.apply_chat_template(t.to_messages(r), tokenize=False) == t.render(r, tokenizer.eos_token)
