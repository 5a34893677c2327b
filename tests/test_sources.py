"""Source readers: registry, per-format normalization on the fixture mirror,
oasst1 tree cases, SchemaError, Puffin string conversations, text chunking, the
generic conversations/instruction layouts, presets, option checks at recipe load."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from reprotune import sources
from reprotune.sources import SchemaError
from reprotune.sources._common import MAX_STR, UniqueIds, excerpt
from reprotune.sources.text import chunk_text

HUB = Path(__file__).resolve().parents[1] / "fixtures" / "hub" / "datasets"
OASST = ["OpenAssistant/oasst1/data/train-00000-of-00001-b42a775f407cee45.parquet",
         "OpenAssistant/oasst1/data/validation-00000-of-00001-134b8fd0c89408b6.parquet"]

# source name -> (format, files, options)
HERMES = "teknium/OpenHermes-2.5/openhermes2_5.json"

FIXTURE_SOURCES = {
    "oasst1": ("oasst1", OASST, {}),
    "samantha": ("sharegpt", ["ehartford/samantha-data/samantha-1.1.json"], {"key": "conversations"}),
    "airoboros": ("airoboros", ["jondurbin/airoboros-gpt4-1.4.1/instructions.jsonl"], {}),
    "misconception": ("airoboros", ["jondurbin/airoboros-gpt4-1.4.1/instructions.jsonl"], {"category": "misconception"}),
    "orca_gpt4": ("openorca", ["Open-Orca/OpenOrca/1M-GPT4-Augmented.parquet"], {}),
    "orca_gpt35": ("openorca", ["Open-Orca/OpenOrca/3_5M-GPT3_5-Augmented.parquet"], {}),
    "platypus": ("platypus", ["garage-bAInd/Open-Platypus/data/train-00000-of-00001-4fe2df04669d1669.parquet"], {}),
    "dolphin": ("dolphin", ["ehartford/dolphin/flan1m-alpaca-uncensored-deduped.jsonl"], {}),
    "orca_chat": ("orca_chat", ["shahules786/orca-chat/orca-chat-gpt4.json"], {}),
    "openchat": ("sharegpt", ["openchat/openchat_sharegpt4_dataset/sharegpt_gpt4.json"], {"key": "items"}),
    "puffin": ("sharegpt", ["LDJnr/Puffin/LDJnr_Puffin.json"], {}),
    "tulu": ("tulu_v2", ["allenai/tulu-v2-sft-mixture/data/train-00000-of-00003-99ee8754042a69f6.parquet"], {}),
    "alpaca_orca": ("orca_mini", ["psmathur/alpaca_orca/alpaca_orca.json"], {}),
    "dolly_orca": ("orca_mini", ["psmathur/dolly-v2_orca/dolly-v2_orca.json"], {}),
    "wizardlm_orca": ("orca_mini", ["psmathur/WizardLM_Orca/wizardlm_orca.json"], {}),
    "c4": ("text", ["togethercomputer/RedPajama-Data-1T-Sample/c4_sample.jsonl"], {}),
    "wikipedia": ("text", ["togethercomputer/RedPajama-Data-1T-Sample/wikipedia_sample.jsonl"], {}),
    "fanfics": ("text", ["atom-in-the-universe/fanfics-10k-50k/data/train-00000-of-00001.parquet"], {}),
    "openhermes": ("conversations", [HERMES], {"id_key": "id"}),
}

# source name -> (records, {reject reason: count}) with the options above
EXPECTED_COUNTS = {
    "oasst1": (22, {"deleted": 4, "lang": 3, "no_assistant_reply": 1, "orphan": 1, "review_failed": 1,
                    "synthetic": 1, "tree_state": 2}),
    "samantha": (58, {"first_not_user": 1, "last_not_assistant": 1, "missing_field": 1,
                      "non_alternating": 1, "null_field": 1}),
    "airoboros": (102, {"bad_json": 1, "missing_field": 1, "null_field": 1}),
    "misconception": (20, {"bad_json": 1, "category": 82, "missing_field": 1, "null_field": 1}),
    "orca_gpt4": (79, {"null_field": 1}),
    "orca_gpt35": (79, {"null_field": 1}),
    "platypus": (59, {"null_field": 1}),
    "dolphin": (81, {"bad_json": 1, "missing_field": 1}),
    "orca_chat": (45, {"bad_type": 1, "empty_conversation": 4}),
    "openchat": (47, {"first_not_user": 1, "non_alternating": 1, "unknown_role": 1}),
    "puffin": (38, {"bad_json": 1, "last_not_assistant": 1}),
    "tulu": (96, {"last_not_assistant": 1, "non_alternating": 2, "system_not_first": 1}),
    "alpaca_orca": (49, {"missing_field": 1}),
    "dolly_orca": (50, {"bad_type": 1}),
    "wizardlm_orca": (50, {}),
    "c4": (40, {}),
    "wikipedia": (30, {}),
    "fanfics": (20, {}),
    "openhermes": (32, {"bad_type": 1, "empty_conversation": 1, "last_not_assistant": 1, "null_field": 1,
                        "system_not_first": 1, "unknown_role": 1}),
}


def run(name: str, **override) -> list[dict]:
    fmt, files, options = FIXTURE_SOURCES[name]
    options = {**options, **override}
    return list(sources.get(fmt)([HUB / f for f in files], options, name))


def by_id(outputs: list[dict]) -> dict[str, dict]:
    return {o["id"]: o for o in outputs}


def split(outputs):
    records = [o for o in outputs if "reason" not in o]
    rejects = Counter(o["reason"] for o in outputs if "reason" in o)
    return records, dict(rejects)


# ============================================================================ registry
def test_registry_names_and_get():
    assert sources.names() == ["airoboros", "conversations", "dolphin", "instruction", "oasst1", "openorca",
                               "orca_chat", "orca_mini", "platypus", "sharegpt", "text", "tulu_v2"]
    for name in sources.names():
        assert callable(sources.get(name))
    with pytest.raises(KeyError) as exc:
        sources.get("alpaca")
    msg = str(exc.value)
    assert "unknown source format 'alpaca'" in msg
    assert ("known formats: airoboros, conversations, dolphin, instruction, oasst1, openorca, orca_chat, orca_mini, "
            "platypus, sharegpt, text, tulu_v2") in msg


def test_register_rejects_duplicate_names():
    with pytest.raises(ValueError, match="already registered"):
        sources.register("oasst1")(lambda files, options=None, source=None: iter(()))


def test_defaults_and_unknown_options():
    assert sources.defaults("oasst1") == {"lang": ["en"], "tree_state": "ready_for_export", "review_result": True,
                                          "drop_deleted": True, "drop_synthetic": True, "select": "best"}
    assert sources.defaults("sharegpt") == {"key": "conversations", "id_key": "id"}
    assert sources.defaults("text") == {"text_field": "text", "max_chunk_size": None}
    assert sources.defaults("openorca") == {"id_prefixes": None}
    assert sources.defaults("airoboros") == {"category": None}
    with pytest.raises(ValueError, match=r"dolphin: unknown option\(s\) \['lang'\]"):
        list(sources.get("dolphin")([], {"lang": "en"}, "d"))


def test_source_defaults_to_format_name():
    out = list(sources.read("platypus", [HUB / FIXTURE_SOURCES["platypus"][1][0]]))
    assert out[0]["source"] == "platypus" and out[0]["id"].startswith("platypus/")


# ============================================================================ fixture counts
@pytest.mark.parametrize("name", sorted(FIXTURE_SOURCES))
def test_fixture_counts(name):
    outputs = run(name)
    records, rejects = split(outputs)
    assert (len(records), rejects) == EXPECTED_COUNTS[name]
    ids = [o["id"] for o in outputs]
    assert len(ids) == len(set(ids)), "ids must be unique"
    assert all(o["source"] == name and o["id"].startswith(name + "/") for o in outputs)
    for rec in records:
        if "text" in rec:
            assert set(rec) == {"id", "source", "text"} and isinstance(rec["text"], str)
            continue
        assert set(rec) <= {"id", "source", "system", "messages", "input"}
        msgs = rec["messages"]
        assert [m["role"] for m in msgs] == ["user", "assistant"] * (len(msgs) // 2)
        assert all(set(m) == {"role", "content"} and isinstance(m["content"], str) for m in msgs)
        assert isinstance(rec["system"], str)
        if "input" in rec:
            assert rec["input"].strip()


def test_fixture_reading_is_deterministic():
    for name in ("oasst1", "tulu", "samantha"):
        assert run(name) == run(name)


# ============================================================================ exact records
def test_airoboros_records():
    out = by_id(run("airoboros"))
    assert out["airoboros/0"] == {"id": "airoboros/0", "source": "airoboros", "system": "", "messages": [
        {"role": "user", "content": "What is 91 plus 58?"},
        {"role": "assistant", "content": "91 plus 58 equals 149."}]}
    assert out["airoboros/50"] == {"id": "airoboros/50", "source": "airoboros", "reason": "bad_json",
                                   "row": "{\"instruction\": \"What is the capital of France?\", \"respo"}
    assert out["airoboros/60"] == {"id": "airoboros/60", "source": "airoboros", "reason": "missing_field",
                                   "row": {"instruction": "Name three colors.", "category": "general"}}
    assert out["airoboros/70"]["reason"] == "null_field"
    mis = by_id(run("misconception"))
    assert mis["misconception/86"] == {"id": "misconception/86", "source": "misconception", "system": "", "messages": [
        {"role": "user", "content": "Are bats blind?"},
        {"role": "assistant", "content": "No. Bats can see, and many species also use echolocation to hunt in the dark."}]}
    assert mis["misconception/0"]["reason"] == "category"


def test_samantha_records():
    out = by_id(run("samantha"))
    assert out["samantha/5"] == {"id": "samantha/5", "source": "samantha", "system": "", "messages": [
        {"role": "user", "content": "Write 2 sentences about Nico visiting the river bank."},
        {"role": "assistant", "content": ""}]}  # empty turn kept: filters drop it, not the reader
    assert out["samantha/7#2"]["messages"] == out["samantha/7"]["messages"]  # duplicate id made unique
    assert out["samantha/58"]["reason"] == "non_alternating"
    assert out["samantha/58"]["row"]["conversations"][1] == {"from": "human", "value": "Hello?"}
    assert out["samantha/59"]["reason"] == "first_not_user"
    assert out["samantha/60"]["reason"] == "last_not_assistant"
    assert out["samantha/61"] == {"id": "samantha/61", "source": "samantha", "reason": "null_field",
                                  "row": {"id": "61", "conversations": None}}
    assert out["samantha/62"] == {"id": "samantha/62", "source": "samantha", "reason": "missing_field",
                                  "row": {"id": "62"}}


def test_openorca_records_and_prefixes():
    out = by_id(run("orca_gpt4"))
    assert out["orca_gpt4/flan.480640"] == {
        "id": "orca_gpt4/flan.480640", "source": "orca_gpt4",
        "system": "You are an AI assistant that helps people find information.",
        "messages": [{"role": "user", "content": "What is 25 minus 22?"},
                     {"role": "assistant", "content": "25 minus 22 equals 3."}]}
    assert out["orca_gpt4/flan.324923"]["reason"] == "null_field"
    assert out["orca_gpt4/flan.324923"]["row"]["question"] is None
    records, rejects = split(run("orca_gpt4", id_prefixes=["cot"]))
    assert len(records) == 20 and rejects == {"id_prefix": 59, "null_field": 1}
    assert all(r["id"].startswith("orca_gpt4/cot.") for r in records)
    records, rejects = split(run("orca_gpt4", id_prefixes=["cot.", "niv."]))
    assert len(records) == 40 and rejects == {"id_prefix": 39, "null_field": 1}


def test_platypus_input():
    out = by_id(run("platypus"))
    assert out["platypus/12"] == {
        "id": "platypus/12", "source": "platypus", "system": "",
        "messages": [{"role": "user", "content": "Which statement is best supported by the passage above?"},
                     {"role": "assistant", "content": "46 minus 27 equals 19."}],
        "input": "The museum guide thought that the kitchen window looked sharp and gentle early in the morning. "
                 "During the festival, the volunteers cleaned the northern road as the radio played softly."}
    assert "input" not in out["platypus/0"]


def test_dolphin_records():
    out = by_id(run("dolphin"))
    assert out["dolphin/15"] == {
        "id": "dolphin/15", "source": "dolphin",
        "system": "You are an AI assistant. You will be given a task. You must generate a detailed and long answer.",
        "messages": [{"role": "user", "content": "Give me a short guide to learn a new language."},
                     {"role": "assistant", "content": ""}]}
    assert out["dolphin/33"]["reason"] == "bad_json"
    assert out["dolphin/47"] == {"id": "dolphin/47", "source": "dolphin", "reason": "missing_field",
                                 "row": {"instruction": "", "input": "Count to three."}}


def test_orca_chat_records():
    out = by_id(run("orca_chat"))
    assert out["orca_chat/13"] == {"id": "orca_chat/13", "source": "orca_chat", "system": "", "messages": [
        {"role": "user", "content": "Definition: In this task, you are given a short review. Classify it as "
                                    "\"positive\" or \"negative\".\nInput: The bus ride was helpful, every summer.\nOutput:"},
        {"role": "assistant", "content": "positive\n\nThe review calls it helpful, which expresses a positive opinion."},
        {"role": "user", "content": "Share something surprising about nature."},
        {"role": "assistant", "content": "The human skeleton of an adult has two hundred and six bones. "
                                         "The old fisherman decorated the broken clock after the storm."}]}
    for i in (7, 19, 31, 42):
        assert out[f"orca_chat/{i}"]["reason"] == "empty_conversation"
    assert out["orca_chat/25"]["reason"] == "bad_type"


def test_openchat_items_key():
    out = by_id(run("openchat"))
    assert out["openchat/fce4b6ad64_2"] == {"id": "openchat/fce4b6ad64_2", "source": "openchat", "system": "",
                                            "messages": [{"role": "user", "content": "What is 97 minus 42?"},
                                                         {"role": "assistant", "content": "97 minus 42 equals 55."}]}
    # with the default key the rows do not match the format at all
    with pytest.raises(SchemaError, match=r"missing keys \['conversations'\]; unexpected keys \['items'\]"):
        run("openchat", key="conversations")


def test_puffin_string_conversations_are_parsed():
    raw = json.loads((HUB / FIXTURE_SOURCES["puffin"][1][0]).read_text())
    as_string = [i for i, row in enumerate(raw) if isinstance(row["conversations"], str)]
    assert as_string == [4, 17, 29, 33]
    out = by_id(run("puffin"))
    for i in (4, 17, 29):
        turns = json.loads(raw[i]["conversations"])
        expected = [{"role": {"human": "user", "gpt": "assistant"}[t["from"]], "content": t["value"]} for t in turns]
        assert out[f"puffin/{i}"]["messages"] == expected
    assert out["puffin/4"]["messages"][:2] == [
        {"role": "user", "content": "Share something surprising about nature."},
        {"role": "assistant", "content": "The heart of an adult pumps around five liters of blood every minute. "
                                         "Before dinner, our small team discovered a stack of letters because the weather was calm."}]
    assert out["puffin/33"]["reason"] == "bad_json"


def test_tulu_records():
    out = by_id(run("tulu"))
    assert out["tulu/open_orca_19"] == {
        "id": "tulu/open_orca_19", "source": "tulu",
        "system": "You are an AI assistant that follows instruction extremely well. Help as much as you can.",
        "messages": [{"role": "user", "content": "Write 2 sentences about Nico visiting the school garden."},
                     {"role": "assistant", "content": "Nico remembered a basket of apples in the spring. "
                                                      "Nico painted the long corridor every summer."}]}
    assert out["tulu/sharegpt_61"]["reason"] == "non_alternating"
    assert out["tulu/sharegpt_28"]["reason"] == "non_alternating"
    assert out["tulu/sharegpt_83"]["reason"] == "last_not_assistant"
    assert out["tulu/sharegpt_72"]["reason"] == "system_not_first"


def test_orca_mini_records():
    out = by_id(run("alpaca_orca"))
    assert out["alpaca_orca/24"] == {
        "id": "alpaca_orca/24", "source": "alpaca_orca",
        "system": "You are an AI assistant that helps people find information.",
        "messages": [{"role": "user", "content": "Give an antonym of the given word."},
                     {"role": "assistant", "content": "excellent"}],
        "input": "slow"}
    assert out["alpaca_orca/30"]["reason"] == "missing_field"
    dolly = by_id(run("dolly_orca"))
    assert dolly["dolly_orca/11"] == {
        "id": "dolly_orca/11", "source": "dolly_orca", "reason": "bad_type",
        "row": {"system": "You are an AI assistant. You will be given a task. You must generate a detailed and long answer.",
                "instruction": "What is 91 plus 20?", "input": "", "output": ["not", "a", "string"]}}


def test_oasst1_fixture_records_and_all_paths():
    out = run("oasst1")
    assert by_id(out)["oasst1/0c98a30a-b939-44da-98d6-78e8e0443f50"] == {
        "id": "oasst1/0c98a30a-b939-44da-98d6-78e8e0443f50", "source": "oasst1", "system": "",
        "messages": [{"role": "user", "content": "What is 29 plus 39?"},
                     {"role": "assistant", "content": "29 plus 39 equals 68."}]}
    records, _ = split(out)
    assert sorted(len(r["messages"]) for r in records) == [2] * 13 + [4] * 6 + [6] * 3
    records, rejects = split(run("oasst1", select="all_paths"))
    assert len(records) == 51 and rejects == EXPECTED_COUNTS["oasst1"][1]
    records, rejects = split(run("oasst1", lang=None, tree_state=None, review_result=None,
                                 drop_deleted=False, drop_synthetic=False))
    assert len(records) == 27 and rejects == {"no_assistant_reply": 1, "orphan": 1}


def test_openhermes_with_the_conversations_layout():
    outputs = run("openhermes")
    out = by_id(outputs)
    assert [o["id"] for o in outputs if "reason" in o] == [
        "openhermes/13", "openhermes/17", "openhermes/21", "openhermes/25", "openhermes/29", "openhermes/33"]
    assert out["openhermes/0"] == {
        "id": "openhermes/0", "source": "openhermes",
        "system": "You are an AI assistant that follows instruction extremely well. Help as much as you can.",
        "messages": [{"role": "user", "content": "What is 12 times 6?"},
                     {"role": "assistant", "content": "12 times 6 equals 72."}]}
    # a ShareGPT-scraped row: its own id, float/null weights ignored, two rounds, no system turn
    assert out["openhermes/008ad3c3a"]["system"] == ""
    assert [m["content"] for m in out["openhermes/008ad3c3a"]["messages"]][1::2] == [
        "Here is a simple way to organize a small event:\n1. Decide on a date, a place and a budget.\n"
        "2. Send invitations at least two weeks ahead.\n3. Plan food, music and a simple schedule.\n"
        "4. Ask two friends to help with setup and cleanup.\nTake your time with each step.",
        "Bees communicate the location of flowers with a waggle dance. The old fisherman thought that the "
        "broken clock looked patient and noisy early in the morning."]
    assert out["openhermes/77787563f#2"]["messages"] == out["openhermes/77787563f"]["messages"]  # repeated id
    assert sum(bool(o.get("system")) for o in outputs) == 15
    assert out["openhermes/17"] == {
        "id": "openhermes/17", "source": "openhermes", "reason": "bad_type",
        "row": {"conversations": [{"from": "human", "value": "What are the steps to prepare for a job interview?"},
                                  {"from": "gpt", "value": 42}],
                "source": "CamelAI", "topic": "Biologist_RoleType.ASSISTANT", "category": "Zoology"}}
    assert out["openhermes/13"]["row"]["conversations"][-1] == {"from": "tool", "value": '{"result": 42}'}
    assert out["openhermes/25"]["row"]["conversations"][1] == {"from": "system", "value": "Answer in French."}
    # the sharegpt preset maps these rows the same way
    assert list(sources.get("sharegpt")([HUB / HERMES], {}, "openhermes")) == outputs


# ============================================================================ oasst1 trees
OASST_SCHEMA = pa.schema([
    ("message_id", pa.string()), ("parent_id", pa.string()), ("created_date", pa.string()), ("text", pa.string()),
    ("role", pa.string()), ("lang", pa.string()), ("review_result", pa.bool_()), ("deleted", pa.bool_()),
    ("rank", pa.int32()), ("synthetic", pa.bool_()), ("message_tree_id", pa.string()), ("tree_state", pa.string()),
])


class Tree:
    def __init__(self):
        self.rows: list[dict] = []

    def add(self, mid, parent, role, rank=None, tree=None, **over):
        row = {"message_id": mid, "parent_id": parent, "created_date": f"2023-02-05T00:00:{len(self.rows):02d}",
               "text": f"text of {mid}", "role": role, "lang": "en", "review_result": True, "deleted": False,
               "rank": rank, "synthetic": False, "message_tree_id": tree or mid, "tree_state": "ready_for_export"}
        row.update(over)
        self.rows.append(row)

    def write(self, path: Path, rows=None) -> Path:
        pq.write_table(pa.Table.from_pylist(self.rows if rows is None else rows, schema=OASST_SCHEMA), path)
        return path


def convo(rec):
    """Record -> list of message texts' ids (texts are 'text of <id>')."""
    return [m["content"].removeprefix("text of ") for m in rec["messages"]]


