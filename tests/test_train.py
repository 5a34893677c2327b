"""reprotune.train: deterministic LoRA under accelerate, QLoRA on CPU, full FT + RoPE scaling, checkpoints;
every train setting the schema accepts reaches the trainer.

Resume after SIGKILL: tests/test_resume.py; packing: tests/test_packing.py; DDP: tests/test_ddp.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _tokens import tokens_for

from reprotune import tinybase
from reprotune.io import sha256_file

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SPEC = {"recipe": "test", "adapter": "main", "template": "oasst",
        "train": {"method": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": "all-linear"},
                  "max_steps": 4, "max_length": 96, "per_device_batch_size": 2, "gradient_accumulation_steps": 1,
                  "learning_rate": 1e-3, "lr_scheduler": "constant", "save_steps": 2, "seed": 7,
                  "precision": "bf16"}}


def _records():
    out = []
    for i in range(10):
        out.append({"id": f"t/{i}", "source": "t", "system": "be brief" if i % 2 else "",
                    "messages": [{"role": "user", "content": f"question {i} about the quick fox"},
                                 {"role": "assistant", "content": f"the quick brown fox answer {i}"},
                                 {"role": "user", "content": "and the dog?"},
                                 {"role": "assistant", "content": "the lazy dog sleeps"}]})
    out.append({"id": "rp/0", "source": "rp", "text": "hello world, the quick brown fox jumps over the lazy dog"})
    return out


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    data = root / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records()), encoding="utf-8")
    tinybase.build({"vocab_size": 512}, [data / "train.jsonl"], root / "base")
    return root


def _run(env, spec, name, accelerate=False, hooks=()):
    """Train in a subprocess; ``hooks`` (e.g. ``("--crash-after-checkpoint", "1")``) go through the
    test entry tests/_train_hooks.py."""
    cmd = [str(BIN / "accelerate"), "launch", "--config_file", str(ROOT / "configs/accelerate/cpu.yaml"),
           "--num_cpu_threads_per_process", "2"] if accelerate else [sys.executable]
    cmd += [str(ROOT / "tests" / "_train_hooks.py"), *hooks] if hooks else ["-m", "reprotune.train"]
    cmd += ["--spec", json.dumps(spec), "--data", str(tokens_for(env / "data", env / "base", spec)),
            "--base", str(env / "base"), "--out", str(env / name), "--work", str(env / f"work-{name}")]
    e = dict(os.environ, PYTHONHASHSEED="0", TOKENIZERS_PARALLELISM="false")
    return subprocess.run(cmd, cwd=ROOT, env=e, capture_output=True, text=True, timeout=300)


def _ok(p):
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-6000:]
    return p


def _hashes(d: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(d.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def lora_runs(env):
    _ok(_run(env, SPEC, "lora-a", accelerate=True))
    _ok(_run(env, SPEC, "lora-b", accelerate=True))
    return env / "lora-a", env / "lora-b"


@pytest.mark.slow
def test_lora_runs_are_byte_identical(lora_runs):
    a, b = lora_runs
    assert _hashes(a) == _hashes(b)
    assert sha256_file(a / "adapter_model.safetensors") == sha256_file(b / "adapter_model.safetensors")
    assert (a / "loss_curve.png").read_bytes() == (b / "loss_curve.png").read_bytes()


def test_loss_curve_png_is_deterministic_and_follows_the_log():
    from reprotune.train import loss_curve_png

    rows = [{"step": i, "loss": 3.0 / i, "learning_rate": 1e-4 * (1 - i / 10)} for i in range(1, 9)]
    a = loss_curve_png(rows, "t / main (lora)")
    assert a == loss_curve_png([dict(r) for r in rows], "t / main (lora)")
    assert a.startswith(b"\x89PNG") and b"matplotlib" not in a  # no Software metadata
    assert a != loss_curve_png(rows[:-1], "t / main (lora)")


@pytest.mark.slow
def test_lora_output_contents(lora_runs, env):
    from transformers import AutoTokenizer

    from reprotune import templates

    out = lora_runs[0]
    names = set(_hashes(out))
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tokenizer_config.json",
            "train_log.jsonl", "train_summary.json", "config_overrides.json", "loss_curve.png"} <= names
    assert not any("tfevents" in n for n in names)  # TensorBoard events carry wall-clock times: work dir only
    assert any(p.name.startswith("events.out.tfevents") for p in (env / "work-lora-a" / "tensorboard").iterdir())
    png = (out / "loss_curve.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and b"tEXt" not in png and b"tIME" not in png
    assert not any(n.endswith((".bin", ".pt", ".pth", ".pkl")) for n in names)
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8 and cfg["task_type"] == "CAUSAL_LM"
    assert cfg["target_modules"] == sorted(cfg["target_modules"]) and len(cfg["target_modules"]) == 14
    assert not os.path.isabs(cfg["base_model_name_or_path"])
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert set(r) == {"step", "loss", "learning_rate", "grad_norm", "epoch", "tokens"}
        assert r["loss"] > 0 and r["tokens"] > 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 4 and summary["final_loss"] == rows[-1]["loss"]
    assert summary["tokens_trained"] == sum(r["tokens"] for r in rows)
    assert summary["trainable_params"] > 0 and summary["data"]["kept"] == 11
    assert summary["world_size"] == 1 and summary["packing"] is None
    assert summary["settings"]["effective"]["precision"] == "fp32"  # bf16 requested, CPU
    text = (out / "train_summary.json").read_text()
    assert str(env) not in text and "time" not in text
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == templates.get("oasst").chat_template
    # the adapter loads on the base and changes its output
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(env / "base")
    ids = torch.tensor([tok("<|prompter|>hi</s><|assistant|>")["input_ids"]])
    with torch.no_grad():
        before = base(ids).logits
        after = PeftModel.from_pretrained(base, out)(ids).logits
    assert not torch.allclose(before, after)


@pytest.mark.slow
def test_qlora_on_cpu(env):
    import math

    spec = json.loads(json.dumps(SPEC))
    spec["template"] = "tulu"
    spec["train"].update(method="qlora", max_steps=3, optimizer="paged_adamw_32bit", gradient_checkpointing=True,
                         deepspeed="zero2", attn_implementation="flash_attention_2",
                         quantization={"quant_type": "nf4", "double_quant": True, "compute_dtype": "bfloat16"})
    p = _ok(_run(env, spec, "qlora"))
    for line in ("paged_adamw_32bit needs CUDA", "deepspeed: zero2 is ignored on CPU", "using sdpa"):
        assert line in p.stderr
    out = env / "qlora"
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 3 and math.isfinite(summary["final_loss"])


@pytest.mark.slow
def test_full_finetune_with_rope_scaling(env):
    import torch
    from transformers import AutoModelForCausalLM

    spec = json.loads(json.dumps(SPEC))
    spec["template"] = "fashiongpt"
    del spec["train"]["lora"]
    spec["train"].update(method="full", max_steps=2, rope_scaling={"type": "linear", "factor": 2},
                         gradient_checkpointing=True)
    _ok(_run(env, spec, "full"))
    out = env / "full"
    assert {"model.safetensors", "config.json", "generation_config.json"} <= set(_hashes(out))
    cfg = json.loads((out / "config.json").read_text())
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling")
    assert rope["rope_type" if "rope_type" in rope else "type"] == "linear" and rope["factor"] == 2.0
    assert json.loads((out / "config_overrides.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(env / "base")
    assert not torch.equal(model.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)


@pytest.mark.parametrize("change,expected", [
    ({"method": "dora"}, "--spec: key 'train.method': 'dora' is not allowed (expected one of: 'lora', 'qlora', 'full')"),
    ({"lr_scheduler": "polynomial"}, "--spec: key 'train.lr_scheduler': 'polynomial' is not allowed"),
    ({"adam_beta2": 1.5}, "--spec: key 'train.adam_beta2': 1.5 is out of range (expected < 1)"),
    ({"learning_rate": None}, "--spec: key 'train.learning_rate': None has the wrong type (expected number)"),
    ({"method": "full"}, "--spec: key 'train.lora': a full fine-tune takes no LoRA settings"),
])
def test_bad_spec_is_a_one_line_error(env, tmp_path, caplog, change, expected):
    from reprotune import train

    spec = json.loads(json.dumps(SPEC))
    spec["train"].update(change)
    rc = train.main(["--spec", json.dumps(spec), "--data", str(tokens_for(env / "data", env / "base", SPEC)),
                     "--base", str(env / "base"), "--out", str(tmp_path / "o"), "--work", str(tmp_path / "w")])
    assert rc == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith(expected) and "\n" not in errors[0], errors
    assert not (tmp_path / "o").exists()


def test_collator_and_checkpoint_helpers(tmp_path):
    from reprotune.train import COMPLETE_MARKER, Collator, _read_log_rows, last_complete_checkpoint

    batch = Collator(pad_id=2)([{"input_ids": [1, 5, 6], "attention_mask": [1, 1, 1], "labels": [-100, 5, 6]},
                               {"input_ids": [1, 7], "attention_mask": [1, 1], "labels": [-100, 7]}])
    assert batch["input_ids"].tolist() == [[1, 5, 6], [1, 7, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[-100, 5, 6], [-100, 7, -100]]
    ck = tmp_path / "checkpoints"
    full = ["adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"]
    for step, files, marker in ((2, full, 2),
                                (4, full[:2], 4),     # files missing
                                (6, full, None),      # every file, but the save never finished
                                (8, full, 6),         # marker of another step
                                (10, full, "cut")):   # marker cut by a kill
        d = ck / f"checkpoint-{step}"
        d.mkdir(parents=True)
        for f in files:
            (d / f).write_text("x")
        if marker == "cut":
            (d / COMPLETE_MARKER).write_text('{"st')
        elif marker is not None:
            (d / COMPLETE_MARKER).write_text(json.dumps({"step": marker}))
    assert last_complete_checkpoint(ck).name == "checkpoint-2"
    assert last_complete_checkpoint(tmp_path / "none") is None
    partial = tmp_path / "log.jsonl"
    partial.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    assert [r["step"] for r in _read_log_rows(partial)] == [1, 2]


@pytest.mark.slow
def test_checkpoints_of_another_spec_are_not_resumed(env):
    from reprotune.train import checkpoint_is_complete

    spec = json.loads(json.dumps(SPEC))
    spec["train"].update(max_steps=2, save_steps=1)
    p = _run(env, spec, "stale", hooks=("--crash-after-checkpoint", "1"))
    assert p.returncode == 75, p.stderr[-3000:]
    assert checkpoint_is_complete(env / "work-stale" / "checkpoints" / "checkpoint-1")
    spec["train"]["learning_rate"] = 5e-4
    p = _ok(_run(env, spec, "stale"))
    assert "checkpoints of a different run" in p.stderr and "resuming from checkpoint" not in p.stderr
    assert json.loads((env / "stale" / "train_summary.json").read_text())["steps"] == 2


# --------------------------------------------------------------------------- settings reach the trainer
BASE = {"method": "lora", "lora": {"r": 4, "alpha": 8}, "learning_rate": 1e-3, "per_device_batch_size": 2,
        "max_length": 16}  # short: truncation happens, so max_length shows in the rows
QBASE = {**BASE, "method": "qlora", "quantization": {}}
OTHER = {  # settings whose other values the schema cannot enumerate
    "method": [{k: v for k, v in BASE.items() if k != "lora"} | {"method": "full"}, QBASE],
    "rope_scaling": [{**BASE, "rope_scaling": {"type": "linear", "factor": 2}}],
    "lora.target_modules": [{**BASE, "lora": {**BASE["lora"], "target_modules": ["q_proj", "v_proj"]}}],
}


def _train_schema() -> dict:
    from reprotune.recipe import _schema

    return _schema("recipe")["$defs"]["train_settings"]


def _leaves(schema: dict, prefix: str = ""):
    """(dotted key, property schema) of every setting; the lora / quantization blocks by their keys."""
    for key, prop in schema["properties"].items():
        if prop.get("type") == "object" and "properties" in prop:
            yield from _leaves(prop, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", prop


def _alternatives(prop: dict, current) -> list:
    """Values the property's schema accepts, other than ``current``."""
    import jsonschema

    types = prop.get("type", [])
    types = [types] if isinstance(types, str) else types
    if "enum" in prop:
        candidates = list(prop["enum"])
    elif "boolean" in types:
        candidates = [not current]
    elif "number" in types or "integer" in types:
        x = current if isinstance(current, (int, float)) else 0
        candidates = [x + 1, x * 2, x / 2, (x + 1) / 2, 1, 0]
    else:
        return []
    ok = jsonschema.Draft202012Validator(prop).is_valid
    return [c for c in candidates if c != current and ok(c)]


