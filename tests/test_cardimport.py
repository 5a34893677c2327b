"""Unit tests of the card importer's parts (reprotune.cardimport); whole cards are in
tests/test_cardimport_fixtures.py."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from reprotune.cardimport import draft, emit, markdown, values
from reprotune.recipe import RecipeError, check_todos, todos

ROOT = Path(__file__).resolve().parents[1]


def test_collapsed_card_is_restored():
    flat = ("--- license: mit base_model: org/base-7b datasets: - org/data-a - org/data-b --- # Title Text "
            "The model is a fine-tune of a base model, described in a sentence that is long enough. "
            "## Training hyperparameters The following were used: - learning_rate: 1e-4 - num_epochs: 2 "
            "## Prompt ``` <|user|> {user} <|assistant|> ```")
    card = markdown.parse(flat)
    assert card.collapsed
    assert card.meta == {"license": "mit", "base_model": "org/base-7b", "datasets": ["org/data-a", "org/data-b"]}
    assert [b.text for b in card.blocks if b.kind == "bullet"] == ["learning_rate: 1e-4", "num_epochs: 2"]
    assert {b.where for b in card.blocks if b.kind == "bullet"} == {"Title Text > Training hyperparameters"}
    assert [b.text for b in card.blocks if b.kind == "fence"] == ["<|user|> {user} <|assistant|>"]


def test_intact_card_is_not_collapsed():
    text = "# T\n\n" + "\n".join(f"- key{i}: {i}" for i in range(50))
    assert not markdown.parse(text).collapsed


@pytest.mark.parametrize("parser,raw,want", [
    ("float", "3e-4", 3e-4), ("float", "1.0e-05", 1e-5), ("int", "16", 16), ("int", "2.5", None),
    ("ratio", "3%", 0.03), ("ratio", "0.1", 0.1), ("gpus", "8xA100(80G)", 8), ("gpus", "16 x H100", 16),
    ("deepspeed", "ZERO-2", "zero2"), ("deepspeed", "ZeRO stage 3", "zero3"), ("deepspeed", "configs/ds.json", None),
    ("method", "QLoRA(NF4)", "qlora"), ("method", False, "full"), ("method", "LoRA", "lora"),
    ("scheduler", "cosine with warmup", "cosine"), ("precision", "bfloat16", "bf16"), ("flag_bf16", "auto", "bf16"),
    ("seed", "0xe1291f1a", 3777568538), ("length", "8k", 8192), ("modules", "all linear layers", "all-linear"),
    ("optimizer", "paged_adamw_8bit", "paged_adamw_8bit"), ("warmup", "100", ("warmup_steps", 100)),
])
def test_value_parsers(parser, raw, want):
    assert values.PARSERS[parser](raw) == want


def test_adam_arguments():
    assert values.adam_args("Adam with betas=(0.9,0.95) and epsilon=1e-06") == {
        "adam_beta1": 0.9, "adam_beta2": 0.95, "adam_epsilon": 1e-6}


CARD = """---
license: apache-2.0
base_model: mistralai/Mistral-7B-v0.1
datasets: [Open-Orca/OpenOrca]
---
# Test model

A test model: a fine-tune of Mistral 7B with LoRA on a sample of OpenOrca, for the unit tests here.

## Training

| Parameter | Value |
|---|---|
| LoRA rank | 8 |
| LoRA alpha | 16 |
| Learning rate | 2e-4 |
| Per-device batch size | 4 |
| Gradient accumulation steps | 2 |
| GPUs | 8 |
| Total batch size | 100 |
| Max length | 1024 |

```yaml
learning_rate: 1e-4
num_train_epochs: 2
warmup_steps: 5
```

## Usage

