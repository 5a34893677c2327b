"""End to end: the Snakemake workflow builds every seed recipe at tiny scale in a temp dir.

Checks every artifact the README promises exists and loads, that each recipe trained on the twin
of its own base (real layout, tokenizer family, attention shape), that the merged tokenizers
render each seed card's prompt format byte for byte, that fine-tuning lowered the loss on every
adapter's training rows, and that a second run has nothing to do.
"""
from __future__ import annotations

import json
import os
import io
import subprocess
import sys
import time
import tokenize
from pathlib import Path

import pytest
import yaml

from reprotune.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")

pytestmark = pytest.mark.slow


def _env():
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env["HF_HUB_OFFLINE"] = "1"
    env["HF_DATASETS_OFFLINE"] = "1"
    env.pop("HF_TOKEN", None)
    return env


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--cores", "2", "--configfile", str(REPO / "config.yaml"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=1500)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    work = tmp_path_factory.mktemp("build")
    recipes = sorted(yaml.safe_load((REPO / "config.yaml").read_text())["recipes"])  # the five seed recipes
    r = snakemake(work, "--config", f"recipes=[{','.join(recipes)}]")
    if r.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted((work / "logs").rglob("*.log")))
        pytest.fail(f"snakemake failed:\n{r.stderr[-5000:]}\n{logs[-20000:]}")
    return work, recipes


def test_every_promised_artifact_exists_and_loads(built):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    work, recipes = built
    for rid in recipes:
        res = work / "results" / rid
        recipe = load_recipe(REPO / "recipes" / f"{rid}.yaml")
        for adapter, ad in recipe["adapters"].items():
            data = res / "data" / adapter
            assert (data / "train.jsonl").stat().st_size > 0
            report = json.loads((data / "data_report.json").read_text())
            assert set(report["sources"]) == set(ad["data"]["mix"])
            assert report["totals"]["train"] == sum(1 for _ in open(data / "train.jsonl"))
            tokens = res / "tokens" / adapter
            assert list((tokens / "train").glob("data-*.arrow")) and (tokens / "stats.json").is_file()
            adir = res / "adapters" / adapter
            if ad["train"]["method"] == "full":
                assert (adir / "model.safetensors").exists()
            else:
                assert (adir / "adapter_model.safetensors").exists()
                assert json.loads((adir / "adapter_config.json").read_text())["r"] == ad["train"]["lora"]["r"]
            assert not list(adir.glob("*.bin")) and not list(adir.glob("*.pt"))
        model = AutoModelForCausalLM.from_pretrained(res / "model")
        tok = AutoTokenizer.from_pretrained(res / "model")
        ids = tok("Hello there", return_tensors="pt").input_ids
        assert model(ids).logits.shape[-1] == model.config.vocab_size
        assert tok.chat_template
        results = json.loads((res / "eval" / "results.json").read_text())
        assert {"arc_challenge", "hellaswag", "truthfulqa_mc2", "winogrande", "gsm8k"} <= set(results["results"])
        card = (res / "README.md").read_text()
        assert card.startswith("---\n")
        front = yaml.safe_load(card.split("---\n")[1])
        assert front["model-index"][0]["results"], front
        assert front["base_model"] == recipe["base_model"]["id"]
        prov = json.loads((res / "provenance.json").read_text())
        assert prov and str(work) not in json.dumps(prov)
        assert prov["base_model"]["id"] == recipe["base_model"]["id"] and prov["base_model"]["twin"] is True