def _with(block: dict, dotted: str, value) -> dict:
    out = json.loads(json.dumps(block))
    *parents, last = dotted.split(".")
    d = out
    for k in parents:
        d = d[k]
    d[last] = value
    return out


def _given(s: dict, env, tmp_path) -> dict:
    """Everything the train stage derives from resolved settings ``s``: machine choices (CPU and
    CUDA), TrainingArguments, model loading and LoRA config, RoPE override, the training rows and
    the launch config."""
    from transformers import AutoConfig, AutoTokenizer

    from reprotune import plan, templates
    from reprotune.train import _load_kwargs, apply_rope_scaling, load_rows, lora_config, runtime_choices, \
        training_arguments

    cpu, gpu = runtime_choices(s, cuda=False), runtime_choices(s, cuda=True)
    args = training_arguments(s, cpu, False, tmp_path / "ckpt").to_dict()
    tok = AutoTokenizer.from_pretrained(env / "base")
    return {"effective": (cpu, gpu), "args": args, "load": repr(_load_kwargs(s, gpu, cuda=True)),
            "lora": lora_config(s["lora"]).to_dict() if "lora" in s else None,
            "rope": apply_rope_scaling(AutoConfig.from_pretrained(env / "base"), s["rope_scaling"]),
            "rows": load_rows(tokens_for(env / "data", env / "base", {"template": "oasst", "train": s}),
                              {"template": "oasst", "train": s}).rows[:],
            "launch": plan.accelerate_args({"adapters": {"a": {"train": s}}}, "a", None)}


