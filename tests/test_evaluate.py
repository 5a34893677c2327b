"""Tests for the eval fixtures, the tiny_* lm-eval tasks and reprotune.evaluate."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import json
import re
import shutil
import time
from pathlib import Path

import pytest
import yaml

from reprotune.evaluate import SUITES, TASKS_DIR, VOLATILE_KEYS, evaluate, fixture_root, summary
from reprotune.io import read_json, read_jsonl

ROOT = Path(__file__).resolve().parents[1]
FX = ROOT / "fixtures" / "eval"


def rows(task: str, split: str) -> list[dict]:
    return list(read_jsonl(FX / task / f"{split}.jsonl"))


def _is_str_list(x, n=None):
    return isinstance(x, list) and all(isinstance(s, str) and s for s in x) and (n is None or len(x) == n)


# --------------------------------------------------------------------------- fixture schemas

def test_arc_schema():
    counts = {}
    for split in ("train", "validation", "test"):
        rs = rows("arc_challenge", split)
        counts[split] = len(rs)
        for r in rs:
            assert set(r) == {"id", "question", "choices", "answerKey"}
            assert isinstance(r["id"], str) and isinstance(r["question"], str)
            assert set(r["choices"]) == {"text", "label"}
            assert _is_str_list(r["choices"]["text"], 4)
            assert r["choices"]["label"] == ["A", "B", "C", "D"]
            assert r["answerKey"] in r["choices"]["label"]
        assert len({r["id"] for r in rs}) == len(rs)
    assert counts["train"] >= 26 and counts["test"] >= 10  # 25 shots (+1: lm-eval samples n+1)


def test_hellaswag_schema():
    keys = {"ind", "activity_label", "ctx_a", "ctx_b", "ctx", "endings", "source_id", "split", "split_type", "label"}
    for split, tag, n in (("train", "train", 11), ("validation", "val", 10)):
        rs = rows("hellaswag", split)
        assert len(rs) >= n
        for r in rs:
            assert set(r) == keys
            assert isinstance(r["ind"], int) and not isinstance(r["ind"], bool)
            for k in ("activity_label", "ctx_a", "ctx_b", "ctx", "source_id", "split_type"):
                assert isinstance(r[k], str)
            assert r["ctx"] == (r["ctx_a"] + " " + r["ctx_b"]).strip()
            assert _is_str_list(r["endings"], 4)
            assert r["label"] in ("0", "1", "2", "3")  # a string, as on the Hub
            assert r["split"] == tag and r["split_type"] in ("indomain", "zeroshot")
            assert re.fullmatch(r"(activitynet~v_\w+|wikihow~\d+)", r["source_id"])


def test_mmlu_schema():
    for split, n in (("dev", 5), ("test", 10)):
        rs = rows("mmlu", split)
        assert len(rs) >= n
        for r in rs:
            assert set(r) == {"question", "subject", "choices", "answer"}
            assert isinstance(r["question"], str) and re.fullmatch(r"[a-z_]+", r["subject"])
            assert _is_str_list(r["choices"], 4)
            assert type(r["answer"]) is int and 0 <= r["answer"] <= 3


def test_truthfulqa_schema():
    rs = rows("truthfulqa_mc", "validation")
    assert len(rs) >= 10
    for r in rs:
        assert set(r) == {"question", "mc1_targets", "mc2_targets"}
        for k in ("mc1_targets", "mc2_targets"):
            t = r[k]
            assert set(t) == {"choices", "labels"}
            assert _is_str_list(t["choices"]) and len(t["choices"]) == len(t["labels"]) >= 2
            assert all(type(x) is int and x in (0, 1) for x in t["labels"])
            assert t["labels"][0] == 1 and 0 in t["labels"]  # true answers first, as in the dataset
        assert sum(r["mc1_targets"]["labels"]) == 1


def test_winogrande_schema():
    for split, n in (("train", 6), ("validation", 10)):
        rs = rows("winogrande", split)
        assert len(rs) >= n
        for r in rs:
            assert set(r) == {"sentence", "option1", "option2", "answer"}
            assert r["sentence"].count("_") == 1
            assert isinstance(r["option1"], str) and isinstance(r["option2"], str)
            assert r["answer"] in ("1", "2")


def test_gsm8k_schema():
    for split, n in (("train", 6), ("test", 8)):
        rs = rows("gsm8k", split)
        assert len(rs) >= n
        for r in rs:
            assert set(r) == {"question", "answer"}
            last = r["answer"].splitlines()[-1]
            assert re.fullmatch(r"#### -?\d+", last), last
            # the worked solution's calculator annotations agree with the final answer
            calcs = re.findall(r"<<[^=]+=([-\d.]+)>>", r["answer"])
            assert calcs and float(calcs[-1]) == float(last[5:])


def test_task_yamls_mirror_suite():
    tiny = {t["task"]: t for t in SUITES["tiny_open_llm_v1"]}
    real = {t["task"]: t for t in SUITES["open_llm_v1"]}
    assert set(tiny) == {"tiny_" + k for k in real}
    assert [(t["num_fewshot"], t["metric"]) for t in SUITES["open_llm_v1"]] == [
        (25, "acc_norm"), (10, "acc_norm"), (5, "acc"), (0, "acc"), (5, "acc"), (5, "exact_match")]
    seen = set()
    for path in sorted(TASKS_DIR.glob("*.yaml")):
        text = "\n".join(l for l in path.read_text().splitlines() if "!function" not in l)
        cfg = yaml.safe_load(text)
        name = cfg["task"]
        seen.add(name)
        assert cfg["dataset_path"] == "json"
        assert cfg["num_fewshot"] == tiny[name]["num_fewshot"]
        assert tiny[name]["metric"] in {m["metric"] for m in cfg["metric_list"]}
        for rel in cfg["dataset_kwargs"]["data_files"].values():
            assert not Path(rel).is_absolute() and (FX / rel).is_file(), rel
    assert seen == set(tiny)
    assert fixture_root() == FX.resolve()


# --------------------------------------------------------------------------- evaluate

@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    from test_merge import build_tiny_base  # the tiny Llama builder shared with the merge tests

    root = tmp_path_factory.mktemp("eval")
    m1 = build_tiny_base(root / "model_a")
    m2 = root / "elsewhere" / "model_b"  # same weights at another path
    shutil.copytree(m1, m2)
    spec = {"suite": "tiny_open_llm_v1", "batch_size": 4, "limit": 10, "seed": 1234, "device": "cpu"}
    outs, walls = [], []
    for i, m in enumerate((m1, m2)):
        out = root / f"run{i}" / "eval" / "results.json"
        t0 = time.monotonic()
        res = evaluate(spec, m, out)
        walls.append(time.monotonic() - t0)
        outs.append((out, res))
    print(f"tiny suite eval wall time: {walls[0]:.1f}s, {walls[1]:.1f}s")
    return {"root": root, "outs": outs, "walls": walls}


def test_eval_results_all_tasks(two_runs):
    out, res = two_runs["outs"][0]
    assert read_json(out) == res
    for t in SUITES["tiny_open_llm_v1"]:
        r = res["results"][t["task"]]
        key = f"{t['metric']},{t['filter']}"
        assert isinstance(r[key], float) and 0.0 <= r[key] <= 1.0, (t["task"], r)
        assert f"{t['metric']}_stderr,{t['filter']}" in r
        assert res["n-shot"][t["task"]] == t["num_fewshot"]
        assert res["configs"][t["task"]]["num_fewshot"] == t["num_fewshot"]
        ns = res["n-samples"][t["task"]]
        assert ns["effective"] == min(10, ns["original"])
    assert "acc_norm,none" in res["results"]["tiny_arc_challenge"]
    assert "acc_norm,none" in res["results"]["tiny_hellaswag"]
    assert "exact_match,flexible-extract" in res["results"]["tiny_gsm8k"]
    assert res["config"]["random_seed"] == res["config"]["fewshot_seed"] == 1234
    assert res["config"]["model_args"] == "pretrained=<model_dir>,dtype=float32,trust_remote_code=False"


def test_eval_results_byte_identical_and_path_free(two_runs):
    (o1, _), (o2, _) = two_runs["outs"]
    assert o1.read_bytes() == o2.read_bytes()
    assert (o1.parent / "summary.json").read_bytes() == (o2.parent / "summary.json").read_bytes()
    text = o1.read_text()
    assert str(two_runs["root"]) not in text and str(ROOT) not in text and "/tmp" not in text
    data = json.loads(text)
    assert not set(VOLATILE_KEYS) & set(data)


def test_runinfo_holds_volatile_keys(two_runs):
    (o1, _), (o2, _) = two_runs["outs"]
    r1 = read_json(o1.with_suffix(".runinfo.json"))
    r2 = read_json(o2.with_suffix(".runinfo.json"))
    for k in ("date", "pretty_env_info", "git_hash", "config.model_args", "path_substitutions", "wall_seconds"):
        assert k in r1, k
    assert r1["config.model_args"] != r2["config.model_args"]  # the two model paths
    assert r1["path_substitutions"]["<fixtures>"] == str(FX.resolve())


def test_summary(two_runs):
    out, res = two_runs["outs"][0]
    rows_ = read_json(out.parent / "summary.json")
    assert rows_ == summary(res)
    assert [(r["task"], r["n_shot"], r["metric"]) for r in rows_] == [
        ("tiny_arc_challenge", 25, "acc_norm"), ("tiny_hellaswag", 10, "acc_norm"), ("tiny_mmlu", 5, "acc"),
        ("tiny_truthfulqa_mc2", 0, "mc2"), ("tiny_winogrande", 5, "acc"), ("tiny_gsm8k", 5, "exact_match")]
    for r in rows_:
        assert isinstance(r["value"], float) and isinstance(r["stderr"], float)