def test_each_recipe_trains_on_the_twin_of_its_base(built):
    """resources/base/<org>--<name>/ holds the twin in the real repo's layout."""
    work, recipes = built
    base = work / "resources" / "base"
    ol = base / "openlm-research--open_llama_13b"
    names = {p.name for p in ol.iterdir()}
    assert "tokenizer.model" in names and "tokenizer.json" not in names
    assert not [n for n in names if n.endswith(".bin")]
    assert {"model-00001-of-00003.safetensors", "model.safetensors.index.json"} <= names
    manifest = json.loads((ol / "manifest.json").read_text())
    assert manifest["converted"]["model-00001-of-00003.safetensors"]["source"] == "pytorch_model-00001-of-00003.bin"
    assert "pytorch_model-00001-of-00003.bin" in manifest["files"]
    for llama2 in ("meta-llama--Llama-2-70b-hf", "meta-llama--Llama-2-13b-hf"):
        assert {"tokenizer.model", "tokenizer.json"} <= {p.name for p in (base / llama2).iterdir()}
    cfg70 = json.loads((base / "meta-llama--Llama-2-70b-hf" / "config.json").read_text())
    assert cfg70["num_key_value_heads"] < cfg70["num_attention_heads"]
    cfg13 = json.loads((base / "meta-llama--Llama-2-13b-hf" / "config.json").read_text())
    assert cfg13["num_key_value_heads"] == cfg13["num_attention_heads"]
    for rid in recipes:
        recipe = load_recipe(REPO / "recipes" / f"{rid}.yaml")
        slug = recipe["base_model"]["id"].replace("/", "--")
        assert (base / slug / "manifest.json").is_file(), rid


# each seed card's prompt format, as its card gives it (design notes, section 4)
EXAMPLE = [{"role": "system", "content": "You are a helpful assistant."},
           {"role": "user", "content": "What is the capital of France?"},
           {"role": "assistant", "content": "The capital of France is Paris."}]
SEED_PROMPTS = {
    "fashiongpt-v1.1": "### System:\nYou are a helpful assistant.\n### User:\nWhat is the capital of France?\n"
                       "### Assistant:\nThe capital of France is Paris.</s>",
    "llama2-13b-orca-8k": "<|system|>You are a helpful assistant.</s><|prompter|>What is the capital of France?</s>"
                          "<|assistant|>The capital of France is Paris.</s>",
    "tulu-v2-qlora-70b": "<|system|>\nYou are a helpful assistant.\n<|user|>\nWhat is the capital of France?\n"
                         "<|assistant|>\nThe capital of France is Paris.</s>\n",
    "orca-mini-13b": "### System:\nYou are a helpful assistant.\n\n### User:\nWhat is the capital of France?\n\n"
                     "### Response:\nThe capital of France is Paris.</s>",
    "dolphin-orca-platypus-70b": "You are a helpful assistant.\n\n### Instruction:\n\nWhat is the capital of France?"
                                 "\n\n### Response:\nThe capital of France is Paris.</s>",
}


def test_merged_tokenizers_are_sentencepiece_and_render_the_seed_formats(built):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    work, recipes = built
    assert set(SEED_PROMPTS) == set(recipes)
    for rid, expected in SEED_PROMPTS.items():
        model = work / "results" / rid / "model"
        sp = spm.SentencePieceProcessor(model_file=str(model / "tokenizer.model"))
        assert sp.piece_to_id("<0x0A>") != sp.unk_id(), rid  # byte fallback
        tok = AutoTokenizer.from_pretrained(model)
        assert tok.apply_chat_template(EXAMPLE, tokenize=False) == expected, rid
        prompt = tok.apply_chat_template(EXAMPLE[:2], tokenize=False, add_generation_prompt=True)
        assert expected.startswith(prompt) and expected[len(prompt):].startswith(EXAMPLE[2]["content"]), rid


def test_fine_tuning_lowers_the_loss_on_every_adapters_training_rows(built):
    work, recipes = built
    seen = 0
    for rid in recipes:
        for summary in sorted((work / "results" / rid / "adapters").glob("*/train_summary.json")):
            probe = json.loads(summary.read_text())["loss_probe"]
            assert probe["rows"] > 0
            assert probe["after"] < probe["before"] - 0.1, (rid, summary.parent.name, probe)
            seen += 1
    assert seen == 7  # every adapter of every seed recipe


def test_train_reads_the_tokenized_rows_and_never_tokenizes(built):
    work, recipes = built
    for log in sorted((work / "logs").glob("*/train/*.log")):
        text = log.read_text()
        assert "memory-mapped from results/" in text, log
        assert "dropped_template" in text  # the stage's counts, read from stats.json
    for log in sorted((work / "logs").glob("*/tokenize/*.log")):
        assert "train: {" in log.read_text(), log


