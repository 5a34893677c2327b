"""bench/import_cards.py's comparison helpers, without the importer: card-stated detection, value
forms, card/recipe pairing, prompt-format comparison, and one run with a stand-in draft."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_import_cards", REPO / "bench" / "import_cards.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def stated(bench, text, key, value):
    return bench.card_stated(bench.read_card(text), key, value) is not None


# -- card-stated ----------------------------------------------------------------------------------
def test_value_after_a_synonym_is_card_stated(bench):
    assert stated(bench, "| Parameter | Value |\n|---|---|\n| LR | 3e-4 |", "learning_rate", 3e-4)
    assert stated(bench, "We fine-tune with a learning rate of 2e-5 for 3 epochs.", "learning_rate", 2e-5)
    assert stated(bench, "- num_epochs: 5.0\n- LoRA dropout: 0.1", "epochs", 5)
    assert stated(bench, "gradient_checkpointing: True", "gradient_checkpointing", True)
    assert not stated(bench, "gradient_checkpointing: false", "gradient_checkpointing", True)


def test_number_far_from_any_synonym_is_not_card_stated(bench):
    text = "The learning rate matters. " + "Some unrelated prose about the data. " * 5 + "We cite 2e-5 here."
    assert not stated(bench, text, "learning_rate", 2e-5)
    assert not stated(bench, "The model scored 16 points.", "lora.r", 16)


def test_number_next_to_another_key_is_not_card_stated(bench):
    text = "LoRA rank: 64, LoRA alpha: 16, batch size: 3"
    assert stated(bench, text, "lora.r", 64)
    assert stated(bench, text, "lora.alpha", 16)
    assert not stated(bench, text, "lora.r", 16)
    assert not stated(bench, text, "lora.alpha", 3)


def test_longest_mention_wins(bench):
    text = "- lr_scheduler_warmup_ratio: 0.03\n- per_device_eval_batch_size: 1\n- lr_scheduler_type: linear"
    assert stated(bench, text, "warmup_ratio", 0.03)
    assert not stated(bench, text, "learning_rate", 0.03)
    assert not stated(bench, text, "per_device_batch_size", 1)
    assert stated(bench, text, "lr_scheduler", "linear")


def test_one_letter_synonym_needs_a_separator(bench):
    assert stated(bench, "lora config: r: 16, alpha 32", "lora.r", 16)
    assert not stated(bench, "see r 16 for details", "lora.r", 16)


def test_whitespace_collapsed_and_case_ignored(bench):
    text = "### Training   hyperparameters - LEARNING_RATE:\n\n  1E-4 - Total_Train_Batch_Size: 128"
    assert stated(bench, text, "learning_rate", 1e-4)
    assert stated(bench, text, "total_batch_size", 128)
    assert not stated(bench, text, "per_device_batch_size", 128)


def test_named_forms(bench):
    card = "The training takes on 8x A100(80G) GPUs. We used DeepSpeed ZeRO stage 3. Finetune_Type | QLoRA(NF4)"
    assert stated(bench, card, "num_gpus", 8)
    assert not stated(bench, card, "num_gpus", 4)
    assert stated(bench, card, "deepspeed", "zero3")
    assert not stated(bench, card, "deepspeed", "zero2")
    assert stated(bench, card, "method", "qlora")
    assert stated(bench, card, "quantization.quant_type", "nf4")
    assert stated(bench, "load_in_4bit: True", "method", "qlora")
    assert stated(bench, "peft_model: false", "method", "full")
    assert stated(bench, "| DeepSpeed | ZERO-2 |", "deepspeed", "zero2")
    assert stated(bench, "8 GPUs were used", "num_gpus", 8)
    assert not stated(bench, "128 GPUs were used", "num_gpus", 8)


def test_string_value_forms(bench):
    assert stated(bench, "dtype: bfloat16", "precision", "bf16")
    assert stated(bench, "precision: fp16", "precision", "fp16")
    assert not stated(bench, "precision: bf16", "precision", "fp16")
    assert stated(bench, "Optimizer | AdamW", "optimizer", "adamw_torch")
    assert stated(bench, "bnb_4bit_compute_dtype: bfloat16", "quantization.compute_dtype", "bfloat16")
    assert not stated(bench, "bnb_4bit_compute_dtype: bfloat16", "precision", "bf16")
    assert stated(bench, "We add flash_attention_2 support", "attn_implementation", "flash_attention_2")
    # a form inside a longer spelling of another value does not count
    assert not stated(bench, "optimizer: paged_adamw_32bit", "optimizer", "adamw_torch")
    assert stated(bench, "optimizer: paged_adamw_32bit", "optimizer", "paged_adamw_32bit")
    assert not stated(bench, "lr_scheduler: cosine_with_restarts", "lr_scheduler", "cosine")


def test_boolean_is_the_first_one_after_the_key(bench):
    text = "gradient_checkpointing: false, use_flash_attention: true"
    assert not stated(bench, text, "gradient_checkpointing", True)
    assert stated(bench, text, "gradient_checkpointing", False)
    assert stated(bench, text, "attn_implementation", "flash_attention_2")


def test_count_before_the_key(bench):
    assert stated(bench, "We trained for 3 epochs with a cosine schedule.", "epochs", 3)
    assert not stated(bench, "We trained for 3 epochs with a cosine schedule.", "epochs", 1)
    assert stated(bench, "We trained for 3 epochs with a cosine schedule.", "lr_scheduler", "cosine")


# -- value forms ----------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["1e-4", "1.0e-4", "0.0001", "1e-04", "1E-4", "0.01%"])
def test_number_notations(bench, text):
    assert any(bench.same_number(n, 1e-4) for n in bench.numbers_in(text))


def test_numbers_in(bench):
    assert bench.numbers_in("betas=(0.9,0.999) and epsilon=1e-08") == [0.9, 0.999, 1e-08]
    assert bench.numbers_in("3 vs 3.0, 1,000 steps, 8xA100") == [3, 3.0, 1000, 8]
    assert bench.numbers_in("llama2 gpt-4 v1.1") == [4]   # no number inside a word
    assert bench.same_number(3, 3.0) and not bench.same_number(True, 1)


def test_same_value(bench):
    assert bench.same_value(1e-4, 0.0001)
    assert not bench.same_value(1e-4, 1.0001e-4)
    assert not bench.same_value(16, "TODO: LoRA rank?")
    assert not bench.same_value(16, None)
    assert not bench.same_value(True, 1)
    assert bench.same_value("zero3", "zero3")


# -- pairing --------------------------------------------------------------------------------------
def write_recipe(folder: Path, rid: str, original: str, template: str = "alpaca") -> None:
    data = {"id": rid, "card": {"original": original, "license": "llama2"},
            "defaults": {"train": {"method": "full", "learning_rate": 2e-5}},
            "adapters": {"main": {"template": template, "train": {"per_device_batch_size": 2,
                                                                  "max_length": 1024}}}}
    (folder / f"{rid}.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")


def test_pairing(bench, tmp_path):
    write_recipe(tmp_path, "dolphin-orca-platypus-70b", "fangloveskari/Dolphin_ORCA_PlatyPus_LLaMA_70b")
    write_recipe(tmp_path, "llama2-13b-orca-8k", "OpenAssistant/llama2-13b-orca-8k-3319")
    write_recipe(tmp_path, "orca-mini-13b", "psmathur/orca_mini_13b")
    write_recipe(tmp_path, "llama2", "meta-llama/Llama-2-7b")
    recipes = bench.load_recipes(tmp_path)
    assert recipes["orca-mini-13b"]["adapters"]["main"]["train"]["method"] == "full"   # defaults merged
    assert bench.pair("dolphin-orca-platypus-llama-70b", recipes) == "dolphin-orca-platypus-70b"
    assert bench.pair("llama2-13b-orca-8k-3319", recipes) == "llama2-13b-orca-8k"
    assert bench.pair("llama2-13b-orca-8k", recipes) == "llama2-13b-orca-8k"
    assert bench.pair("orca_mini_13b", recipes) == "orca-mini-13b"
    assert bench.pair("zephyr-7b-beta", recipes) is None


# -- prompt format --------------------------------------------------------------------------------
def test_prompt_format_comparison(bench):
    from reprotune import templates

    assert bench.compare_template("orca_mini", "orca_mini")[0]
    assert bench.compare_template("tulu", "tulu")[0]
    ok, why = bench.compare_template("orca_mini", "alpaca")
    assert not ok and "expected" in why
    assert not bench.compare_template("tulu", "zephyr")[0]
    assert not bench.compare_template("alpaca", "TODO: which prompt format?")[0]
    assert not bench.compare_template("alpaca", None)[0]
    own = {"name": "x-prompt", "chat_template": templates.get("fashiongpt").chat_template}
    assert bench.compare_template("fashiongpt", own)[0]


def test_single_turn_probe_skipped(bench):
    # orca_mini refuses two turns: that probe is skipped for both, the others still compared
    assert bench.renderings(bench.templates.get("orca_mini"), bench.PROBES["two turns"])["render"] is None
    ok, _ = bench.compare_template("orca_mini", "orca_mini")
    assert ok


# -- one run with a stand-in importer -------------------------------------------------------------
CARD = """---
license: llama2
---
# Demo
| Parameter | Value |
|---|---|
| Learning rate | 2e-5 |
| Max length | 1024 |
| Batch size per GPU | 2 |
"""


def fake_draft(text, recipe_id):
    recipe = {"id": recipe_id, "card": {"license": "llama2", "notes": ["n1"]},
              "base_model": {"id": "TODO: which base?"},
              "sources": {"x": {"repo": "someone/extra"}},
              "adapters": {"main": {"template": "alpaca", "train": {
                  "method": "full", "learning_rate": 2.0e-5, "per_device_batch_size": "TODO: batch?",
                  "max_length": 1024}}}}
    return SimpleNamespace(recipe=recipe, todos=[("base_model.id", "which base?")], notes=["n1"])


def test_run_with_stand_in_importer(bench, tmp_path, monkeypatch, capsys):
    cards, recipes = tmp_path / "cards", tmp_path / "recipes"
    cards.mkdir(), recipes.mkdir()
    (cards / "demo-model.md").write_text(CARD, encoding="utf-8")
    (cards / "unknown.md").write_text("# nothing", encoding="utf-8")
    write_recipe(recipes, "demo-model", "someone/Demo-Model")
    monkeypatch.setattr(bench, "load_importer", lambda: fake_draft)
    assert bench.main([str(cards), str(recipes), "--json", str(tmp_path / "out.json")]) == 0
    out = capsys.readouterr().out
    assert "no recipe for unknown.md" in out and "TOTAL" in out and "NOT met" in out
    data = json.loads((tmp_path / "out.json").read_text())
    (card,) = data["cards"]
    assert card["license"]["ok"] and not card["base"]["ok"] and card["prompt_format"][0]["ok"]
    hyper = {i["item"]: i["ok"] for i in card["hyperparameters"]}
    assert hyper == {"learning_rate": True, "per_device_batch_size": False, "max_length": True}
    assert card["extra_datasets"] == ["someone/extra"] and len(card["todos"]) == 1


def test_wrong_arguments_exit_2(bench, tmp_path):
    with pytest.raises(SystemExit) as e:
        bench.main([str(tmp_path / "missing"), str(tmp_path)])
    assert e.value.code == 2