def branching_tree() -> Tree:
    t = Tree()
    t.add("P1", None, "prompter")
    t.add("A1", "P1", "assistant", rank=1, tree="P1")
    t.add("A0", "P1", "assistant", rank=0, tree="P1")
    t.add("A2", "P1", "assistant", rank=None, tree="P1")
    t.add("P2", "A0", "prompter", tree="P1")
    t.add("B1", "P2", "assistant", rank=1, tree="P1")
    t.add("B0", "P2", "assistant", rank=0, tree="P1")
    t.add("P3", "A0", "prompter", tree="P1")
    t.add("C0", "P3", "assistant", tree="P1")
    t.add("P4", "C0", "prompter", tree="P1")
    t.add("D0", "P4", "assistant", tree="P1")
    t.add("P5", "A1", "prompter", tree="P1")
    t.add("E0", "P5", "assistant", tree="P1")
    t.add("P6", "A2", "prompter", tree="P1")  # prompter leaf: not a conversation end
    return t


def read_oasst(path, **options):
    return list(sources.get("oasst1")([path], options, "oa"))


def test_oasst1_best_path_follows_rank_then_depth(tmp_path):
    out = read_oasst(branching_tree().write(tmp_path / "t.parquet"))
    assert len(out) == 1
    assert out[0]["id"] == "oa/D0"
    assert convo(out[0]) == ["P1", "A0", "P3", "C0", "P4", "D0"]
    assert [m["role"] for m in out[0]["messages"]] == ["user", "assistant"] * 3
    assert out[0]["system"] == "" and out[0]["source"] == "oa"