def test_rope_scaling_lands_in_the_orca8k_model(built):
    work, _ = built
    cfg = json.loads((work / "results" / "llama2-13b-orca-8k" / "model" / "config.json").read_text())
    rope = cfg.get("rope_scaling") or cfg.get("rope_parameters")
    assert rope and rope.get("factor") == 2, cfg


def test_second_run_has_nothing_to_do(built):
    work, recipes = built
    r = snakemake(work, "--config", f"recipes=[{','.join(recipes)}]", "-n")
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    assert "Nothing to be done" in out, out[-3000:]


def test_bad_config_is_one_line(tmp_path):
    r = snakemake(tmp_path, "--config", "recipes=[no-such-recipe]", "-n")
    assert r.returncode != 0
    assert "reprotune: error:" in r.stderr and "no-such-recipe.yaml: file not found" in r.stderr
    assert "Traceback" not in r.stderr


def lambdas_in(text: str) -> list[int]:
    """Line numbers of `lambda` keywords (comments and strings do not count)."""
    toks = tokenize.generate_tokens(io.StringIO(text).readline)
    return [t.start[0] for t in toks if t.type == tokenize.NAME and t.string == "lambda"]


def test_lambda_detector_sees_lambdas_and_not_comments_or_strings():
    text = 'rule a:\n    params:\n        x=lambda wc: 1,  # no lambda here\n        y="lambda",\n'
    assert lambdas_in(text) == [3]


def test_rules_use_named_functions_not_lambdas():
    """Input, param and resource functions are named and live in rules/common.smk."""
    files = [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]
    assert len(files) >= 9
    found = {str(f.relative_to(REPO)): lambdas_in(f.read_text()) for f in files}
    assert not any(found.values()), {f: lines for f, lines in found.items() if lines}


SLURM_TOOLS = ("sinfo", "sacct", "squeue", "scontrol", "sbatch", "srun")


def fake_slurm_tools(tmp_path: Path) -> tuple[Path, Path]:
    """A directory of fake SLURM commands that log their argv and hang (as a client whose
    controller does not answer would), and the log they append to."""
    bin_dir, calls = tmp_path / "fake-slurm", tmp_path / "slurm-calls.log"
    bin_dir.mkdir()
    for tool in SLURM_TOOLS:
        (bin_dir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\nsleep "${{FAKE_SLURM_SLEEP:-10}}"\n')
        (bin_dir / tool).chmod(0o755)
    return bin_dir, calls


def test_dry_run_never_calls_slurm(tmp_path):
    """The SLURM executor plugin (which runs sinfo/sacct/squeue/scontrol when imported) is off
    the default path: a plain `snakemake -n` on the default config calls no SLURM command."""
    bin_dir, calls = fake_slurm_tools(tmp_path)
    env = dict(_env(), PATH=f"{bin_dir}{os.pathsep}{_env()['PATH']}")
    work = tmp_path / "work"
    work.mkdir()
    t0 = time.monotonic()
    r = subprocess.run([SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(work), "--cores", "1",
                        "--configfile", str(REPO / "config.yaml"), "-n"], capture_output=True, text=True, env=env,
                       timeout=600)
    print(f"snakemake -n (default config, fake hanging SLURM tools on PATH): {time.monotonic() - t0:.1f} s wall")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "twin_base" in r.stdout  # it did plan the build
    assert not calls.exists(), calls.read_text()


def test_fake_slurm_tools_record_the_plugins_calls(tmp_path):
    """Control for the test above: where the plugin is importable (bin/snakemake-slurm), the
    fakes are found and record its calls."""
    if not (REPO / ".venv-slurm" / "snakemake_executor_plugin_slurm").is_dir():
        pytest.skip("the SLURM executor plugins are not installed: make slurm (make test does)")
    bin_dir, calls = fake_slurm_tools(tmp_path)
    env = dict(_env(), PATH=f"{bin_dir}{os.pathsep}{_env()['PATH']}", FAKE_SLURM_SLEEP="0",
               REPROTUNE_PYTHON=sys.executable)
    r = subprocess.run([str(REPO / "bin/snakemake-slurm"), "--version"], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert {line.split()[0] for line in calls.read_text().splitlines()} & {"sinfo", "sacct", "squeue", "scontrol"}
