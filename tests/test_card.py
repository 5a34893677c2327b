"""card.render / render_adapter: front matter, numbers from artifacts, sections, determinism.

Fixtures (tests/data/card/): a resolved recipe (tulu-style QLoRA, two sources), a
data_report.json, a train_summary.json and an lm-eval 0.4 results.json (shape of a real
`simple_evaluate` output, with the mmlu group and its subtasks).
Convention checked here: card values (table and model-index) = round(lm-eval value * 100, 2).
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

from reprotune import provenance
from reprotune.card import render, render_adapter
from reprotune.card.render import TEMPLATES, effective_batch

DATA = Path(__file__).parent / "data" / "card"
RECIPE = yaml.safe_load((DATA / "recipe.yaml").read_text())
RESULTS = json.loads((DATA / "results.json").read_text())
REPORT = json.loads((DATA / "data_report.json").read_text())

# model-index dataset type -> (lm-eval task, metric key, config, split, n-shot)
EXPECTED_INDEX = {
    "ai2_arc": ("arc_challenge", "acc_norm,none", "ARC-Challenge", "test", 25),
    "hellaswag": ("hellaswag", "acc_norm,none", None, "validation", 10),
    "cais/mmlu": ("mmlu", "acc,none", "all", "test", 5),
    "truthful_qa": ("truthfulqa_mc2", "acc,none", "multiple_choice", "validation", 0),
    "winogrande": ("winogrande", "acc,none", "winogrande_xl", "validation", 5),
    "gsm8k": ("gsm8k", "exact_match,strict-match", "main", "test", 5),
}
PROMPT = "<|user|>\nWhat is 2+2?\n<|assistant|>\n4</s>\n"


def make_spec(tmp_path: Path, recipe: dict | None = None, results=None, **extra) -> dict:
    spec = {
        "recipe": copy.deepcopy(recipe or RECIPE),
        "data_reports": {"main": DATA / "data_report.json"},
        "train_summaries": {"main": DATA / "train_summary.json"},
        "results": results if results is not None else DATA / "results.json",
        "merge_info": None,
        "provenance": None,
        "prompt_example": PROMPT,
    }
    spec.update(extra)
    return spec


def split_card(text: str) -> tuple[dict, str]:
    assert text.startswith("---\n")
    _, fm, body = text.split("---\n", 2)
    return yaml.safe_load(fm), body


def section(body: str, title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", body, re.S | re.M)
    assert m, f"no section {title!r}"
    return m.group(1)


def table_rows(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not set(line) <= set("|-: "):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def tiny_variant() -> tuple[dict, dict]:
    recipe = copy.deepcopy(RECIPE)
    recipe["scale"] = "tiny"
    recipe["base_model"] = {"id": "tiny"}
    recipe["adapters"]["main"]["train"].update(num_gpus=0, max_steps=4, max_length=64)
    recipe["eval"] = {"suite": "open_llm_v1", "batch_size": 1, "limit": 8}
    results = copy.deepcopy(RESULTS)
    for key in ("results", "n-shot", "n-samples", "configs", "versions", "higher_is_better"):
        results[key] = {f"tiny_{k}": v for k, v in results[key].items()}
    results["group_subtasks"] = {f"tiny_{k}": [f"tiny_{c}" for c in v] for k, v in results["group_subtasks"].items()}
    results["groups"] = {f"tiny_{k}": v for k, v in results["groups"].items()}
    for v in results["n-shot"]:
        results["n-shot"][v] = 0
    results["config"]["limit"] = 8
    return recipe, results


# --------------------------------------------------------------------------- front matter
def test_front_matter_parses_and_model_index_equals_results(tmp_path):
    text = render(make_spec(tmp_path), tmp_path / "README.md")
    assert (tmp_path / "README.md").read_text() == text
    fm, _ = split_card(text)
    assert fm["license"] == "other"
    assert fm["license_name"] == "ai2-impact-license-low-risk"
    assert fm["license_link"] == "https://allenai.org/impact-license"
    assert fm["library_name"] == "peft"
    assert fm["base_model"] == "meta-llama/Llama-2-70b-hf"
    assert fm["datasets"] == ["allenai/tulu-v2-sft-mixture", "OpenAssistant/oasst1"]
    assert fm["language"] == ["en"]
    assert fm["model-index"][0]["name"] == "tulu-v2-qlora-70b"

    card = ModelCard(text)
    evals = card.data.eval_results
    assert sorted(e.dataset_type for e in evals) == sorted(EXPECTED_INDEX)
    for e in evals:
        task, key, config, split, shots = EXPECTED_INDEX[e.dataset_type]
        assert e.metric_value == round(RESULTS["results"][task][key] * 100, 2)
        assert e.dataset_config == config
        assert e.dataset_split == split
        assert e.dataset_args == {"num_few_shot": shots}
        assert e.task_type == "text-generation"
    gsm = next(e for e in evals if e.dataset_type == "gsm8k")
    assert gsm.metric_value == 50.42 and gsm.dataset_name == "GSM8K (5-shot)"


def ran(tasks: list[tuple], datasets: dict) -> dict:
    """RESULTS as evaluate.evaluate writes it: with the task list that ran and its datasets."""
    results = copy.deepcopy(RESULTS)
    results["reprotune"] = {"tasks": [dict(task=t, num_fewshot=n, metric=m, filter=f) for t, n, m, f in tasks],
                            "datasets": datasets}
    return results


def test_model_index_follows_the_tasks_that_ran(tmp_path):
    datasets = {"arc_challenge": {"repo": "allenai/ai2_arc", "revision": "c" * 40, "config": "ARC-Challenge",
                                  "split": "test"},
                "gsm8k": {"repo": "openai/gsm8k", "revision": "d" * 40, "config": "main", "split": "test"}}
    results = ran([("gsm8k", 5, "exact_match", "flexible-extract"), ("arc_challenge", 25, "acc", "none")], datasets)
    text = render(make_spec(tmp_path, results=results), tmp_path / "README.md")
    got = [(e.dataset_type, e.dataset_config, e.dataset_split, e.dataset_args, e.metric_type, e.metric_value)
           for e in ModelCard(text).data.eval_results]
    assert sorted(got) == sorted([
        ("openai/gsm8k", "main", "test", {"num_few_shot": 5}, "exact_match",
         round(RESULTS["results"]["gsm8k"]["exact_match,flexible-extract"] * 100, 2)),
        ("allenai/ai2_arc", "ARC-Challenge", "test", {"num_few_shot": 25}, "acc",
         round(RESULTS["results"]["arc_challenge"]["acc,none"] * 100, 2))])
    rows = table_rows(section(split_card(text)[1], "Evaluation"))
    # in the recipe's order
    assert [r[1:4] for r in rows[1:]] == [["`gsm8k`", "`exact_match,flexible-extract`", "5"],
                                          ["`arc_challenge`", "`acc,none`", "25"]]
    assert not any(r[0] == "Avg." for r in rows)  # acc is not the leaderboard's ARC metric


def test_model_index_of_a_v2_task_with_several_metrics(tmp_path):
    results = copy.deepcopy(RESULTS)
    results["results"]["leaderboard_ifeval"] = {"alias": "leaderboard_ifeval", "prompt_level_strict_acc,none": 0.25,
                                                "inst_level_loose_acc,none": 0.5}
    results["reprotune"] = {"tasks": [
        dict(task="leaderboard_ifeval", num_fewshot=0, metric="prompt_level_strict_acc", filter="none"),
        dict(task="leaderboard_ifeval", num_fewshot=0, metric="inst_level_loose_acc", filter="none")],
        "datasets": {"leaderboard_ifeval": {"repo": "wis-k/instruction-following-eval", "revision": "mirror",
                                            "config": None, "split": "train"}}}
    fm, _ = split_card(render(make_spec(tmp_path, results=results), tmp_path / "README.md"))
    (entry,) = fm["model-index"][0]["results"]
    assert entry["dataset"] == {"name": "IFEval (0-shot)", "type": "wis-k/instruction-following-eval",
                                "split": "train", "args": {"num_few_shot": 0}}
    assert [(m["type"], m["value"]) for m in entry["metrics"]] == [("prompt_level_strict_acc", 25.0),
                                                                    ("inst_level_loose_acc", 50.0)]


def test_license_name_only_for_other(tmp_path):
    recipe = copy.deepcopy(RECIPE)
    recipe["card"]["license"] = "llama2"
    fm, _ = split_card(render(make_spec(tmp_path, recipe), tmp_path / "README.md"))
    assert fm["license"] == "llama2"
    assert "license_name" not in fm and "license_link" not in fm


def test_evaluation_table_values_and_average(tmp_path):
    _, body = split_card(render(make_spec(tmp_path), tmp_path / "README.md"))
    ev = section(body, "Evaluation")
    rows = {r[0]: r for r in table_rows(ev)[1:]}
    expected = {
        "ARC (25-shot)": ("arc_challenge", "acc_norm,none"),
        "HellaSwag (10-shot)": ("hellaswag", "acc_norm,none"),
        "MMLU (5-shot)": ("mmlu", "acc,none"),
        "TruthfulQA (0-shot)": ("truthfulqa_mc2", "acc,none"),
        "Winogrande (5-shot)": ("winogrande", "acc,none"),
        "GSM8K (5-shot)": ("gsm8k", "exact_match,strict-match"),
    }
    assert list(rows) == [*expected, "Avg."]
    for name, (task, key) in expected.items():
        assert rows[name][5] == f"{round(RESULTS['results'][task][key] * 100, 2):.2f}"
        assert rows[name][3] == str(RESULTS["n-shot"][task])
    mean = sum(RESULTS["results"][t][k] * 100 for t, k in expected.values()) / len(expected)
    assert rows["Avg."][5] == f"{round(mean, 2):.2f}"
    # subtasks of the mmlu group never become rows; the group's samples are the sum of its leaves
    assert "formal_logic" not in ev and "humanities" not in ev
    assert rows["MMLU (5-shot)"][4] == "226"
    # reported numbers of the original card are shown beside ours, never as ours
    assert rows["ARC (25-shot)"][7] == "72.1"
    assert "DROP (3-shot) 11.2" in ev


# --------------------------------------------------------------------------- parameters
def test_parameters_table_effective_batch(tmp_path):
    _, body = split_card(render(make_spec(tmp_path), tmp_path / "README.md"))
    params = dict((r[0], r[1]) for r in table_rows(section(body, "Training framework and parameters")))
    assert params["Effective batch size"].startswith("128 (1 × 16 × 8")
    assert params["LoRA rank (r)"] == "64"
    assert params["LoRA alpha"] == "16"
    assert params["LoRA dropout"] == "0.1"
    assert params["Learning rate"] == "0.0001"
    assert params["LR scheduler"] == "linear"
    assert params["Warmup ratio"] == "0.03"
    assert params["GPUs asked for"] == "8"
    assert params["Max length (tokens)"] == "4096"
    assert params["DeepSpeed"] == "none"
    assert params["Optimizer steps run"] == "62"
    assert params["Trainable parameters"] == "1310720"
    assert effective_batch({"per_device_batch_size": 2, "gradient_accumulation_steps": 8, "num_gpus": 0}) == (16, "2 × 8 × 1")
    assert effective_batch({"per_device_batch_size": 2, "gradient_accumulation_steps": 1, "num_gpus": 8})[0] == 16


# --------------------------------------------------------------------------- datasets
def _numbers(text: str) -> set[str]:
    text = re.sub(r"`[^`]*`", "", text)  # names and repo ids
    return set(re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])", text))


def _report_numbers(obj) -> set[str]:
    out: set[str] = set()
    if isinstance(obj, dict):
        for v in obj.values():
            out |= _report_numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            out |= _report_numbers(v)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out.add(repr(obj))
    return out


def test_datasets_section_numbers_equal_data_report(tmp_path):
    _, body = split_card(render(make_spec(tmp_path), tmp_path / "README.md"))
    ds = section(body, "Datasets")
    # every number shown comes from the data report ...
    assert _numbers(ds) <= _report_numbers(REPORT)
    # ... and each row equals it, cell by cell
    rows = {r[0].strip("`"): r for r in table_rows(ds)[1:]}
    for name, src in REPORT["sources"].items():
        r = rows[name]
        assert r[2:] == [str(src["rows_read"]), str(src["rows_cleaned"]), r[4], str(src["available"]),
                         str(src["taken"]), str(src["shortfall"]), str(src["train"]), str(src["val"])]
        req = src["requested"]
        assert r[4] == (f"fraction {req['fraction']}" if "fraction" in req else f"count {req['count']}")
        for f in src["cleaning"]["filters"]:
            assert f"filter `{f['name']}`: {f['in']} in, {f['out']} out, {f['dropped']} dropped" in ds
        for reason, n in src["cleaning"]["reader_rejects"].items():
            assert f"`{reason}` {n}" in ds
    assert rows["**Total**"][-2:] == [str(REPORT["totals"]["train"]), str(REPORT["totals"]["val"])]
    assert f"mix seed {REPORT['seed']}" in ds


# --------------------------------------------------------------------------- tiny / full
def test_tiny_banner_present_for_tiny_absent_for_full(tmp_path):
    recipe, results = tiny_variant()
    (tmp_path / "tiny_results.json").write_text(json.dumps(results))
    text = render(make_spec(tmp_path, recipe, results=tmp_path / "tiny_results.json"), tmp_path / "tiny.md")
    fm, body = split_card(text)
    first = body.strip().splitlines()[0]
    assert first.startswith("> **Tiny rebuild.**")
    assert "tiny, offline CPU rebuild of `tulu-v2-qlora-70b`" in body.replace("\n> ", " ")
    assert "NOT those of the published model" in body
    assert fm["model-index"][0]["name"] == "tulu-v2-qlora-70b-tiny"
    assert "base_model" not in fm  # "tiny" is not a Hub repo
    assert "reprotune-tiny" in fm["tags"]
    # tiny_ task names map to the same display names and dataset ids, with the real n-shot
    by_type = {e["dataset"]["type"]: e for e in fm["model-index"][0]["results"]}
    assert set(by_type) == set(EXPECTED_INDEX)
    assert by_type["ai2_arc"]["dataset"]["name"] == "ARC (0-shot)"
    assert by_type["ai2_arc"]["metrics"][0]["value"] == round(RESULTS["results"]["arc_challenge"]["acc_norm,none"] * 100, 2)
    params = dict((r[0], r[1]) for r in table_rows(section(body, "Training framework and parameters")))
    assert params["Effective batch size"].startswith("16 (1 × 16 × 1")
    assert params["Max steps"].startswith("4")
    assert "limit 8 samples per task" in section(body, "Evaluation")

    full = render(make_spec(tmp_path), tmp_path / "full.md")
    assert "Tiny rebuild" not in full and "NOT those of the published model" not in full
    assert "reprotune-tiny" not in full


# --------------------------------------------------------------------------- bitsandbytes
def test_bitsandbytes_block_only_for_qlora(tmp_path):
    qlora = render(make_spec(tmp_path), tmp_path / "q.md")
    assert "## Bitsandbytes config" in qlora
    bnb = section(split_card(qlora)[1], "Bitsandbytes config")
    for line in ("- quant_method: bitsandbytes", "- load_in_4bit: True", "- bnb_4bit_quant_type: nf4",
                 "- bnb_4bit_use_double_quant: True", "- bnb_4bit_compute_dtype: bfloat16"):
        assert line in bnb
    assert "### Framework versions" in bnb

    recipe = copy.deepcopy(RECIPE)
    train = recipe["adapters"]["main"]["train"]
    train["method"] = "lora"
    del train["quantization"]
    lora = render(make_spec(tmp_path, recipe), tmp_path / "l.md")
    assert "Bitsandbytes" not in lora and "bnb_4bit" not in lora
    assert "### Framework versions" in lora


# --------------------------------------------------------------------------- determinism
def test_rendering_twice_gives_identical_bytes(tmp_path):
    spec = make_spec(tmp_path)
    render(spec, tmp_path / "a.md", adapter_readme_dir=tmp_path / "ad_a")
    render(make_spec(tmp_path), tmp_path / "b.md", adapter_readme_dir=tmp_path / "ad_b")
    assert (tmp_path / "a.md").read_bytes() == (tmp_path / "b.md").read_bytes()
    assert (tmp_path / "ad_a/main/README.md").read_bytes() == (tmp_path / "ad_b/main/README.md").read_bytes()
    text = (tmp_path / "a.md").read_text()
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text)  # no dates
    assert str(tmp_path) not in text


# --------------------------------------------------------------------------- sections
SEED_SECTIONS = [
    "Model description", "Datasets", "Training framework and parameters", "Bitsandbytes config",
    "Prompt template", "Model export", "Evaluation", "Usage", "License and disclaimer",
    "Limitations & Biases", "Developers", "Citation", "Notes on the original card", "Provenance",
]


def test_sections_and_card_facts(tmp_path):
    _, body = split_card(render(make_spec(tmp_path), tmp_path / "README.md"))
    heads = re.findall(r"^## (.+)$", body, re.M)
    assert heads == SEED_SECTIONS
    assert "### Framework versions" in body
    assert PROMPT in body
    assert "```bibtex\n@misc{ivison2023camels," in body
    for note in RECIPE["card"]["notes"]:
        assert f"- {note}" in body
    assert RECIPE["card"]["limitations"].strip() in body
    assert RECIPE["card"]["license_text"].strip() in body
    assert "Merge method `qlora_dequant`" in body
    assert "allenai/open-instruct finetune.py with QLoRA." in body


def test_missing_optional_artifacts(tmp_path):
    spec = make_spec(tmp_path, train_summaries={}, prompt_example=None)
    spec["results"] = None
    fm, body = split_card(render(spec, tmp_path / "README.md"))
    assert "model-index" not in fm
    assert "No evaluation results were supplied" in body
    assert "No rendered example was supplied" in body
    assert "No `provenance.json` was supplied." in body
    assert "Optimizer steps run" not in body


def test_system_messages_section(tmp_path):
    recipe = copy.deepcopy(RECIPE)
    msgs = tmp_path / "orca_system.json"
    msgs.write_text(json.dumps(["", "You are an AI assistant.", "Think step-by-step."]))
    recipe["adapters"]["main"]["data"]["system_messages"] = {"assign_to_empty": True, "messages_file": str(msgs)}
    _, body = split_card(render(make_spec(tmp_path, recipe), tmp_path / "README.md"))
    sm = section(body, "System messages")
    assert "1. \\<empty system message\\>" in sm
    assert "2. You are an AI assistant." in sm
    assert "3. Think step-by-step." in sm
    _, plain = split_card(render(make_spec(tmp_path), tmp_path / "p.md"))
    assert "## System messages" not in plain


def test_merge_comparison_and_combine(tmp_path):
    recipe = copy.deepcopy(RECIPE)
    recipe["merge"] = {"method": "qlora_dequant", "compare": ["plain", "qlora_dequant"]}
    other = copy.deepcopy(RESULTS)
    other["results"]["arc_challenge"]["acc_norm,none"] = 0.7085
    (tmp_path / "plain.json").write_text(json.dumps(other))
    info = tmp_path / "merge_info.json"
    info.write_text(json.dumps({"method": "qlora_dequant", "adapters": ["main"]}))
    # listed plain first: the recipe's merge method picks the headline variant
    spec = make_spec(tmp_path, recipe, results={"plain": tmp_path / "plain.json", "qlora_dequant": DATA / "results.json"},
                     merge_info=info)
    fm, body = split_card(render(spec, tmp_path / "README.md"))
    arc = next(e for e in fm["model-index"][0]["results"] if e["dataset"]["type"] == "ai2_arc")
    assert arc["metrics"][0]["value"] == 72.35
    assert "(headline variant: `qlora_dequant`)" in body
    comp = body.split("### Export method comparison", 1)[1]
    rows = {r[0]: r for r in table_rows(comp)}
    assert rows["ARC (25-shot)"][1:] == ["72.35", "70.85", "-1.50"]
    assert "method: qlora_dequant" in section(body, "Model export")

    recipe2 = copy.deepcopy(RECIPE)
    recipe2["merge"] = {"method": "combine", "combine": {"adapters": ["a", "b"], "weights": [0.6, 0.4],
                                                           "combination_type": "linear"}}
    _, body2 = split_card(render(make_spec(tmp_path, recipe2), tmp_path / "c.md"))
    mx = section(body2, "Model export")
    assert "| `a` | 0.6 |" in mx and "| `b` | 0.4 |" in mx and "`linear`" in mx


def test_provenance_section_from_provenance_json(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src = Path("resources/sources/tulu-v2-qlora-70b/tulu_mix")
    (src / "data").mkdir(parents=True)
    (src / "data/train-00000.parquet").write_bytes(b"PAR1 x PAR1")
    (src / "manifest.json").write_text(json.dumps({"revision": "6248b175d2ccb5ec7c4aeb22e6d8ee3b21b2c752"}))
    prov_path = Path("results/tulu-v2-qlora-70b/provenance.json")
    prov = provenance.write(
        {"recipe": RECIPE, "command": ["snakemake", "--cores", "all", "--configfile", "config.yaml"],
         "containers": {"train": "docker://ghcr.io/example/reprotune-train:0.1", "card": None}},
        {"source:tulu_mix": src}, prov_path)
    spec = make_spec(tmp_path, provenance=prov_path)
    _, body = split_card(render(spec, Path("README.md")))
    pv = section(body, "Provenance")
    assert prov["inputs"]["source:tulu_mix"]["files"]["data/train-00000.parquet"] in pv
    assert "`6248b175d2ccb5ec7c4aeb22e6d8ee3b21b2c752`" in pv
    assert prov["recipe_sha256"] in pv
    assert "snakemake --cores all --configfile config.yaml" in pv
    assert "`docker://ghcr.io/example/reprotune-train:0.1`" in pv and "none (host)" in pv
    fv = body.split("### Framework versions", 1)[1].split("##", 1)[0]
    assert f"- PEFT {prov['versions']['peft']}" in fv or prov["versions"]["peft"] is None
    assert f"- huggingface_hub {prov['versions']['huggingface_hub']}" in fv


def test_adapter_readme(tmp_path):
    out = tmp_path / "adapter_README.md"
    text = render_adapter(make_spec(tmp_path), "main", out)
    assert out.read_text() == text
    fm, body = split_card(text)
    assert fm["library_name"] == "peft"
    assert fm["base_model"] == "meta-llama/Llama-2-70b-hf"
    assert "model-index" not in fm
    assert "| LoRA rank (r) | 64 |" in body
    assert "| Effective batch size | 128 (1 × 16 × 8" in body
    assert "bnb_4bit_quant_type: nf4" in body
    ModelCard(text)
    render(make_spec(tmp_path), tmp_path / "README.md", adapter_readme_dir=tmp_path / "publish")
    assert (tmp_path / "publish/main/README.md").read_text() == text
    with pytest.raises(KeyError):
        render_adapter(make_spec(tmp_path), "nope", tmp_path / "x.md")


def test_templates_type_no_numbers():
    """Numbers in the card come from the build: the templates' literal text has no digits."""
    for path in TEMPLATES.glob("*.j2"):
        text = path.read_text()
        text = re.sub(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", "", text, flags=re.S)
        text = text.replace("sha256", "")
        hits = re.findall(r".{0,20}\d.{0,20}", text)
        assert not hits, f"{path.name}: {hits[:3]}"
