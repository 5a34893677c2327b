"""The fixture mirror: byte-identical regeneration, SHA256SUMS, exact schemas, dirty cases."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
HUB = FIXTURES / "hub"
D = HUB / "datasets"
OASST_TRAIN = D / "OpenAssistant/oasst1/data/train-00000-of-00001-b42a775f407cee45.parquet"
OASST_VALID = D / "OpenAssistant/oasst1/data/validation-00000-of-00001-134b8fd0c89408b6.parquet"

ROW_COUNTS = {
    "datasets/LDJnr/Puffin/LDJnr_Puffin.json": 40,
    "datasets/Open-Orca/OpenOrca/1M-GPT4-Augmented.parquet": 80,
    "datasets/Open-Orca/OpenOrca/3_5M-GPT3_5-Augmented.parquet": 80,
    "datasets/OpenAssistant/oasst1/data/train-00000-of-00001-b42a775f407cee45.parquet": 119,
    "datasets/OpenAssistant/oasst1/data/validation-00000-of-00001-134b8fd0c89408b6.parquet": 17,
    "datasets/allenai/tulu-v2-sft-mixture/data/train-00000-of-00003-99ee8754042a69f6.parquet": 100,
    "datasets/atom-in-the-universe/fanfics-10k-50k/data/train-00000-of-00001.parquet": 20,
    "datasets/ehartford/dolphin/flan1m-alpaca-uncensored-deduped.jsonl": 83,
    "datasets/ehartford/samantha-data/samantha-1.1.json": 63,
    "datasets/garage-bAInd/Open-Platypus/data/train-00000-of-00001-4fe2df04669d1669.parquet": 60,
    "datasets/jondurbin/airoboros-gpt4-1.4.1/instructions.jsonl": 105,
    "datasets/openchat/openchat_sharegpt4_dataset/sharegpt_gpt4.json": 50,
    "datasets/psmathur/WizardLM_Orca/wizardlm_orca.json": 50,
    "datasets/psmathur/alpaca_orca/alpaca_orca.json": 50,
    "datasets/psmathur/dolly-v2_orca/dolly-v2_orca.json": 51,
    "datasets/shahules786/orca-chat/orca-chat-gpt4.json": 50,
    "datasets/teknium/OpenHermes-2.5/openhermes2_5.json": 38,
    "datasets/togethercomputer/RedPajama-Data-1T-Sample/c4_sample.jsonl": 40,
    "datasets/togethercomputer/RedPajama-Data-1T-Sample/wikipedia_sample.jsonl": 30,
}


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def built(gen):
    return gen.build()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def count_rows(path: Path) -> int:
    if path.suffix == ".parquet":
        return pq.ParquetFile(path).metadata.num_rows
    if path.suffix == ".json":
        return len(json.loads(path.read_text(encoding="utf-8")))
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def jsonl_objects(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


# ============================================================================ regeneration
def test_regeneration_matches_committed_files(built):
    on_disk = sorted(str(p.relative_to(HUB)) for p in HUB.rglob("*") if p.is_file())
    assert on_disk == sorted(built)
    for rel, data in built.items():
        assert (HUB / rel).read_bytes() == data, f"{rel} differs from a fresh generation"


def test_sha256sums_file(gen, built):
    text = (FIXTURES / "SHA256SUMS").read_text(encoding="utf-8")
    assert text == gen.sha256sums(built)
    lines = text.splitlines()
    assert [line.split("  ", 1)[1] for line in lines] == sorted(built)  # training and eval datasets
    assert set(ROW_COUNTS) <= set(built)
    for line in lines:
        digest, rel = line.split("  ", 1)
        assert len(digest) == 64
        assert sha((HUB / rel).read_bytes()) == digest


def test_build_is_deterministic_in_process_and_across_hash_seeds(gen, built, tmp_path):
    assert gen.build() == built
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, str(FIXTURES / "make_fixtures.py"), "--out", str(tmp_path)],
                   check=True, env=env, capture_output=True)
    fresh = {str(p.relative_to(tmp_path / "hub")): p.read_bytes() for p in (tmp_path / "hub").rglob("*") if p.is_file()}
    assert fresh == built
    assert (tmp_path / "SHA256SUMS").read_bytes() == (FIXTURES / "SHA256SUMS").read_bytes()


def test_mirror_size_and_row_counts():
    total = sum(p.stat().st_size for p in HUB.rglob("*") if p.is_file())
    assert total < 1_500_000
    assert {rel: count_rows(HUB / rel) for rel in ROW_COUNTS} == ROW_COUNTS


# ============================================================================ schemas
def test_oasst1_schema_is_exact():
    detox = pa.struct([(f, pa.float64()) for f in ["toxicity", "severe_toxicity", "obscene", "identity_attack",
                                                   "insult", "threat", "sexual_explicit"]])
    expected = pa.schema([
        ("message_id", pa.string()), ("parent_id", pa.string()), ("user_id", pa.string()),
        ("created_date", pa.string()), ("text", pa.string()), ("role", pa.string()), ("lang", pa.string()),
        ("review_count", pa.int32()), ("review_result", pa.bool_()), ("deleted", pa.bool_()),
        ("rank", pa.int32()), ("synthetic", pa.bool_()), ("model_name", pa.string()), ("detoxify", detox),
        ("message_tree_id", pa.string()), ("tree_state", pa.string()),
        ("emojis", pa.struct([("name", pa.list_(pa.string())), ("count", pa.list_(pa.int32()))])),
        ("labels", pa.struct([("name", pa.list_(pa.string())), ("value", pa.list_(pa.float64())),
                              ("count", pa.list_(pa.int32()))])),
    ])
    for path in (OASST_TRAIN, OASST_VALID):
        schema = pq.read_schema(path)
        assert schema.names == expected.names
        for name in expected.names:
            assert schema.field(name).type == expected.field(name).type, name
    assert pq.ParquetFile(OASST_TRAIN).metadata.num_row_groups == 3  # exercises streaming by row groups


@pytest.mark.parametrize("rel,columns", [
    ("Open-Orca/OpenOrca/1M-GPT4-Augmented.parquet", ["id", "system_prompt", "question", "response"]),
    ("Open-Orca/OpenOrca/3_5M-GPT3_5-Augmented.parquet", ["id", "system_prompt", "question", "response"]),
    ("garage-bAInd/Open-Platypus/data/train-00000-of-00001-4fe2df04669d1669.parquet",
     ["input", "output", "instruction", "data_source"]),
    ("atom-in-the-universe/fanfics-10k-50k/data/train-00000-of-00001.parquet", ["text"]),
])
def test_string_parquet_schemas(rel, columns):
    assert pq.read_schema(D / rel) == pa.schema([(c, pa.string()) for c in columns])


def test_tulu_schema():
    schema = pq.read_schema(D / "allenai/tulu-v2-sft-mixture/data/train-00000-of-00003-99ee8754042a69f6.parquet")
    assert schema.names == ["dataset", "id", "messages"]
    assert schema.field("messages").type == pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


# ============================================================================ dirty cases present
def test_oasst1_dirty_cases():
    rows = pq.read_table(OASST_TRAIN).to_pylist() + pq.read_table(OASST_VALID).to_pylist()
    ids = {r["message_id"] for r in rows}
    assert Counter(r["lang"] for r in rows) == {"en": 128, "de": 5, "es": 3}
    assert sum(r["deleted"] for r in rows) == 4
    assert sum(r["review_result"] is False for r in rows) == 2
    assert sum(r["synthetic"] for r in rows) == 1
    assert Counter(r["tree_state"] for r in rows) == {"ready_for_export": 133, "prompt_lottery_waiting": 1,
                                                      "aborted_low_grade": 2}
    assert [r["message_id"] for r in rows if r["parent_id"] is not None and r["parent_id"] not in ids] != []
    assert all(r["message_id"] == r["message_tree_id"] for r in rows if r["parent_id"] is None)
    assert any(r["text"] == "" for r in rows) and any(r["text"] == "   \n" for r in rows)
    # a null rank next to ranked siblings
    by_parent: dict = {}
    for r in rows:
        by_parent.setdefault(r["parent_id"], []).append(r["rank"])
    assert any(None in ranks and len(ranks) > 1 for p, ranks in by_parent.items() if p)
    assert any(r["detoxify"] is None for r in rows) and any(r["emojis"] is None for r in rows)
    deleted_with_children = [r for r in rows if r["deleted"] and r["message_id"] in by_parent]
    assert deleted_with_children, "a deleted middle node"


def test_instruction_datasets_dirty_cases():
    sam = json.loads((D / "ehartford/samantha-data/samantha-1.1.json").read_text())
    sam_text = json.dumps(sam)
    assert "As an AI language model" in sam_text
    assert all(set(r) <= {"id", "conversations"} for r in sam)
    assert len({json.dumps(r["conversations"]) for r in sam if isinstance(r.get("conversations"), list)}) < \
        sum(isinstance(r.get("conversations"), list) for r in sam)  # duplicates

    airo = jsonl_objects(D / "jondurbin/airoboros-gpt4-1.4.1/instructions.jsonl")
    assert len(airo) == 104  # one truncated line does not parse
    assert Counter(r.get("category") for r in airo)["misconception"] == 20
    assert any("OpenAI" in (r.get("response") or "") for r in airo)
    assert any("ChatGPT" in (r.get("response") or "") for r in airo)
    assert len({json.dumps(r, sort_keys=True) for r in airo}) == 98  # 2 planted + 4 repeated coding rows

    for name in ("1M-GPT4-Augmented.parquet", "3_5M-GPT3_5-Augmented.parquet"):
        rows = pq.read_table(D / "Open-Orca/OpenOrca" / name).to_pylist()
        assert {r["id"].split(".")[0] for r in rows} == {"niv", "t0", "cot", "flan"}
        assert any(r["system_prompt"] == "" for r in rows)
        assert any(r["response"] == "" for r in rows)
        pairs = [(r["question"], r["response"]) for r in rows]
        assert len(set(pairs)) < len(pairs)

    plat = pq.read_table(D / "garage-bAInd/Open-Platypus/data/train-00000-of-00001-4fe2df04669d1669.parquet").to_pylist()
    assert sum(r["input"] == "" for r in plat) > len(plat) // 2

    chat = json.loads((D / "shahules786/orca-chat/orca-chat-gpt4.json").read_text())
    assert sum(r["conversation"] == [] for r in chat) == 4

    puffin = json.loads((D / "LDJnr/Puffin/LDJnr_Puffin.json").read_text())
    assert sum(isinstance(r["conversations"], str) for r in puffin) == 4

    tulu = pq.read_table(D / "allenai/tulu-v2-sft-mixture/data/train-00000-of-00003-99ee8754042a69f6.parquet").to_pylist()
    roles = Counter(m["role"] for r in tulu for m in r["messages"])
    assert set(roles) == {"system", "user", "assistant"}
    assert any(m["content"] == "" for r in tulu for m in r["messages"])

    for rel in ("psmathur/alpaca_orca/alpaca_orca.json", "psmathur/dolly-v2_orca/dolly-v2_orca.json",
                "psmathur/WizardLM_Orca/wizardlm_orca.json"):
        rows = json.loads((D / rel).read_text())
        assert all(set(r) <= {"system", "instruction", "input", "output"} for r in rows)


HERMES_KEYS = {"custom_instruction", "topic", "model_name", "model", "skip_prompt_formatting", "category",
               "conversations", "views", "language", "id", "title", "idx", "hash", "avatarUrl", "system_prompt",
               "source"}


def test_openhermes_schema_and_dirty_cases():
    rows = json.loads((D / "teknium/OpenHermes-2.5/openhermes2_5.json").read_text())
    assert all({"conversations", "source"} <= set(r) <= HERMES_KEYS for r in rows)
    assert sum(set(r) == HERMES_KEYS for r in rows) == 6                     # ShareGPT-scraped rows: every key
    assert sum(r.get("id") is not None for r in rows) == 6                   # id mostly absent or null
    turns = [t for r in rows for t in r["conversations"]]
    assert all(set(t) in ({"from", "value"}, {"from", "value", "weight"}) for t in turns)
    assert {t["weight"] for t in turns if "weight" in t} == {None, 0.0, 1.0}
    assert Counter(t["from"] for t in turns) == {"human": 43, "gpt": 42, "system": 19, "tool": 1}
    assert sum(bool(r["conversations"]) and r["conversations"][0]["from"] == "system" for r in rows) == 18
    assert sum(r["conversations"] == [] for r in rows) == 1
    assert sum(not isinstance(t["value"], str) for t in turns) == 2          # an int and a null
    assert len({json.dumps(r, sort_keys=True) for r in rows}) == 36          # two exact duplicates


def test_text_datasets():
    for rel in ("togethercomputer/RedPajama-Data-1T-Sample/c4_sample.jsonl",
                "togethercomputer/RedPajama-Data-1T-Sample/wikipedia_sample.jsonl"):
        rows = jsonl_objects(D / rel)
        assert all(set(r) == {"text", "meta"} and isinstance(json.loads(r["meta"]), dict) for r in rows)
        assert all(300 <= len(r["text"]) <= 3500 for r in rows)
    fan = pq.read_table(D / "atom-in-the-universe/fanfics-10k-50k/data/train-00000-of-00001.parquet").column("text")
    assert all(1000 <= len(t) <= 5500 for t in fan.to_pylist())