def test_oasst1_all_paths(tmp_path):
    out = read_oasst(branching_tree().write(tmp_path / "t.parquet"), select="all_paths")
    assert [convo(r) for r in out] == [
        ["P1", "A0", "P2", "B0"], ["P1", "A0", "P2", "B1"], ["P1", "A0", "P3", "C0", "P4", "D0"],
        ["P1", "A1", "P5", "E0"], ["P1", "A2"]]
    assert [r["id"] for r in out] == ["oa/B0", "oa/B1", "oa/D0", "oa/E0", "oa/A2"]


def test_oasst1_deleted_middle_node_cuts_subtree(tmp_path):
    t = Tree()
    t.add("R", None, "prompter")
    t.add("X0", "R", "assistant", rank=0, tree="R", deleted=True)
    t.add("XP", "X0", "prompter", tree="R")
    t.add("XA", "XP", "assistant", tree="R")
    t.add("Y1", "R", "assistant", rank=1, tree="R")
    out = read_oasst(t.write(tmp_path / "t.parquet"))
    assert [o.get("reason") for o in out] == ["deleted", None]
    assert out[0]["id"] == "oa/X0" and out[0]["row"]["message_id"] == "X0"
    assert convo(out[1]) == ["R", "Y1"]
    kept = read_oasst(tmp_path / "t.parquet", drop_deleted=False)
    assert [convo(o) for o in kept] == [["R", "X0", "XP", "XA"]]