```python
prompt = f"### System:\\n{system}\\n\\n### User:\\n{instruction}\\n\\n### Response:\\n"
```
"""


def test_contradictions_are_notes_not_silent():
    d = draft(CARD, "test-model")
    tr = d.recipe["adapters"]["main"]["train"]
    assert tr["learning_rate"] == 1e-4   # the fenced config is the most explicit source
    lr = [n for n in d.notes if n.startswith("Contradiction: learning_rate")]
    assert len(lr) == 1 and "0.0002" in lr[0] and "0.0001" in lr[0]
    batch = [n for n in d.notes if "total batch 100" in n]
    assert batch and batch[0].startswith("Contradiction:") and "= 64" in batch[0]
    assert d.sources["adapters.main.train.learning_rate"].startswith("Training (fenced config")


def test_prompt_from_python_string_is_a_builtin():
    d = draft(CARD, "test-model")
    assert d.recipe["adapters"]["main"]["template"] == "orca_mini"
    assert "string in a Python block" in d.sources["adapters.main.template"]


def test_link_text_naming_another_repo_is_a_contradiction():
    card = ("# M\n\n## Datasets\n\nTrained on [org/data-Sample](https://huggingface.co/datasets/org/data) "
            "and nothing else, in a sentence long enough to be the description.\n")
    d = draft(card, "m")
    assert [s["repo"] for s in d.recipe["sources"].values()] == ["org/data-Sample"]
    assert any(n.startswith("Contradiction: a link reads org/data-Sample but points to org/data") for n in d.notes)


def test_base_guessed_from_title_size_and_license_with_a_note():
    card = "---\nlicense: llama2\n---\n# Some_Tune_LLaMA_13b\n\nA model, described in one sentence that is long.\n"
    d = draft(card, "some")
    assert d.recipe["base_model"]["id"] == "meta-llama/Llama-2-13b-hf"
    assert any("names no base model id" in n for n in d.notes)


def test_no_base_no_data_are_todos():
    d = draft("# Nothing\n\nA card that says nothing about how the model was built, at some length.\n", "x")
    keys = [k for k, _ in d.todos]
    for key in ("base_model.id", "sources.data.repo", "adapters.main.train.learning_rate",
                "adapters.main.train.max_length", "adapters.main.template", "card.license"):
        assert key in keys
    assert sorted(keys) == sorted(k for k, _ in todos(d.recipe))


def test_validate_lists_every_todo_in_one_line():
    recipe = {"a": "TODO: first?", "b": {"c": ["TODO: second?"], "d": 1}}
    with pytest.raises(RecipeError) as e:
        check_todos(recipe, "r.yaml")
    assert str(e.value) == "r.yaml: 2 TODOs left: key 'a' (first?); key 'b.c' (second?)"


def test_yaml_keeps_multiline_and_odd_strings():
    data = {"card": {"citations": ["@misc{x,\n  title={A}, \n}\n", "  leading\nspaces\n"], "t": "a: b # c",
                     "n": ["TODO: x?", 1.0e-5]}}
    text = emit.dump(data, {("card", "t"): "somewhere"}, ["header"])
    assert yaml.safe_load(text) == data
    assert "# from: somewhere" in text


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "reprotune", *args], capture_output=True, text=True, cwd=ROOT)


def test_cli_bad_id_and_unreadable_card_are_one_line_errors(tmp_path):
    card = tmp_path / "c.md"
    card.write_bytes(b"\xff\xfe not utf-8")
    for args in (["import-card", str(card), "--id", "Bad_Id", "--out", str(tmp_path / "o.yaml")],
                 ["import-card", str(card), "--id", "ok", "--out", str(tmp_path / "o.yaml")]):
        r = _cli(*args)
        assert r.returncode == 2
        errors = [ln for ln in r.stderr.splitlines() if not ln.startswith("INFO")]
        assert len(errors) == 1 and errors[0].startswith("reprotune: error:"), r.stderr
    assert not (tmp_path / "o.yaml").exists()


def test_damaged_cards_never_raise():
    """Cut, spliced and collapsed versions of the fixture cards, and front matter of the wrong
    types: always a draft (TODOs for what is gone), and its YAML reads back to it."""
    import random

    texts = [p.read_text(encoding="utf-8") for p in sorted((ROOT / "tests/data/cards").glob("*.md"))]
    cases = ["", "---\n---\n", "---\nlicense: [unclosed\n---\n# x\n", "```\nunclosed fence", "# \n## \n- \n* :\n",
             "---\nbase_model: 5\ndatasets: 7\nlanguage: 3\nlicense: 4\nmodel-index: 9\nlibrary_name: [a]\n---\n",
             "---\nmodel-index:\n- results:\n  - dataset: 5\n    metrics: 7\n---\n"]
    rng = random.Random(0)
    for t in texts:
        for _ in range(15):
            a = rng.randrange(len(t))
            b = rng.randrange(a, len(t) + 1)
            cases += [t[:a] + t[b:], t[a:b], t.replace("\n", " ")[a:]]
    for text in cases:
        d = draft(text, "x")
        assert yaml.safe_load(d.yaml) == d.recipe
        assert sorted(k for k, _ in d.todos) == sorted(k for k, _ in todos(d.recipe))


def test_fixed_preamble_becomes_the_default_system_prompt():
    card = ("# V\n\nA chat fine-tune, described in a sentence that is long enough to be one.\n\n## Prompt\n\n```\n"
            "A chat between a user and an assistant.\n\nUSER: {prompt}\nASSISTANT:\n```\n")
    d = draft(card, "v")
    from reprotune import templates

    t = templates.get(d.recipe["adapters"]["main"]["template"])
    one = {"messages": [{"role": "user", "content": "Hi"}]}
    assert t.render_prompt(one, eos="</s>") == "A chat between a user and an assistant.\n\nUSER: Hi\nASSISTANT:"
    assert t.render_prompt({**one, "system": "Be brief."}, eos="</s>") == "Be brief.\n\nUSER: Hi\nASSISTANT:"
    assert any("No built-in template renders" in n for n in d.notes)


def test_inline_prompt_sizes_columns_and_batch_wording():
    card = """---
