"""Recipe loading: the five seed recipes validate; bad recipes fail with one clear line."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from reprotune import plan
from reprotune.recipe import RecipeError, apply_overlay, load_config, load_recipe

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
TINY = REPO / "overlays" / "tiny.yaml"
SEED_IDS = {
    "dolphin-orca-platypus-70b",
    "fashiongpt-v1.1",
    "llama2-13b-orca-8k",
    "tulu-v2-qlora-70b",
    "orca-mini-13b",
}


def test_all_seed_recipes_present_and_valid():
    assert SEED_IDS <= {p.stem for p in RECIPES}  # plus recipes for new cards (openhermes-2.5-mistral-7b)
    for p in RECIPES:
        full = load_recipe(p)
        tiny = load_recipe(p, TINY)
        assert full["scale"] == "full" and tiny["scale"] == "tiny"
        # the tiny build keeps the real base and trains on its twin (src/reprotune/bases/)
        assert tiny["base_model"]["id"] == full["base_model"]["id"] != "tiny"
        assert "twin" in tiny["base_model"] and "twin" not in full["base_model"]
        assert {k: v for k, v in tiny["base_model"].items() if k != "twin"} == full["base_model"]


def test_default_config_builds_every_seed_recipe_tiny():
    cfg = load_config(yaml.safe_load((REPO / "config.yaml").read_text()))
    assert set(cfg["recipes"]) == SEED_IDS
    assert cfg["overlay"] == "overlays/tiny.yaml"


def test_overlay_changes_scale_but_keeps_recipe_facts():
    full = load_recipe(REPO / "recipes" / "tulu-v2-qlora-70b.yaml")
    tiny = load_recipe(REPO / "recipes" / "tulu-v2-qlora-70b.yaml", TINY)
    ft, tt = full["adapters"]["main"]["train"], tiny["adapters"]["main"]["train"]
    # the recipe's method, LoRA and quantization settings survive the overlay
    for key in ("method", "lora", "quantization", "lr_scheduler", "warmup_ratio"):
        assert tt[key] == ft[key], key
    assert (ft["num_gpus"], tt["num_gpus"]) == (8, 0)
    # tiny scale: 30 steps at one learning rate for every method, short rows
    assert tt["max_steps"] == 30 and tt["max_length"] == 256
    assert (ft["learning_rate"], tt["learning_rate"]) == (1e-4, 2e-3)
    assert full["sources"] == tiny["sources"]
    assert tiny["hub_mirror"] == "fixtures/hub" and full["hub_mirror"] is None
    # same eval tasks (the data comes from the mirror); only fewer docs per task
    assert tiny["eval"] == {**full["eval"], "batch_size": 4, "limit": 10} and full["eval"]["suite"] == "open_llm_v1"


def test_card_facts_from_the_seed_cards():
    tulu = load_recipe(REPO / "recipes" / "tulu-v2-qlora-70b.yaml")["adapters"]["main"]["train"]
    assert (tulu["lora"]["r"], tulu["lora"]["alpha"], tulu["lora"]["dropout"]) == (64, 16, 0.1)
    assert tulu["quantization"] == {"quant_type": "nf4", "double_quant": True, "compute_dtype": "bfloat16"}
    assert tulu["per_device_batch_size"] * tulu["gradient_accumulation_steps"] * tulu["num_gpus"] == 128
    orca8k = load_recipe(REPO / "recipes" / "llama2-13b-orca-8k.yaml")
    t = orca8k["adapters"]["main"]["train"]
    assert t["rope_scaling"] == {"type": "linear", "factor": 2}
    assert (t["max_length"], t["learning_rate"], t["warmup_steps"]) == (8192, 1e-5, 100)
    assert orca8k["adapters"]["main"]["data"]["mix"]["red_pajama"] == {"fraction": 0.25, "max_val": 1000}
    assert orca8k["base_model"]["id"] == "meta-llama/Llama-2-13b-hf"
    assert any("7b" in n.lower() for n in orca8k["card"]["notes"])  # the card's 13B/7B contradiction
    dop = load_recipe(REPO / "recipes" / "dolphin-orca-platypus-70b.yaml")
    assert dop["adapters"]["main"]["data"]["mix"] == {
        "open_platypus": {"fraction": 1.0},
        "dolphin_gpt4": {"fraction": 0.01},
        "openorca_gpt4": {"fraction": 0.01},
    }
    assert dop["merge"]["method"] == "qlora_dequant" and dop["merge"]["compare"] == ["plain"]
    om = load_recipe(REPO / "recipes" / "orca-mini-13b.yaml")["adapters"]["main"]["train"]
    assert om["per_device_batch_size"] * om["gradient_accumulation_steps"] * om["num_gpus"] == 16
    assert om["deepspeed"] == "zero3" and om["method"] == "full"


def _base():
    return yaml.safe_load((REPO / "recipes" / "tulu-v2-qlora-70b.yaml").read_text())


def _set(d, dotted, value):
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d[k]
    if value is _DEL:
        del d[keys[-1]]
    else:
        d[keys[-1]] = value


_DEL = object()
T = "adapters.main.train"

# (mutation(s), substring expected in the one-line error)
BAD = [
    ([("colour", "blue")], "unknown key 'colour'"),
    ([(f"{T}.lr", 0.1)], f"unknown key '{T}.lr'"),
    ([(f"{T}.learning_rate", "fast")], f"key '{T}.learning_rate': 'fast' has the wrong type (expected number)"),
    ([(f"{T}.learning_rate", _DEL)], f"missing required key '{T}.learning_rate'"),
    ([("base_model", _DEL)], "missing required key 'base_model'"),
    ([(f"{T}.method", "prefix")], f"key '{T}.method': 'prefix' is not allowed"),
    ([("adapters.main.template", "vicuna")], "key 'adapters.main.template': 'vicuna' is not allowed"),
    ([("sources.tulu_v2_mix.format", "csv")], "key 'sources.tulu_v2_mix.format': 'csv' is not allowed"),
    ([("merge.method", "slerp")], "key 'merge.method': 'slerp' is not allowed"),
    ([("sources.tulu_v2_mix.filters", [{"name": "profanity"}])], "'profanity' is not allowed"),
    ([("adapters.main.data.mix.tulu_v2_mix", {"fraction": 1.5})], "1.5 is out of range (expected <= 1)"),
    ([("adapters.main.data.mix.tulu_v2_mix", {"fraction": 0.5, "count": 3})], "give either 'fraction' or 'count'"),
    ([("adapters.main.data.mix.nope", {"fraction": 0.5})], "key 'adapters.main.data.mix.nope': unknown source"),
    ([(f"{T}.method", "full")], f"key '{T}.lora': a full fine-tune takes no LoRA settings"),
    ([(f"{T}.method", "lora")], f"key '{T}.quantization': quantization is only for method 'qlora'"),
    ([(f"{T}.quantization", _DEL)], f"key '{T}.quantization': method qlora needs a 'quantization' block"),
    ([(f"{T}.lora", _DEL)], f"key '{T}.lora': method qlora needs a 'lora' block"),
    ([(f"{T}.lora.r", 0)], f"key '{T}.lora.r': 0 is out of range (expected >= 1)"),
    ([(f"{T}.per_device_batch_size", 2.5)], "has the wrong type (expected integer)"),
    ([(f"{T}.rope_scaling", {"type": "linear", "factor": 0.5})], "out of range"),
    ([("merge.method", "none")], "key 'merge.method': 'none' is only for a single full fine-tune adapter"),
    ([("merge.method", "combine")], "key 'merge.combine': merge method 'combine' needs a 'combine' block"),
    ([("base_model.trust_remote_code", True)], "key 'base_model.trust_remote_code': true only with a pinned"),
    ([("id", "Tulu V2")], "key 'id': 'Tulu V2' does not match"),
    ([("eval.suite", "mystery")], "key 'eval.suite': 'mystery' is not allowed"),
    ([("sources.tulu_v2_mix.sha256", {"x.parquet": "abc"})], "does not match the pattern"),
    # issue 7 additions: one more case per category
    ([("sources.tulu_v2_mix.colour", 1)], "unknown key 'sources.tulu_v2_mix.colour' (expected one of: files,"),
    ([(f"{T}.gradient_checkpointing", "yes")], f"key '{T}.gradient_checkpointing': 'yes' has the wrong type "
                                               "(expected boolean)"),
    ([("sources", ["tulu_v2_mix"])], "key 'sources': ['tulu_v2_mix'] has the wrong type (expected object)"),
    ([("adapters", {})], "key 'adapters': must not be empty"),
    ([("adapters.main.data.validation", {"fraction": 2})], "key 'adapters.main.data.validation.fraction': 2 is "
                                                           "out of range (expected <= 1)"),
    ([(f"{T}.lora.dropout", 1.5)], f"key '{T}.lora.dropout': 1.5 is out of range (expected <= 1)"),
    ([(f"{T}.epochs", -1)], f"key '{T}.epochs': -1 is out of range (expected > 0)"),
    ([(f"{T}.deepspeed", "zero9")], f"key '{T}.deepspeed': 'zero9' is not allowed (expected one of: None,"),
    # issue 14: every accepted key changes what runs; filter parameters per filter
    ([(f"{T}.adam_beta2", 1.0)], f"key '{T}.adam_beta2': 1.0 is out of range (expected < 1)"),
    ([(f"{T}.adam_epsilon", 0)], f"key '{T}.adam_epsilon': 0 is out of range (expected > 0)"),
    ([(f"{T}.lora.alpha", 16.5)], f"key '{T}.lora.alpha': 16.5 has the wrong type (expected integer)"),
    ([(f"{T}.quantization.blocksize", 64)], f"unknown key '{T}.quantization.blocksize'"),
    ([(f"{T}.rope_scaling", {"type": "dynamic", "factor": 2})], f"key '{T}.rope_scaling.type': 'dynamic' is not "
                                                                 "allowed (expected 'linear')"),
    ([("sources.tulu_v2_mix.filters", [{"name": "near_dedup", "threshold": 2}])],
     "key 'sources.tulu_v2_mix.filters.0.threshold': 2 is out of range (expected <= 1)"),
    ([("sources.tulu_v2_mix.filters", [{"name": "near_dedup", "threshold": 0}])],
     "key 'sources.tulu_v2_mix.filters.0.threshold': 0 is out of range (expected > 0)"),
    ([("sources.tulu_v2_mix.filters", [{"name": "near_dedup", "num_perm": 1}])],
     "key 'sources.tulu_v2_mix.filters.0.num_perm': 1 is out of range (expected >= 2)"),
    ([("sources.tulu_v2_mix.filters", [{"name": "empty_turns"}, {"name": "exact_dedup", "threshold": 0.5}])],
     "unknown key 'sources.tulu_v2_mix.filters.1.threshold' (expected one of: name)"),
    ([("sources.tulu_v2_mix.filters", [{"name": "length", "max_chars": -1}])],
     "key 'sources.tulu_v2_mix.filters.0.max_chars': -1 is out of range (expected >= 0)"),
    ([("sources.tulu_v2_mix.filters", [{"name": "alternating", "first": "system"}])],
     "key 'sources.tulu_v2_mix.filters.0.first': 'system' is not allowed"),
    ([("sources.tulu_v2_mix.filters", [{"name": "lang", "missing": "keep"}])],
     "missing required key 'sources.tulu_v2_mix.filters.0.allow'"),
    ([("defaults", {"train": {"lr": 1}})], "unknown key 'defaults.train.lr'"),
    ([("defaults", {"train": {"learning_rate": "fast"}})],
     "key 'defaults.train.learning_rate': 'fast' has the wrong type (expected number)"),
]


@pytest.mark.parametrize("mutations,expected", BAD, ids=[e for _, e in BAD])
def test_bad_recipe_one_clear_line(tmp_path, mutations, expected):
    data = _base()
    for key, value in mutations:
        _set(data, key, value if value is _DEL else copy.deepcopy(value))
    path = tmp_path / "tulu-v2-qlora-70b.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(RecipeError) as ei:
        load_recipe(path)
    msg = str(ei.value)
    assert "\n" not in msg
    assert msg.startswith(str(path) + ":"), msg
    assert expected in msg, msg


def test_combine_needs_equal_rank_for_linear(tmp_path):
    data = yaml.safe_load((REPO / "recipes" / "fashiongpt-v1.1.yaml").read_text())
    data["merge"]["combine"]["combination_type"] = "linear"
    data["adapters"]["multiturn"]["train"] = {"lora": {"r": 8}}  # over the recipe's defaults.train
    path = tmp_path / "fashiongpt-v1.1.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(RecipeError, match=r"'linear' needs adapters of equal rank \(got r=\[8, 64\]\)"):
        load_recipe(path)


def test_invalid_yaml_and_missing_file(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("id: [unclosed\n")
    with pytest.raises(RecipeError, match=r"x.yaml: line \d+ invalid YAML"):
        load_recipe(p)
    with pytest.raises(RecipeError, match="file not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_overlay_cannot_break_schema(tmp_path):
    ov = yaml.safe_load(TINY.read_text())
    ov["train"]["max_length"] = "long"
    p = tmp_path / "ov.yaml"
    p.write_text(yaml.safe_dump(ov))
    with pytest.raises(RecipeError, match=r"key 'adapters.main.train.max_length': 'long' has the wrong type"):
        load_recipe(REPO / "recipes" / "tulu-v2-qlora-70b.yaml", p)


def test_cli_validate_prints_one_line_and_exits_2(tmp_path):
    data = _base()
    data["adapters"]["main"]["train"]["lr"] = 1
    path = tmp_path / "tulu-v2-qlora-70b.yaml"
    path.write_text(yaml.safe_dump(data))
    r = subprocess.run([sys.executable, "-m", "reprotune", "validate", str(path)], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0
    assert "Traceback" not in r.stderr
    assert f"unknown key '{T}.lr'" in r.stderr
    ok = subprocess.run(
        [sys.executable, "-m", "reprotune", "validate", *map(str, RECIPES), "--overlay", str(TINY)],
        capture_output=True, text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.count("ok  ") == len(RECIPES)


def test_accelerate_args_follow_the_recipe():
    full = load_recipe(REPO / "recipes" / "orca-mini-13b.yaml")
    assert plan.accelerate_args(full, "main", None).endswith("deepspeed_zero3.yaml --num_processes 8")
    dop = load_recipe(REPO / "recipes" / "dolphin-orca-platypus-70b.yaml")
    assert plan.accelerate_args(dop, "main", None).endswith("deepspeed_zero2.yaml --num_processes 8")
    tiny = load_recipe(REPO / "recipes" / "orca-mini-13b.yaml", TINY)
    assert plan.accelerate_args(tiny, "main", None).endswith("cpu.yaml")
    assert plan.resources_for("train", full, "main")["gpu"] == 8
    assert plan.resources_for("train", tiny, "main")["gpu"] == 0
    assert plan.resources_for("clean", full)["gpu"] == 0
    # the tokenize job's processes: 8 at full scale; the tiny build's 2 fit any node (a SLURM job
    # asking for more CPUs than a node has never starts); every other stage runs one
    assert [plan.threads_for("tokenize", r) for r in (full, tiny)] == [8, 2]
    assert {plan.threads_for(s, r) for s in ("download", "clean", "mix", "train", "merge") for r in (full, tiny)} == {1}


def test_apply_overlay_none_is_full_scale():
    r = apply_overlay(_base(), None)
    assert r["scale"] == "full" and r["hub_mirror"] is None


FASHIONGPT_TRAIN = {  # the card's settings, the same for the three adapters
    "method": "qlora", "lora": {"r": 64, "alpha": 16, "dropout": 0.05, "target_modules": "all-linear"},
    "quantization": {"quant_type": "nf4", "double_quant": True, "compute_dtype": "bfloat16"},
    "learning_rate": 1.0e-4, "lr_scheduler": "constant", "warmup_ratio": 0.03, "epochs": 3,
    "per_device_batch_size": 1, "gradient_accumulation_steps": 16, "num_gpus": 8, "max_length": 4096,
    "optimizer": "paged_adamw_32bit", "max_grad_norm": 0.3, "weight_decay": 0.0, "precision": "bf16", "seed": 42,
    "gradient_checkpointing": True, "deepspeed": None}


def test_defaults_train_is_merged_under_every_adapter_before_the_overlay(tmp_path):
    path = REPO / "recipes" / "fashiongpt-v1.1.yaml"
    assert "defaults" in yaml.safe_load(path.read_text())
    full, tiny = load_recipe(path), load_recipe(path, TINY)
    assert "defaults" not in full and "defaults" not in tiny
    assert {a: ad["train"] for a, ad in full["adapters"].items()} == dict.fromkeys(
        ["orca_style", "conversational", "multiturn"], FASHIONGPT_TRAIN)
    assert all(ad["train"]["max_steps"] == 30 and ad["train"]["num_gpus"] == 0 for ad in tiny["adapters"].values())
    # the adapter's own keys win, deep (lora.r here, alpha etc. from defaults)
    data = yaml.safe_load(path.read_text())
    data["adapters"]["multiturn"]["train"] = {"lora": {"r": 8}, "learning_rate": 2e-4}
    data["merge"]["combine"]["combination_type"] = "cat"
    (tmp_path / path.name).write_text(yaml.safe_dump(data))
    mt = load_recipe(tmp_path / path.name)["adapters"]["multiturn"]["train"]
    assert mt == {**FASHIONGPT_TRAIN, "learning_rate": 2e-4, "lora": {**FASHIONGPT_TRAIN["lora"], "r": 8}}


def test_resolve_train_fills_the_schema_defaults():
    from reprotune.recipe import _schema, resolve_train

    settings = _schema("recipe")["$defs"]["train_settings"]["properties"]
    s = resolve_train({"method": "lora", "lora": {"r": 2, "alpha": 4}, "learning_rate": 1e-4,
                       "per_device_batch_size": 1, "max_length": 64, "seed": 5})
    for key, prop in settings.items():
        if "default" in prop and key not in ("seed", "data_seed"):
            assert s[key] == prop["default"], key
    assert s["data_seed"] == 5 and "quantization" not in s  # data_seed: null -> the seed; no QLoRA block for LoRA
    assert s["lora"] == {"r": 2, "alpha": 4, "dropout": 0.05, "target_modules": "all-linear"}
    q = resolve_train({"method": "qlora", "lora": {"r": 2, "alpha": 4}, "quantization": {"quant_type": "fp4"},
                       "learning_rate": 1e-4, "per_device_batch_size": 1, "max_length": 64})
    assert q["quantization"] == {"quant_type": "fp4", "double_quant": True, "compute_dtype": "bfloat16"}
    with pytest.raises(RecipeError, match=r"^spec: key 'x.train.max_length': 4 is out of range \(expected >= 8\)$"):
        resolve_train({**s, "max_length": 4}, "spec", "x.train")
    with pytest.raises(RecipeError, match=r"^spec: missing required key 'train.learning_rate'$"):
        resolve_train({"method": "full", "per_device_batch_size": 1, "max_length": 64}, "spec")


def test_filter_schema_matches_the_filter_registry():
    """The schema takes exactly the parameters each filter's factory takes (so each one is used)."""
    import inspect

    from reprotune import filters
    from reprotune.recipe import _schema

    fs = _schema("recipe")["$defs"]["filter"]
    assert set(fs["properties"]["name"]["enum"]) == set(filters.known())
    per_filter = {}
    for rule in fs["allOf"]:
        then = rule["then"]
        assert then["additionalProperties"] is False
        per_filter[rule["if"]["properties"]["name"]["const"]] = then
    assert set(per_filter) == set(filters.known())
    for name, then in per_filter.items():
        params = {p: v for p, v in inspect.signature(filters._REGISTRY[name]).parameters.items()
                  if p not in filters.CONTEXT_PARAMS}  # set by the build, never by a recipe
        assert set(then["properties"]) - {"name"} == set(params), name
        assert set(then.get("required", [])) == {p for p, v in params.items() if v.default is inspect.Parameter.empty}