def test_oasst1_message_filters(tmp_path):
    t = Tree()
    t.add("R", None, "prompter")
    t.add("S0", "R", "assistant", rank=0, tree="R", synthetic=True)
    t.add("V1", "R", "assistant", rank=1, tree="R", review_result=False)
    t.add("L2", "R", "assistant", rank=2, tree="R", lang="fr")
    t.add("N3", "R", "assistant", rank=3, tree="R", review_result=None)
    t.add("T4", "R", "assistant", rank=4, tree="R", text=None)
    t.add("U5", "R", "prompter", rank=5, tree="R")  # prompter answering a prompter
    t.add("OK", "R", "assistant", rank=6, tree="R")
    out = read_oasst(t.write(tmp_path / "t.parquet"))
    assert [(o["id"], o.get("reason")) for o in out] == [
        ("oa/S0", "synthetic"), ("oa/V1", "review_failed"), ("oa/L2", "lang"), ("oa/N3", "review_failed"),
        ("oa/T4", "null_field"), ("oa/U5", "bad_role"), ("oa/OK", None)]
    loose = read_oasst(tmp_path / "t.parquet", lang=["en", "fr"], review_result=None, drop_synthetic=False,
                       select="all_paths")
    assert [(o["id"], o.get("reason")) for o in loose] == [
        ("oa/T4", "null_field"), ("oa/U5", "bad_role"), ("oa/S0", None), ("oa/V1", None), ("oa/L2", None),
        ("oa/N3", None), ("oa/OK", None)]