base_model: meta-llama/Llama-2-13b-hf
datasets: [garage-bAInd/Open-Platypus, Open-Orca/OpenOrca]
---
# Wide 13B

A family of fine-tunes, described here in one sentence long enough to be the description.

## Training

| Setting | 7B | 13B |
|---|---|---|
| Learning rate | 3e-4 | 1e-4 |
| Batch size | 8 per GPU | 4 per GPU |
| RoPE scaling | none | linear, factor 2 |

Data: Open-Platypus (100%) and OpenOrca (~10%).

## Prompt format

Prompt with `<|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n`.
"""
    d = draft(card, "wide")
    tr = d.recipe["adapters"]["main"]["train"]
    assert (tr["learning_rate"], tr["per_device_batch_size"]) == (1e-4, 4)
    assert tr["rope_scaling"] == {"type": "linear", "factor": 2.0}
    assert "column '13B'" in d.sources["adapters.main.train.learning_rate"]
    assert d.recipe["adapters"]["main"]["data"]["mix"] == {"open_platypus": {"fraction": 1.0},
                                                           "openorca": {"fraction": 0.1}}
    assert any("approximate share for Open-Orca/OpenOrca" in n for n in d.notes)
    assert d.recipe["adapters"]["main"]["template"] == "chatml"
    assert d.sources["adapters.main.template"].startswith("Prompt format (inline code)")


def test_datasets_of_one_name_get_distinct_sources():
    d = draft("---\ndatasets: [a/data, b/data, c/data]\n---\n# T\n\nA description long enough to be one here.\n", "t")
    assert [(k, v["repo"]) for k, v in d.recipe["sources"].items()] == [
        ("data", "a/data"), ("data_2", "b/data"), ("data_3", "c/data")]


def test_reported_results_pick_the_eval_suite():
    v2 = ("# M\n\nA description of the model that is long enough to be the description.\n\n"
          "## Open LLM Leaderboard Evaluation Results\n\n| Metric | Value |\n|---|---|\n| Avg. | 20.1 |\n"
          "| IFEval (0-Shot) | 55.2 |\n| BBH (3-Shot) | 30.1 |\n| MATH Lvl 5 (4-Shot) | 5.0 |\n"
          "| GPQA (0-shot) | 6.2 |\n| MuSR (0-shot) | 8.8 |\n| MMLU-PRO (5-shot) | 25.3 |\n")
    d = draft(v2, "m")
    assert d.recipe["card"]["reported_results"] == {
        "leaderboard_ifeval": 55.2, "leaderboard_bbh": 30.1, "leaderboard_math_hard": 5.0,
        "leaderboard_gpqa": 6.2, "leaderboard_musr": 8.8, "leaderboard_mmlu_pro": 25.3}
    assert d.recipe["eval"]["suite"] == "open_llm_v2"
    assert draft("# M\n\nNo results here, only a long enough description line.\n", "m").recipe["eval"]["suite"] \
        == "open_llm_v1"


def test_cli_reads_a_repo_directory(tmp_path):
    repo = tmp_path / "model-repo"
    repo.mkdir()
    (repo / "README.md").write_text("---\nlicense: mit\n---\n# M\n\nA description long enough to be one.\n",
                                    encoding="utf-8")
    r = _cli("import-card", str(repo), "--id", "m", "--out", str(tmp_path / "m.yaml"))
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load((tmp_path / "m.yaml").read_text(encoding="utf-8"))["card"]["license"] == "mit"
