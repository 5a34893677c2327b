"""A new model card is config only: a ChatML card on a Mistral base with ShareGPT-style data that
carries system turns (recipes/openhermes-2.5-mistral-7b.yaml), and the same card on a Qwen2 base
(written here as a user would), build end to end at tiny scale with no code change."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
HERMES = "openhermes-2.5-mistral-7b"
QWEN = "qwen2-7b-hermes-lora"
CHATML = ("<|im_start|>system\nYou are Hermes.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
          "<|im_start|>assistant\nHello!<|im_end|>\n")

pytestmark = pytest.mark.slow


def _qwen_recipe(hermes: dict) -> dict:
    """The OpenHermes card's recipe on Qwen/Qwen2-7B, with a LoRA adapter: only config changes."""
    r = json.loads(json.dumps(hermes))
    r["id"] = QWEN
    r["card"]["title"] = "OpenHermes-style ChatML LoRA on Qwen2 7B"
    r["base_model"] = {"id": "Qwen/Qwen2-7B", "revision": None,
                       "files": ["model-*.safetensors", "model.safetensors.index.json", "*.json", "vocab.json",
                                 "merges.txt"], "trust_remote_code": False}
    r["adapters"]["main"]["train"] = {"method": "lora", "lora": {"r": 16, "alpha": 32, "dropout": 0.05},
                                      "learning_rate": 2.0e-4, "per_device_batch_size": 2, "max_length": 4096,
                                      "num_gpus": 1, "precision": "bf16", "seed": 1}
    r["merge"] = {"method": "plain"}
    r["eval"] = {"tasks": [{"task": "arc_challenge", "num_fewshot": 25, "metric": "acc_norm"},
                           {"task": "leaderboard_ifeval", "num_fewshot": 0, "metric": "prompt_level_strict_acc"}]}
    return r


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("new-cards")
    recipes = root / "recipes"
    recipes.mkdir()
    hermes = yaml.safe_load((REPO / "recipes" / f"{HERMES}.yaml").read_text())
    (recipes / f"{HERMES}.yaml").write_text(yaml.safe_dump(hermes, sort_keys=False))
    (recipes / f"{QWEN}.yaml").write_text(yaml.safe_dump(_qwen_recipe(hermes), sort_keys=False))
    work = root / "work"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    r = subprocess.run([SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(work), "--cores", "2",
                        "--configfile", str(REPO / "config.yaml"), "--config", f"recipes=[{HERMES},{QWEN}]",
                        f"recipes_dir={recipes}"], capture_output=True, text=True, env=env, timeout=2400)
    if r.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-2500:]}" for p in sorted((work / "logs").rglob("*.log")))
        pytest.fail(f"snakemake failed:\n{r.stderr[-4000:]}\n{logs[-15000:]}")
    return work


@pytest.mark.parametrize("rid,model_class,tok_file", [(HERMES, "MistralForCausalLM", "tokenizer.model"),
                                                      (QWEN, "Qwen2ForCausalLM", "merges.txt")])
def test_builds_with_the_model_class_and_tokenizer_family_of_its_base(built, rid, model_class, tok_file):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    model_dir = built / "results" / rid / "model"
    assert AutoConfig.from_pretrained(model_dir).architectures == [model_class]
    assert type(AutoModelForCausalLM.from_pretrained(model_dir)).__name__ == model_class
    assert (model_dir / tok_file).is_file()
    tok = AutoTokenizer.from_pretrained(model_dir)
    messages = [{"role": "system", "content": "You are Hermes."}, {"role": "user", "content": "Hi there"},
                {"role": "assistant", "content": "Hello!"}]
    assert tok.apply_chat_template(messages, tokenize=False) == CHATML  # the merged tokenizer renders ChatML
    assert tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True) == \
        CHATML[: CHATML.index("Hello!")]


def test_system_turns_reach_training_and_the_loss_falls(built):
    train = [json.loads(line) for line in (built / "results" / HERMES / "data" / "main" / "train.jsonl").open()]
    assert sum(1 for r in train if r["system"]) >= 5  # ShareGPT system turns became system prompts
    rejects = [json.loads(line) for line in (built / "results" / HERMES / "clean" / "openhermes" /
                                                "rejects.jsonl").open()]
    assert {"unknown_role", "system_not_first"} <= {r["reason"] for r in rejects}
    for rid in (HERMES, QWEN):
        probe = json.loads((built / "results" / rid / "adapters" / "main" / "train_summary.json").read_text())
        assert probe["loss_probe"]["after"] < probe["loss_probe"]["before"] - 0.1, (rid, probe["loss_probe"])


def test_the_card_follows_the_tasks_that_ran(built):
    for rid, tasks in ((HERMES, {"leaderboard_ifeval", "leaderboard_bbh", "leaderboard_math_hard", "leaderboard_gpqa",
                                 "leaderboard_musr", "leaderboard_mmlu_pro"}),
                       (QWEN, {"arc_challenge", "leaderboard_ifeval"})):
        card = (built / "results" / rid / "README.md").read_text()
        front = yaml.safe_load(card.split("---\n")[1])
        assert front["base_model"] in ("mistralai/Mistral-7B-v0.1", "Qwen/Qwen2-7B")
        summary = json.loads((built / "results" / rid / "eval" / "summary.json").read_text())
        assert {row["task"] for row in summary} == tasks, rid
        # one model-index entry per task that ran, its metrics those of the summary (in percent)
        index = {(r["dataset"]["type"], m["type"]): m["value"] for r in front["model-index"][0]["results"]
                 for m in r["metrics"]}
        want = {(row["dataset"]["repo"], row["metric"]): round(row["value"] * 100, 2) for row in summary}
        assert index == want, rid
