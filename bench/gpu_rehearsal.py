"""GPU rehearsal: one recipe on a ~1B-parameter twin of its base, on one GPU, end to end.

The tiny build proves the code path on CPU with twins of a few million parameters. This
script runs the same stages at a size where GPU behaviour shows (bf16, sdpa, QLoRA NF4 where
bitsandbytes is importable, memory, throughput):

1. a twin of the recipe's base (default tulu-v2-qlora-70b -> meta-llama/Llama-2-70b-hf, 8:1
   grouped-query attention) scaled to ~1B parameters (``--size 1b``: hidden 2048, 22 layers,
   16 query heads, 2 KV heads), no pre-training, in the real shard layout;
2. ``download.fetch_model`` from that twin's mirror (the base download of full scale);
3. the recipe's sources cleaned and mixed from the fixture mirror (``clean``, ``mix``);
4. ``accelerate launch --config_file configs/accelerate/single_gpu.yaml -m reprotune.train`` with
   the recipe's method (QLoRA falls back to LoRA without bitsandbytes), bf16, sdpa, packing,
   ``--steps`` optimizer steps of ``--batch`` rows of up to ``--max-length`` tokens;
5. ``merge`` (qlora_dequant for a QLoRA adapter, else plain) and an evaluation: lm-eval's first
   the merged model's loss on the validation rows (the training rows where the recipe holds out
   none); with lm-eval installed, the full suite is one ``python -m reprotune evaluate`` away.

Printed: training tokens/s and peak GPU memory (from the training process's
``train_runinfo.json``), the loss on the training rows before/after, merge and evaluation
times, and what was skipped. Where no GPU exists it says so and exits 0 (``--cpu`` runs the
same flow on the CPU at ``--size tiny``, to check the script itself).

    bench/gpu_rehearsal.sh                          # on a GPU host
    bench/gpu_rehearsal.sh --cpu --size tiny --steps 4   # the CPU half, anywhere
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

SIZES = {
    "1b": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 16,
           "num_key_value_heads": 2},
    "tiny": {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 2, "num_attention_heads": 8,
             "num_key_value_heads": 1},
}


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _twin(recipe: dict, size: str, work: Path) -> Path:
    from reprotune import bases, twin

    profile = bases.get(recipe["base_model"]["id"])
    profile["twin"].update(SIZES[size])
    texts = sorted(p for p in (REPO / "fixtures" / "hub").rglob("*") if p.is_file())
    t = time.monotonic()
    info = twin.build({"profile": profile, "seed": 0, "pretrain": {"steps": 0}}, texts, work / "twin",
                      threads=os.cpu_count() or 1)
    print(f"twin: {info['parameters'] / 1e9:.2f}B parameters ({profile['id']} layout), built in "
          f"{time.monotonic() - t:.0f} s")
    return work / "twin"


def _base(recipe: dict, twin_root: Path, work: Path) -> Path:
    from reprotune import download, plan

    spec = {**plan.base_download_spec(recipe), "mirror_sums": str(twin_root / "SHA256SUMS")}
    t = time.monotonic()
    download.fetch_model(spec, work / "base", twin_root / "hub")
    print(f"base download from the twin mirror: {time.monotonic() - t:.0f} s")
    return work / "base"


def _data(recipe: dict, adapter: str, base: Path, work: Path) -> Path:
    from reprotune import clean, download, mix, plan

    mirror = plan.repo_path(recipe["hub_mirror"])
    clean_dirs = {}
    for s in sorted(recipe["adapters"][adapter]["data"]["mix"]):
        download.fetch_dataset(plan.download_spec(recipe, s), work / "sources" / s, mirror)
        clean.clean_source(plan.clean_spec(recipe, s), work / "sources" / s, work / "clean" / s)
        clean_dirs[s] = work / "clean" / s
    report = mix.mix(plan.mix_spec(recipe, adapter), clean_dirs, work / "data", base)
    print(f"data: {report['totals']['train']} train rows, {report['totals']['val']} validation rows")
    return work / "data"


def _train_spec(recipe: dict, adapter: str, args, cuda: bool) -> dict:
    from reprotune import plan

    spec = plan.train_spec(recipe, adapter)
    t = spec["train"]
    if t["method"] == "qlora" and not _has("bitsandbytes"):
        print("QLoRA: bitsandbytes is not importable -> LoRA on the bf16 base instead")
        t["method"] = "lora"
        t.pop("quantization", None)
    t.update(max_steps=args.steps, per_device_batch_size=args.batch, gradient_accumulation_steps=1,
             max_length=args.max_length, packing=True, num_gpus=1 if cuda else 0, deepspeed=None,
             precision="bf16" if cuda else "fp32", attn_implementation="sdpa", save_steps=max(args.steps, 1),
             gradient_checkpointing=False, learning_rate=2e-4)
    return spec


def _train(spec: dict, data: Path, base: Path, work: Path, cuda: bool) -> Path:
    cfg = REPO / "configs" / "accelerate" / ("single_gpu.yaml" if cuda else "cpu.yaml")
    out = work / "adapter"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(cfg), "-m", "reprotune.train",
           "--spec", json.dumps(spec), "--data", str(data), "--base", str(base), "--out", str(out),
           "--work", str(work / "train_work"), "--tensorboard", str(work / "tb")]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONHASHSEED": "0", "TOKENIZERS_PARALLELISM": "false"}
    with open(work / "train.log", "w") as log:
        r = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        tail = (work / "train.log").read_text(errors="replace")[-3000:]
        raise SystemExit(f"gpu_rehearsal: training failed (exit {r.returncode}); log tail:\n{tail}")
    run = json.loads((work / "train_work" / "train_runinfo.json").read_text())
    summary = json.loads((out / "train_summary.json").read_text())
    peak = run["peak_gpu_memory_bytes"]
    print(f"train ({summary['method']}, {summary['steps']} steps): {run['tokens_per_second']} tokens/s "
          f"({run['tokens']} tokens in {run['seconds']:.1f} s), peak GPU memory "
          f"{f'{peak / 2**30:.2f} GiB' if peak else 'n/a (CPU)'}")
    probe = summary["loss_probe"]
    print(f"loss on {probe['rows']} training rows: {probe['before']:.4f} before, {probe['after']:.4f} after")
    return out


def _merge(spec: dict, base: Path, adapter: Path, work: Path) -> Path:
    from reprotune import merge

    method = "qlora_dequant" if spec["train"]["method"] == "qlora" else "plain"
    t = time.monotonic()
    merge.merge({"method": method}, base, {"main": adapter}, work / "model")
    print(f"merge ({method}, streaming): {time.monotonic() - t:.0f} s")
    return work / "model"


def _evaluate(model_dir: Path, data: Path, template: str, cuda: bool) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from reprotune import base_tokenizer, templates
    from reprotune.io import read_jsonl
    from reprotune.tokenize import encode_dataset

    if _has("lm_eval"):
        print("lm-eval is installed: run `python -m reprotune evaluate` on the merged model for the full suite")
    t = time.monotonic()
    device = "cuda" if cuda else "cpu"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16 if cuda else torch.float32).to(device)
    tok = base_tokenizer.load(model_dir)
    split = "val" if (data / "val.jsonl").stat().st_size else "train"  # a recipe may hold out no rows
    rows, _ = encode_dataset(read_jsonl(data / f"{split}.jsonl"), templates.get(template), tok, 1024)
    losses = []
    with torch.no_grad():
        for r in rows[:64]:
            ids = torch.tensor([r["input_ids"]], device=device)
            labels = torch.tensor([r["labels"]], device=device)
            losses.append(float(model(input_ids=ids, labels=labels).loss))
    loss = sum(losses) / len(losses) if losses else float("nan")
    print(f"evaluate: loss {loss:.4f} on {len(losses)} {split} rows ({time.monotonic() - t:.0f} s)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="tulu-v2-qlora-70b")
    ap.add_argument("--size", choices=sorted(SIZES), default="1b")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--work", type=Path, default=None, help="keep everything here (default: a temp dir)")
    ap.add_argument("--cpu", action="store_true", help="run on the CPU (checks the script; no GPU numbers)")
    args = ap.parse_args(argv)
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.cpu:
        print("gpu_rehearsal: no GPU on this machine (torch.cuda.is_available() is False): nothing to rehearse; "
              "run it on a GPU host, or with --cpu --size tiny to check the script")
        return 0
    if cuda:
        print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, bitsandbytes "
              f"{'yes' if _has('bitsandbytes') else 'no'}, flash-attn {'yes' if _has('flash_attn') else 'no (sdpa)'}")
    from reprotune.recipe import load_recipe

    recipe = load_recipe(REPO / "recipes" / f"{args.recipe}.yaml", REPO / "overlays" / "tiny.yaml")
    adapter = sorted(recipe["adapters"])[0]
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-rehearsal-"))
    work.mkdir(parents=True, exist_ok=True)
    base = _base(recipe, _twin(recipe, args.size, work), work)
    data = _data(recipe, adapter, base, work)
    spec = _train_spec(recipe, adapter, args, cuda)
    adapter_dir = _train(spec, data, base, work, cuda)
    _evaluate(_merge(spec, base, adapter_dir, work), data, spec["template"], cuda)
    print(f"outputs under {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