def test_every_train_setting_the_schema_accepts_changes_what_the_trainer_is_given(env, tmp_path):
    from reprotune.recipe import resolve_train

    checked = []
    for dotted, prop in _leaves(_train_schema()):
        base = QBASE if dotted.startswith("quantization.") else BASE
        current = resolve_train(base)
        for k in dotted.split("."):
            current = current[k]
        variants = OTHER.get(dotted) or [_with(base, dotted, v) for v in _alternatives(prop, current)]
        assert variants, f"train.{dotted}: no other value to try (add one to OTHER)"
        ref = _given(resolve_train(base), env, tmp_path)
        assert any(_given(resolve_train(v), env, tmp_path) != ref for v in variants), \
            f"train.{dotted} is accepted by the schema but changes nothing the trainer is given"
        checked.append(dotted)
    assert "adam_beta2" in checked and "quantization.compute_dtype" in checked and len(checked) > 30


def _tiny_trainer(s: dict, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer

    from reprotune.train import runtime_choices, training_arguments

    model = LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    return Trainer(model=model, args=training_arguments(s, runtime_choices(s, False), False, tmp_path / "ckpt"))


def test_adam_settings_reach_the_optimizer(tmp_path):
    from reprotune.recipe import resolve_train

    s = resolve_train({**BASE, "adam_beta1": 0.85, "adam_beta2": 0.95, "adam_epsilon": 1e-6})
    groups = _tiny_trainer(s, tmp_path).create_optimizer().param_groups
    assert groups and all(g["betas"] == (0.85, 0.95) and g["eps"] == 1e-6 for g in groups)
    default = _tiny_trainer(resolve_train(BASE), tmp_path).create_optimizer().param_groups[0]
    assert default["betas"] == (0.9, 0.999) and default["eps"] == 1e-8  # the schema defaults


@pytest.mark.parametrize("scheduler", _train_schema()["properties"]["lr_scheduler"]["enum"])
def test_every_scheduler_the_schema_accepts_runs(tmp_path, scheduler):
    from reprotune.recipe import resolve_train

    s = resolve_train({**BASE, "lr_scheduler": scheduler, "warmup_steps": 2})
    trainer = _tiny_trainer(s, tmp_path)
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(trainer.lr_scheduler.get_last_lr()[0])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    assert lrs[0] == 0.0 and lrs[2] == pytest.approx(1e-3)  # two warmup steps, then the peak
    if scheduler.startswith("constant"):
        assert lrs[2:] == pytest.approx([1e-3] * 8)
    else:
        assert lrs[-1] < lrs[3] < lrs[2]
