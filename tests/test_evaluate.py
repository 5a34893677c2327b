"""Evaluation from config: presets, the eval-data registry and catalog, validation,
the eval fixtures (real Hub layouts), the eval-data download, and real lm-eval runs of
the tiny v1/v2 suites and a custom task list on a tiny random model."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import copy
import csv
import io
import json
import shutil
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from reprotune import eval_tasks, plan
from reprotune.download import fetch_dataset, read_sums
from reprotune.eval_tasks import make_catalog as catalog_mod
from reprotune.evaluate import VOLATILE_KEYS, EvalError, evaluate, summary
from reprotune.io import read_json
from reprotune.recipe import RecipeError, load_recipe

ROOT = Path(__file__).resolve().parents[1]
MIRROR = ROOT / "fixtures" / "hub"
SUMS = ROOT / "fixtures" / "SHA256SUMS"
RECIPE = ROOT / "recipes" / "tulu-v2-qlora-70b.yaml"

V1 = [("arc_challenge", 25, "acc_norm", "none"), ("hellaswag", 10, "acc_norm", "none"), ("mmlu", 5, "acc", "none"),
      ("truthfulqa_mc2", 0, "acc", "none"), ("winogrande", 5, "acc", "none"),
      ("gsm8k", 5, "exact_match", "strict-match")]
V2 = [("leaderboard_ifeval", 0, m, "none") for m in ("prompt_level_strict_acc", "inst_level_strict_acc",
                                                       "prompt_level_loose_acc", "inst_level_loose_acc")] + [
    ("leaderboard_bbh", 3, "acc_norm", "none"), ("leaderboard_math_hard", 4, "exact_match", "none"),
    ("leaderboard_gpqa", 0, "acc_norm", "none"), ("leaderboard_musr", 0, "acc_norm", "none"),
    ("leaderboard_mmlu_pro", 5, "acc", "none")]
CUSTOM = [{"task": "arc_challenge", "num_fewshot": 2, "metric": "acc"},
          {"task": "gsm8k", "num_fewshot": 1, "metric": "exact_match", "filter": "flexible-extract"}]


def rows(tasks: list[dict]) -> list[tuple]:
    return [(t["task"], t["num_fewshot"], t["metric"], t["filter"]) for t in tasks]


# --------------------------------------------------------------------------- config

def test_catalog_matches_installed_lm_eval():
    names, text = catalog_mod.build()
    assert eval_tasks.NAMES_FILE.read_text(encoding="utf-8") == names, "run python -m reprotune.eval_tasks.make_catalog"
    assert eval_tasks.CATALOG_FILE.read_text(encoding="utf-8") == text, "run python -m reprotune.eval_tasks.make_catalog"


def test_registry_repos_are_lm_evals_datasets():
    assert set(eval_tasks.catalog()["tasks"]) == set(eval_tasks.registry())
    for task, reg in eval_tasks.registry().items():
        assert reg["builder"] in ("parquet", "csv", "json"), task
        for leaf in eval_tasks.leaves(task).values():
            assert leaf["dataset_path"] == reg["repo"], (task, leaf)
            used = {v for k, v in leaf["splits"].items() if v}
            assert used <= set(reg["data_files"]), (task, used)


def test_presets_take_shots_and_metrics_from_lm_eval():
    assert rows(eval_tasks.expand({"suite": "open_llm_v1"})) == V1
    assert rows(eval_tasks.expand({"suite": "open_llm_v2"})) == V2
    for name in eval_tasks.presets():
        for t in eval_tasks.expand({"suite": name}):
            info = eval_tasks.catalog()["tasks"][t["task"]]
            assert f"{t['metric']},{t['filter']}" in info["result_keys"]
            yaml_shots = {leaf["num_fewshot"] for leaf in info["leaves"].values()} - {None}
            assert yaml_shots in (set(), {t["num_fewshot"]}), (t, yaml_shots)


def test_custom_task_list_expands_filter():
    assert rows(eval_tasks.expand({"tasks": CUSTOM})) == [("arc_challenge", 2, "acc", "none"),
                                                          ("gsm8k", 1, "exact_match", "flexible-extract")]
    assert eval_tasks.task_names({"suite": "open_llm_v2"})[:2] == ["leaderboard_ifeval", "leaderboard_bbh"]


def test_seed_recipes_stay_on_v1_and_a_recipe_can_choose_v2(tmp_path):
    seeds = yaml.safe_load((ROOT / "config.yaml").read_text())["recipes"]  # their cards report v1
    for rid in seeds:
        assert yaml.safe_load((ROOT / "recipes" / f"{rid}.yaml").read_text())["eval"]["suite"] == "open_llm_v1", rid
    assert yaml.safe_load((ROOT / "recipes" / "openhermes-2.5-mistral-7b.yaml").read_text())["eval"]["suite"] == \
        "open_llm_v2"
    path = _recipe_with(tmp_path, {"suite": "open_llm_v2", "batch_size": 1})
    r = load_recipe(path, ROOT / "overlays" / "tiny.yaml")
    assert rows(plan.eval_spec(r)["tasks"]) == V2 and plan.eval_spec(r)["limit"] == 10
    assert list(plan.eval_data_dirs(r)) == list(dict.fromkeys(t[0] for t in V2))


def _recipe_with(tmp_path: Path, ev: dict) -> Path:
    data = yaml.safe_load(RECIPE.read_text())
    data["eval"] = ev
    path = tmp_path / RECIPE.name
    path.write_text(yaml.safe_dump(data))
    return path


def _task(**kw):
    return {**CUSTOM[0], **kw}


BAD = [
    ({"tasks": [CUSTOM[0], _task(task="leaderbord_bbh")]},
     "key 'eval.tasks.1.task': 'leaderbord_bbh' is not an lm-eval task (lm-eval 0.4.13; did you mean 'leaderboard_bbh'?)"),
    ({"tasks": [_task(task="arc_easy")]}, "key 'eval.tasks.0.task': lm-eval task 'arc_easy' has no eval-data registry"),
    ({"tasks": [_task(metric="f1")]},
     "key 'eval.tasks.0.metric': 'f1' is not a metric of lm-eval task 'arc_challenge' (expected one of: acc, acc_norm)"),
    ({"tasks": [_task(num_fewshot=-1)]}, "key 'eval.tasks.0.num_fewshot': -1 is out of range (expected >= 0)"),
    ({"tasks": [_task(task="gsm8k", metric="exact_match")]},
     "key 'eval.tasks.0.filter': 'gsm8k' reports 'exact_match' under several filters: give one of: "
     "flexible-extract, strict-match"),
    ({"tasks": [_task(filter="strict-match")]}, "key 'eval.tasks.0.filter': 'strict-match' is not a filter"),
    ({"tasks": [CUSTOM[0], _task(metric="acc_norm", num_fewshot=3)]},
     "key 'eval.tasks.1.num_fewshot': 'arc_challenge' is listed with 2 and 3 shots"),
    ({"tasks": [CUSTOM[0], CUSTOM[0]]}, "key 'eval.tasks.1': 'arc_challenge' 'acc' is listed twice"),
    ({"suite": "open_llm_v1", "tasks": CUSTOM}, "key 'eval': give either 'suite' (open_llm_v1 | open_llm_v2) or 'tasks', not both"),
    ({"batch_size": 1}, "key 'eval': give either 'suite'"),
    ({"suite": "open_llm_v3"}, "key 'eval.suite': 'open_llm_v3' is not allowed"),
    ({"tasks": [{"task": "mmlu", "num_fewshot": 5}]}, "missing required key 'eval.tasks.0.metric'"),
]


@pytest.mark.parametrize("ev,expected", BAD, ids=[e for _, e in BAD])
def test_bad_eval_block_one_clear_line(tmp_path, ev, expected):
    path = _recipe_with(tmp_path, ev)
    with pytest.raises(RecipeError) as ei:
        load_recipe(path)
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith(f"{path}: "), msg
    assert expected in msg, msg


def test_recipe_load_does_not_import_lm_eval(tmp_path):
    code = ("import sys; from reprotune.recipe import load_recipe; from reprotune import plan; "
            f"r = load_recipe({str(_recipe_with(tmp_path, {'suite': 'open_llm_v2'}))!r}); plan.eval_spec(r); "
            "assert 'lm_eval' not in sys.modules and 'datasets' not in sys.modules")
    import subprocess

    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})


# --------------------------------------------------------------------------- fixtures

# real column names of each repo's files (Hub dataset viewers / lm-eval's doc_to_text)
COLUMNS = {
    "allenai/ai2_arc": ["id", "question", "choices", "answerKey"],
    "Rowan/hellaswag": ["ind", "activity_label", "ctx_a", "ctx_b", "ctx", "endings", "source_id", "split",
                        "split_type", "label"],
    "cais/mmlu": ["question", "subject", "choices", "answer"],
    "truthfulqa/truthful_qa": ["question", "mc1_targets", "mc2_targets"],
    "allenai/winogrande": ["sentence", "option1", "option2", "answer"],
    "openai/gsm8k": ["question", "answer"],
    "wis-k/instruction-following-eval": ["key", "prompt", "instruction_id_list", "kwargs"],
    "SaylorTwift/bbh": ["input", "target"],
    "DigitalLearningGmbH/MATH-lighteval": ["problem", "level", "solution", "type"],
    "TAUR-Lab/MuSR": ["narrative", "question", "choices", "answer_index", "answer_choice"],
    "TIGER-Lab/MMLU-Pro": ["question_id", "question", "options", "answer", "answer_index", "cot_content",
                           "category", "src"],
}


def _columns(path: Path) -> list[str]:
    if path.suffix == ".csv":
        return next(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
    return pq.read_schema(path).names


def test_fixtures_have_every_leaf_split_in_the_real_layout():
    pins = read_sums(SUMS)
    for task, reg in eval_tasks.registry().items():
        repo_root = MIRROR / "datasets" / reg["repo"]
        files = sorted(p.relative_to(repo_root).as_posix() for p in repo_root.rglob("*") if p.is_file())
        for leaf in eval_tasks.leaves(task):
            for split, paths in eval_tasks.data_files(task, leaf, files).items():
                for rel in paths:
                    assert f"datasets/{reg['repo']}/{rel}" in pins, rel
                    cols = _columns(repo_root / rel)
                    if reg["repo"] == "Idavidrein/gpqa":
                        assert {"Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 3"} <= set(cols)
                    else:
                        assert cols == COLUMNS[reg["repo"]], (task, rel)


def test_fixture_generator_reproduces_the_pinned_files(tmp_path):
    sys.path.insert(0, str(ROOT / "fixtures"))
    import make_eval_fixtures as gen

    files = gen.build()
    for rel, data in files.items():
        assert (MIRROR / rel).read_bytes() == data, rel
    sums = tmp_path / "SHA256SUMS"
    shutil.copy(SUMS, sums)
    gen.repin(sums, files)
    assert sums.read_text() == SUMS.read_text()  # pinned, and the training-source lines kept


# --------------------------------------------------------------------------- eval-data download

def test_eval_data_download_from_the_mirror_writes_pinned_manifest(tmp_path):
    recipe = {"id": "r", "hub_mirror": "fixtures/hub"}
    spec = plan.eval_download_spec(recipe, "leaderboard_gpqa", "ignored.lock.json", frozen=True)
    assert "lock" not in spec  # a mirror is pinned by its SHA256SUMS
    man = fetch_dataset(spec, tmp_path / "gpqa", MIRROR)
    assert sorted(man["files"]) == ["gpqa_diamond.csv", "gpqa_extended.csv", "gpqa_main.csv"]
    pins = plan.repo_pins(recipe, "Idavidrein/gpqa")
    assert {f"datasets/Idavidrein/gpqa/{p}": f["sha256"] for p, f in man["files"].items()} == pins
    assert read_json(tmp_path / "gpqa" / "manifest.json") == man


def test_eval_data_download_from_the_hub_writes_a_lock_entry(tmp_path, monkeypatch):
    from test_download import FakeHub

    from reprotune.lock import get_entry

    files = {f"ARC-{c}/{s}-00000-of-00001.parquet": f"{c}{s}".encode() for c in ("Challenge", "Easy")
             for s in ("train", "validation", "test")}
    FakeHub(tmp_path / "cache", {**files, "README.md": b"card"}).install(monkeypatch)
    lock = tmp_path / "r.lock.json"
    spec = plan.eval_download_spec({"id": "r", "hub_mirror": None}, "arc_challenge", str(lock))
    man = fetch_dataset(spec, tmp_path / "arc", None)
    assert sorted(man["files"]) == sorted(p for p in files if p.startswith("ARC-Challenge/"))
    entry = get_entry(lock, plan.eval_lock_key("arc_challenge"))
    assert entry["repo"] == "allenai/ai2_arc" and entry["revision"] == "a" * 40
    assert entry["files"] == {p: {"sha256": f["sha256"], "size": f["size"]} for p, f in man["files"].items()}
    frozen = {**spec, "frozen": True}
    assert fetch_dataset(frozen, tmp_path / "arc2", None) == man  # the lock entry satisfies frozen


# --------------------------------------------------------------------------- lm-eval runs

def _data(root: Path, tasks: list[str]) -> dict[str, Path]:
    out = {}
    for t in tasks:
        out[t] = root / t
        fetch_dataset(plan.eval_download_spec({"id": "r", "hub_mirror": "fixtures/hub"}, t), out[t], MIRROR)
    return out


def _run(root: Path, model: Path, name: str, ev: dict, limit: int, data_root: Path) -> Path:
    spec = {"tasks": eval_tasks.expand(ev), "suite": ev.get("suite"), "batch_size": 4, "limit": limit,
            "seed": 1234, "device": "cpu", "nltk_data": "fixtures/eval/nltk_data"}
    out = root / name / "results.json"
    evaluate(spec, model, out, _data(data_root, eval_tasks.task_names(ev)))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from test_merge import build_tiny_base  # the tiny Llama builder shared with the merge tests

    root = tmp_path_factory.mktemp("eval")
    m1 = build_tiny_base(root / "model_a")
    m2 = root / "elsewhere" / "model_b"  # same weights at another path, data at other paths too
    shutil.copytree(m1, m2)
    out = {"root": root}
    for name, ev, limit in (("v1", {"suite": "open_llm_v1"}, 2), ("v2", {"suite": "open_llm_v2"}, 1)):
        out[name] = [_run(root, m, f"{name}_{i}", ev, limit, root / f"data{i}") for i, m in enumerate((m1, m2))]
    out["custom"] = _run(root, m1, "custom", {"tasks": CUSTOM}, 2, root / "data0")
    return out


@pytest.mark.parametrize("name,expected", [("v1", V1), ("v2", V2)])
def test_suite_runs_the_real_tasks_on_local_data(runs, name, expected):
    res = read_json(runs[name][0])
    got = [(r["task"], r["n_shot"], r["metric"], r["filter"]) for r in summary(res)]
    assert got == expected
    for r in summary(res):
        assert isinstance(r["value"], float) and 0.0 <= r["value"] <= 1.0, r
        assert r["dataset"]["revision"] == "mirror"
    for task, shots, _, _ in expected:
        reg = eval_tasks.registry()[task]
        for leaf in eval_tasks.leaves(task):
            cfg = res["configs"][leaf]
            assert cfg["num_fewshot"] == shots and cfg["dataset_path"] == reg["builder"], leaf
            files = [f for fs in cfg["dataset_kwargs"]["data_files"].values() for f in fs]
            assert files and all(f.startswith(f"<data:{task}>/") for f in files), files
    assert res["reprotune"]["suite"] == f"open_llm_{name}"


def test_results_and_summary_byte_identical_and_path_free(runs):
    for name in ("v1", "v2"):
        o1, o2 = runs[name]
        assert o1.read_bytes() == o2.read_bytes(), name
        assert (o1.parent / "summary.json").read_bytes() == (o2.parent / "summary.json").read_bytes()
        text = o1.read_text()
        assert str(runs["root"]) not in text and str(ROOT) not in text and "/tmp" not in text
        assert not set(VOLATILE_KEYS) & set(json.loads(text))
        run1 = read_json(o1.with_suffix(".runinfo.json"))
        assert run1["path_substitutions"]["<data:gsm8k>" if name == "v1" else "<nltk_data>"]


def test_custom_task_list_runs_with_its_own_shots_and_filter(runs):
    res = read_json(runs["custom"])
    assert [(r["task"], r["n_shot"], r["lm_eval_metric"]) for r in summary(res)] == [
        ("arc_challenge", 2, "acc,none"), ("gsm8k", 1, "exact_match,flexible-extract")]
    assert res["n-shot"] == {"arc_challenge": 2, "gsm8k": 1}


def test_card_model_index_follows_what_ran(runs, tmp_path):
    from huggingface_hub import ModelCard

    from reprotune.card import render
    from test_card import make_spec

    for out in (runs["v2"][0], runs["custom"]):
        res = read_json(out)
        text = render(make_spec(tmp_path, results=out), tmp_path / "README.md")
        got = sorted((e.dataset_type, e.dataset_args["num_few_shot"], e.metric_type, e.metric_value)
                     for e in ModelCard(text).data.eval_results)
        want = sorted((r["dataset"]["repo"], r["n_shot"], r["metric"], round(r["value"] * 100, 2))
                      for r in summary(res))
        assert got == want


def test_missing_eval_data_is_one_clear_error(tmp_path):
    from test_merge import build_tiny_base

    spec = {"tasks": eval_tasks.expand({"tasks": CUSTOM[:1]}), "device": "cpu"}
    with pytest.raises(EvalError, match=r"arc_challenge: no eval data dir given \(--eval-data arc_challenge=DIR\)"):
        evaluate(spec, build_tiny_base(tmp_path / "m"), tmp_path / "out" / "results.json", {})
    with pytest.raises(EvalError, match="manifest.json missing"):
        evaluate(spec, tmp_path / "m", tmp_path / "out" / "results.json", {"arc_challenge": tmp_path / "nope"})