def test_oasst1_tree_level_rejects(tmp_path):
    t = Tree()
    t.add("DE", None, "prompter", lang="de")
    t.add("DEa", "DE", "assistant", tree="DE", lang="de")
    t.add("W", None, "prompter", tree_state="growing")
    t.add("Wa", "W", "assistant", tree="W", tree_state="growing")
    t.add("Q", None, "prompter")           # no reply at all
    t.add("AR", None, "assistant")         # a root must be a prompter
    out = read_oasst(t.write(tmp_path / "t.parquet"))
    assert [(o["id"], o["reason"]) for o in out] == [
        ("oa/DE", "lang"), ("oa/W", "tree_state"), ("oa/Q", "no_assistant_reply"), ("oa/AR", "bad_role")]
    out = read_oasst(tmp_path / "t.parquet", lang=None, tree_state=None)
    assert [(o["id"], o.get("reason")) for o in out] == [
        ("oa/DEa", None), ("oa/Wa", None), ("oa/Q", "no_assistant_reply"), ("oa/AR", "bad_role")]
    out = read_oasst(tmp_path / "t.parquet", lang=["en", "de"])
    assert [(o["id"], o.get("reason")) for o in out][0] == ("oa/DEa", None)


def test_oasst1_orphan_cycle_duplicate(tmp_path):
    t = Tree()
    t.add("R", None, "prompter")
    t.add("Ra", "R", "assistant", tree="R")
    t.add("O1", "missing-parent", "assistant", tree="R")  # orphan
    t.add("O2", "O1", "prompter", tree="R")                # under the orphan: goes with it
    t.add("C2", "C1", "prompter", tree="C")                # cycle C1 <-> C2
    t.add("C1", "C2", "assistant", tree="C")
    t.add("C3", "C1", "prompter", tree="C")                # hangs off the cycle
    t.add("S", "S", "prompter", tree="S")                  # self-loop
    t.add("Ra", "R", "assistant", tree="R", text="dup")    # duplicate message id
    out = read_oasst(t.write(tmp_path / "t.parquet"))
    assert [(o["id"], o.get("reason")) for o in out] == [
        ("oa/Ra#8", "duplicate_id"), ("oa/Ra", None), ("oa/O1", "orphan"), ("oa/C1", "cycle"), ("oa/S", "cycle")]
    assert convo(out[1]) == ["R", "Ra"]


def test_oasst1_trees_span_files(tmp_path):
    t = branching_tree()
    a = t.write(tmp_path / "a.parquet", t.rows[:5])
    b = t.write(tmp_path / "b.parquet", t.rows[5:])
    out = list(sources.get("oasst1")([b, a], {}, "oa"))
    assert [convo(r) for r in out] == [["P1", "A0", "P3", "C0", "P4", "D0"]]


def test_oasst1_bad_options(tmp_path):
    path = branching_tree().write(tmp_path / "t.parquet")
    with pytest.raises(ValueError, match="select"):
        read_oasst(path, select="random")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['rank'\]"):
        read_oasst(path, rank=0)


# ============================================================================ schema errors
def test_schema_error_parquet_missing_columns(tmp_path):
    path = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"id": ["x"], "question": ["q"], "foo": ["f"]}), path)
    with pytest.raises(SchemaError) as exc:
        list(sources.get("openorca")([path], {}, "o"))
    msg = str(exc.value)
    assert msg == f"{path}: missing columns ['response', 'system_prompt']; unexpected columns ['foo']"
    assert "\n" not in msg
    with pytest.raises(SchemaError, match=r"missing columns \[.*'message_id'.*\]"):
        list(sources.get("oasst1")([path], {}, "o"))
    with pytest.raises(SchemaError, match=r"missing columns \['messages'\]; unexpected columns \['foo', 'question'\]"):
        list(sources.get("tulu_v2")([path], {}, "t"))


def test_schema_error_json_files(tmp_path):
    samantha = HUB / FIXTURE_SOURCES["samantha"][1][0]
    with pytest.raises(SchemaError) as exc:
        list(sources.get("airoboros")([samantha], {}, "a"))
    assert str(exc.value) == (f"{samantha}: missing keys ['instruction', 'response']; "
                              "unexpected keys ['conversations', 'id']")
    obj = tmp_path / "obj.json"
    obj.write_text('{"instruction": "x"}')
    with pytest.raises(SchemaError, match="expected a JSON array of rows, got dict"):
        list(sources.get("orca_mini")([obj], {}, "o"))
    broken = tmp_path / "broken.json"
    broken.write_text('[{"system": "", "instr')
    with pytest.raises(SchemaError, match="not valid JSON"):
        list(sources.get("orca_mini")([broken], {}, "o"))
    csv = tmp_path / "rows.csv"
    csv.write_text("a,b\n")
    with pytest.raises(SchemaError, match="unsupported file type '.csv'"):
        list(sources.get("dolphin")([csv], {}, "d"))


def test_malformed_json_rows_are_rejects(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([
        {"id": "a", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
        "not an object",
        {"id": "b", "conversations": {"from": "human"}},
        {"id": "c", "conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "x"}]},
        {"id": "d", "conversations": [{"from": "human"}]},
        {"id": "e", "conversations": [["human", "hi"]]},
        {"id": "f", "conversations": []},
        {"id": "g", "conversations": [{"from": "system", "value": "be nice"}, {"from": "user", "value": "q"},
                                      {"from": "assistant", "value": "a"}]},
        {"id": "h", "conversations": '[{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]'},
        {"id": "i", "conversations": [{"from": "human", "value": None}, {"from": "gpt", "value": "a"}]},
    ]))
    out = list(sources.get("sharegpt")([path], {}, "s"))
    assert [(o["id"], o.get("reason")) for o in out] == [
        ("s/a", None), ("s/1", "bad_type"), ("s/b", "bad_type"), ("s/c", "bad_type"), ("s/d", "missing_field"),
        ("s/e", "bad_type"), ("s/f", "empty_conversation"), ("s/g", None), ("s/h", None), ("s/i", "null_field")]
    assert out[7] == {"id": "s/g", "source": "s", "system": "be nice",
                      "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    assert out[8]["messages"] == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]


def test_reject_rows_are_truncated():
    long = "x" * 2000
    ex = excerpt({"a": long, "b": [long] * 3, "n": 1.5, "z": None})
    assert ex["a"] == "x" * MAX_STR + "...[+1500 chars]"
    assert ex["b"][0] == ex["a"] and ex["n"] == 1.5 and ex["z"] is None
    assert len(excerpt(list(range(100)))) == 51


# ============================================================================ text
def test_text_reader_fixture_and_chunking():
    out = run("fanfics")
    assert [o["id"] for o in out] == [f"fanfics/{i}" for i in range(20)]
    raw = pq.read_table(HUB / FIXTURE_SOURCES["fanfics"][1][0]).column("text").to_pylist()
    assert [o["text"] for o in out] == raw
    chunked = run("fanfics", max_chunk_size=1000)
    assert len(chunked) == 86
    assert all(0 < len(o["text"]) <= 1000 for o in chunked)
    for i, text in enumerate(raw):
        parts = [o["text"] for o in chunked if o["id"].startswith(f"fanfics/{i}-")]
        assert [o["id"] for o in chunked if o["id"].startswith(f"fanfics/{i}-")] == [
            f"fanfics/{i}-{k}" for k in range(len(parts))]
        assert "".join("".join(parts).split()) == "".join(text.split())
    wiki = run("wikipedia", max_chunk_size=500)
    assert all(len(o["text"]) <= 500 for o in wiki) and len(wiki) > 30


def test_chunk_text_properties():
    rng = random.Random(7)
    words = ["a", "bb", "ccc", "dddd", "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee", "\n", "\n\n", "  "]
    for _ in range(300):
        text = " ".join(rng.choice(words) for _ in range(rng.randrange(0, 200)))
        size = rng.randrange(1, 120)
        chunks = chunk_text(text, size)
        assert all(0 < len(c) <= size for c in chunks)
        assert all(c == c.strip() for c in chunks)
        assert "".join("".join(chunks).split()) == "".join(text.split())


def test_chunk_text_prefers_paragraphs_then_words():
    text = "First paragraph here.\n\nSecond one is a bit longer than that."
    assert chunk_text(text, 40) == ["First paragraph here.", "Second one is a bit longer than that."]
    assert chunk_text("alpha beta gamma delta", 11) == ["alpha beta", "gamma delta"]
    assert chunk_text("abcdefghij", 4) == ["abcd", "efgh", "ij"]
    assert chunk_text("short", 100) == ["short"]
    assert chunk_text("   \n ", 10) == []


def test_text_reader_malformed_rows(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join([
        json.dumps({"text": "good text", "meta": "{}"}),
        '{"text": "trunc',
        json.dumps({"text": None}),
        json.dumps({"other": "x"}),
        json.dumps({"text": "   \n"}),
        json.dumps({"text": 5}),
        "",
        json.dumps({"text": "again"}),
    ]) + "\n")
    out = list(sources.get("text")([path], {}, "rp"))
    assert [(o["id"], o.get("reason")) for o in out] == [
        ("rp/0", None), ("rp/1", "bad_json"), ("rp/2", "null_field"), ("rp/3", "missing_field"),
        ("rp/4", "empty_text"), ("rp/5", "bad_type"), ("rp/6", None)]
    assert out[0] == {"id": "rp/0", "source": "rp", "text": "good text"}
    assert out[1]["row"] == '{"text": "trunc'
    custom = tmp_path / "c.json"
    custom.write_text(json.dumps([{"body": "one two three four"}]))
    assert list(sources.get("text")([custom], {"text_field": "body", "max_chunk_size": 9}, "c")) == [
        {"id": "c/0-0", "source": "c", "text": "one two"}, {"id": "c/0-1", "source": "c", "text": "three"},
        {"id": "c/0-2", "source": "c", "text": "four"}]
    with pytest.raises(ValueError, match="max_chunk_size"):
        list(sources.get("text")([custom], {"max_chunk_size": 0}, "c"))


def test_unique_ids_suffixes_repeats_only():
    ids = UniqueIds()
    assert [ids(x) for x in ["a", "b", "a", 1, "1", "a", "\udcff", "\udcff"]] == [
        "a", "b", "a#2", "1", "1#2", "a#3", "\udcff", "\udcff#2"]
    # only ids that repeat get an exact counter; the rest are 8-byte digests
    assert ids._repeats == {"a": 3, "1": 2, "\udcff": 2}
    many = UniqueIds()
    assert all(many(f"flan.{i}") == f"flan.{i}" for i in range(200_000))
    assert len(many._seen) == 200_000 and many._repeats == {}


def test_unique_ids_digest_collision_keeps_ids_unique(monkeypatch):
    """Two different ids with one 64-bit digest: the later one gets a spurious
    suffix, but every id handed out is still distinct."""
    from reprotune.sources import _common

    monkeypatch.setattr(_common, "digest64", lambda text: 42)
    ids = UniqueIds()
    out = [ids(x) for x in ["x", "y", "x", "y", "z"]]
    assert out == ["x", "y#2", "x#2", "y#3", "z#2"]
    assert len(set(out)) == len(out)


# ============================================================================ generic layouts
def test_generic_layout_defaults():
    assert sources.defaults("conversations") == {
        "field": "conversations", "role_key": "from", "content_key": "value",
        "roles": {"human": "user", "gpt": "assistant", "system": "system"}, "id_key": None, "keep": {}}
    assert sources.defaults("instruction") == {"instruction": "instruction", "input": None, "output": "output",
                                               "system": None, "id_key": None, "keep": {}}


def test_conversations_layout_from_options(tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = [
        {"uid": "a", "chat": [{"speaker": "SYS", "text": "Be brief."}, {"speaker": "Q", "text": "hi"},
                              {"speaker": " a ", "text": "hello", "score": 1.0}]},
        {"uid": "b", "chat": '[{"speaker": "q", "text": "2+2?"}, {"speaker": "a", "text": "4"}]'},
        {"uid": "c", "chat": '[{"speaker": "q", "text": "2+2?"'},
        {"uid": "d", "chat": [{"speaker": "q", "text": "x"}, {"speaker": "tool", "text": "{}"}]},
        {"uid": "e", "chat": [{"speaker": "q", "text": "x"}, {"speaker": "a", "text": ["y"]}]},
        {"uid": "f", "chat": [{"speaker": "q", "text": "x"}, {"speaker": "sys", "text": "late"},
                              {"speaker": "a", "text": "y"}]},
        {"uid": "g", "chat": [{"speaker": 7, "text": "x"}]},
        {"uid": "h", "chat": []},
        {"chat": [{"speaker": "q", "text": "no id"}, {"speaker": "a", "text": "index id"}]},
        {"uid": "j", "chat": None},
        {"uid": "k"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    options = {"field": "chat", "role_key": "speaker", "content_key": "text", "id_key": "uid",
               "roles": {"q": "user", "a": "assistant", "sys": "system"}}
    out = list(sources.get("conversations")([path], options, "c"))
    assert [(o["id"], o.get("reason")) for o in out] == [
        ("c/a", None), ("c/b", None), ("c/c", "bad_json"), ("c/d", "unknown_role"), ("c/e", "bad_type"),
        ("c/f", "system_not_first"), ("c/g", "bad_type"), ("c/h", "empty_conversation"), ("c/8", None),
        ("c/j", "null_field"), ("c/k", "missing_field")]
    assert out[0] == {"id": "c/a", "source": "c", "system": "Be brief.",
                      "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    assert out[1]["messages"] == [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    assert out[2]["row"] == {"uid": "c", "chat": '[{"speaker": "q", "text": "2+2?"'}
    # the default roles (human/gpt/system) know none of these roles
    default_roles = {k: v for k, v in options.items() if k != "roles"}
    assert {o.get("reason") for o in sources.get("conversations")([path], default_roles, "c")} == {
        "unknown_role", "bad_json", "bad_type", "empty_conversation", "null_field", "missing_field"}


def test_conversations_keep_and_parquet_reads_every_column(tmp_path):
    path = tmp_path / "rows.parquet"
    turns = pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))
    pq.write_table(pa.Table.from_pylist([
        {"conversations": [{"from": "human", "value": "q1"}, {"from": "gpt", "value": "a1"}], "src": "x", "n": 1},
        {"conversations": [{"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"}], "src": "y", "n": 2},
        {"conversations": [{"from": "human", "value": "q3"}], "src": "x", "n": 3},
    ], schema=pa.schema([("conversations", turns), ("src", pa.string()), ("n", pa.int64())])), path)
    out = list(sources.get("conversations")([path], {"keep": {"src": "x"}}, "p"))
    assert [(o["id"], o.get("reason")) for o in out] == [("p/0", None), ("p/1", "src"), ("p/2", "last_not_assistant")]
    assert out[1]["row"] == {"conversations": [{"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"}],
                             "src": "y", "n": 2}
    with pytest.raises(SchemaError, match=r"missing columns \['turns'\]; unexpected columns \['conversations', 'n'\]"):
        list(sources.get("conversations")([path], {"field": "turns", "keep": {"src": None}}, "p"))


def test_instruction_layout_from_options(tmp_path):
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({
        "key": ["r1", "r2", "r3", None, "r5"],
        "prompt": ["Sum 2 and 3.", "Translate.", None, "Name a color.", "Why?"],
        "context": ["", "Bonjour", "", None, ""],
        "answer": ["5", "Hello", "x", "Blue", "Because."],
        "persona": ["You add.", None, "", "", "Be kind."],
        "lang": ["en", "fr", "en", "en", "de"],
    }), path)
    options = {"instruction": "prompt", "input": "context", "output": "answer", "system": "persona",
               "id_key": "key", "keep": {"lang": ["en", "fr"]}}
    out = list(sources.get("instruction")([path], options, "i"))
    assert out == [
        {"id": "i/r1", "source": "i", "system": "You add.",
         "messages": [{"role": "user", "content": "Sum 2 and 3."}, {"role": "assistant", "content": "5"}]},
        {"id": "i/r2", "source": "i", "system": "", "input": "Bonjour",
         "messages": [{"role": "user", "content": "Translate."}, {"role": "assistant", "content": "Hello"}]},
        {"id": "i/r3", "source": "i", "reason": "null_field",
         "row": {"key": "r3", "prompt": None, "context": "", "answer": "x", "persona": "", "lang": "en"}},
        {"id": "i/3", "source": "i", "system": "",
         "messages": [{"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "Blue"}]},
        {"id": "i/r5", "source": "i", "reason": "lang",
         "row": {"key": "r5", "prompt": "Why?", "context": "", "answer": "Because.", "persona": "Be kind.", "lang": "de"}},
    ]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"prompt": "q", "answer": "a", "persona": 3}, {"prompt": "q", "answer": "a"}]))
    assert [(o["id"], o.get("reason"), o.get("system")) for o in sources.get("instruction")([bad], options, "b")] == [
        ("b/0", "bad_type", None), ("b/1", "lang", None)]  # a row without the keep column is a reject
    no_keep = {**options, "keep": {}}
    assert [(o["id"], o.get("reason"), o.get("system")) for o in sources.get("instruction")([bad], no_keep, "b")] == [
        ("b/0", "bad_type", None), ("b/1", None, "")]


def test_generic_option_errors_are_one_line():
    cases = [
        ("conversations", {"roles": {"human": "bot"}}, "conversations: option 'roles.human': 'bot' is not one of"),
        ("conversations", {"roles": {"Human": "user"}}, "conversations: option 'roles': 'Human' does not match"),
        ("conversations", {"field": 3}, "conversations: option 'field': 3 is not of type 'string'"),
        ("conversations", {"turns": "x"}, "conversations: unknown option(s) ['turns']; known options: ['content_key',"),
        ("instruction", {"input": ""}, "instruction: option 'input': '' should be non-empty"),
        ("instruction", {"keep": {"lang": 3}}, "instruction: option 'keep.lang': 3 is not of type 'null', 'string', 'array'"),
        ("sharegpt", {"field": "items"}, "sharegpt: unknown option(s) ['field']; known options: ['id_key', 'key']"),
        ("sharegpt", {"key": ""}, "sharegpt: option 'key': '' should be non-empty"),
        ("airoboros", {"category": [1]}, "airoboros: option 'category.0': 1 is not of type 'string'"),
        ("text", {"max_chunk_size": 0}, "text: option 'max_chunk_size': 0 is less than the minimum of 1"),
    ]
    for fmt, options, message in cases:
        with pytest.raises(sources.SourceError) as exc:
            list(sources.get(fmt)([], options, "s"))
        assert str(exc.value).startswith(message), str(exc.value)
        assert "\n" not in str(exc.value)


# ============================================================================ presets
PRESETS = {
    "sharegpt": ("conversations", {"field": "conversations", "role_key": "from", "content_key": "value",
                                   "id_key": "id", "keep": {},
                                   "roles": {"human": "user", "user": "user", "prompter": "user", "gpt": "assistant",
                                             "assistant": "assistant", "chatgpt": "assistant", "system": "system"}}),
    "tulu_v2": ("conversations", {"field": "messages", "role_key": "role", "content_key": "content", "id_key": "id",
                                  "keep": {}, "roles": {"user": "user", "assistant": "assistant", "system": "system"}}),
    "airoboros": ("instruction", {"instruction": "instruction", "input": None, "output": "response", "system": None,
                                  "id_key": None, "keep": {"category": None}}),
    "platypus": ("instruction", {"instruction": "instruction", "input": "input", "output": "output", "system": None,
                                 "id_key": None, "keep": {}}),
    "dolphin": ("instruction", {"instruction": "input", "input": None, "output": "output", "system": "instruction",
                                "id_key": None, "keep": {}}),
    "orca_mini": ("instruction", {"instruction": "instruction", "input": "input", "output": "output",
                                  "system": "system", "id_key": None, "keep": {}}),
}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_are_config_over_a_generic_layout(preset):
    """Each preset reads its fixtures exactly as its base format with the preset's options."""
    base, options = PRESETS[preset]
    reader = sources.get(preset)
    assert reader.base_format == base and reader.description
    names = [n for n, (fmt, _, _) in FIXTURE_SOURCES.items() if fmt == preset]
    assert names
    for name in names:
        _, files, opts = FIXTURE_SOURCES[name]
        merged = dict(options)
        if preset == "sharegpt":
            merged["field"] = opts.get("key", "conversations")
        if preset == "airoboros":
            merged["keep"] = {"category": opts.get("category")}
        assert run(name) == list(sources.get(base)([HUB / f for f in files], merged, name))


def write_preset(tmp_path, text: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


def test_preset_files_are_checked(tmp_path):
    from reprotune.sources._presets import preset_reader

    good = "description: d\nformat: conversations\noptions: {field: items}\nparams: {key: field, only: keep.source}\n"
    with pytest.raises(sources.SourceError, match=r"p.yaml: key 'params.only': 'keep.source' is not an option of "
                                                  r"'conversations' set by the preset's options"):
        preset_reader("p", write_preset(tmp_path, good), sources.get)
    reader = preset_reader("p", write_preset(tmp_path, good.replace("{field: items}", "{field: items, keep: {source: x}}")),
                           sources.get)
    assert reader.options_schema["properties"]["only"]["default"] == "x"
    assert {k: p["default"] for k, p in reader.options_schema["properties"].items()} == {"key": "items", "only": "x"}
    for text, message in [
        ("format: conversations\n", "key 'description' is a required property"),
        ("description: d\nformat: csv\n", "key 'format': unknown source format 'csv'"),
        ("description: d\nformat: sharegpt\n", "key 'format': 'sharegpt' is not a reader module"),
        ("description: d\nformat: instruction\noptions: {outpt: x}\n", "unknown option(s) ['outpt']"),
        ("description: d\nformat: instruction\nparams: {x: 3}\n", "key 'params.x': 3 is not of type 'string'"),
    ]:
        with pytest.raises(sources.SourceError) as exc:
            preset_reader("p", write_preset(tmp_path, text), sources.get)
        assert str(exc.value).startswith(str(tmp_path / "p.yaml") + ": ") and message in str(exc.value), str(exc.value)


# ============================================================================ recipe load
REPO = Path(__file__).resolve().parents[1]
FASHION = REPO / "recipes" / "fashiongpt-v1.1.yaml"


def test_recipe_schema_takes_formats_and_options_from_the_registry():
    from reprotune.recipe import _schema

    entry = _schema("recipe")["properties"]["sources"]["additionalProperties"]
    assert entry["properties"]["format"] == {"enum": sources.names()}
    assert [(c["if"]["properties"]["format"]["const"], c["then"]["properties"]["options"]) for c in entry["allOf"]] == [
        (name, sources.options_schema(name)) for name in sources.names()]


BAD_OPTIONS = [
    ("samantha", {"format": "conversations", "options": {"roles": {"human": "bot"}}},
     "key 'sources.samantha.options.roles.human': 'bot' is not allowed (expected one of: 'user', 'assistant', 'system')"),
    ("samantha", {"format": "conversations", "options": {"colour": 1}},
     "unknown key 'sources.samantha.options.colour' (expected one of: content_key, field, id_key, keep, role_key, roles)"),
    ("samantha", {"format": "conversations", "options": {"id_key": 3}},
     "key 'sources.samantha.options.id_key': 3 has the wrong type (expected string or null)"),
    ("samantha", {"format": "sharegpt", "options": {"field": "items"}},
     "unknown key 'sources.samantha.options.field' (expected one of: id_key, key)"),
    ("samantha", {"format": "instruction", "options": {"output": ""}},
     "key 'sources.samantha.options.output': '' should be non-empty"),
    ("misconception", {"options": {"category": 3}},
     "key 'sources.misconception.options.category': 3 has the wrong type (expected null or string or array)"),
    ("oasst1", {"options": {"select": "random"}},
     "key 'sources.oasst1.options.select': 'random' is not allowed (expected one of: 'best', 'all_paths')"),
    ("samantha", {"format": "tulu_v2", "options": {"key": "x"}},
     "unknown key 'sources.samantha.options.key'"),
]


@pytest.mark.parametrize("source,change,expected", BAD_OPTIONS, ids=[e for _, _, e in BAD_OPTIONS])
def test_recipe_load_checks_source_options(tmp_path, source, change, expected):
    from reprotune.recipe import RecipeError, load_recipe

    data = yaml.safe_load(FASHION.read_text())
    data["sources"][source].update(change)
    path = tmp_path / FASHION.name
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(RecipeError) as exc:
        load_recipe(path)
    assert str(exc.value).startswith(f"{path}: {expected}"), str(exc.value)


def test_recipe_load_accepts_generic_layouts(tmp_path):
    from reprotune.recipe import load_recipe

    data = yaml.safe_load(FASHION.read_text())
    data["sources"]["samantha"].update(format="conversations", options={
        "field": "conversations", "roles": {"human": "user", "gpt": "assistant"}, "id_key": "id"})
    data["sources"]["airoboros"].update(format="instruction", options={"output": "response", "keep": {"category": None}})
    path = tmp_path / FASHION.name
    path.write_text(yaml.safe_dump(data))
    assert load_recipe(path)["sources"]["samantha"]["format"] == "conversations"


def test_cli_validate_names_the_option_key(tmp_path):
    data = yaml.safe_load(FASHION.read_text())
    data["sources"]["samantha"].update(format="conversations", options={"roles": {"human": "human"}})
    path = tmp_path / FASHION.name
    path.write_text(yaml.safe_dump(data))
    r = subprocess.run([sys.executable, "-m", "reprotune", "validate", str(path)], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr == (f"reprotune: error: {path}: key 'sources.samantha.options.roles.human': 'human' is not "
                        "allowed (expected one of: 'user', 'assistant', 'system')\n")
