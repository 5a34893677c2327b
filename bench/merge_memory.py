"""Peak memory of the streaming merge vs peft's in-memory ``merge_and_unload``.

Builds a random, sharded Llama checkpoint (default: fp32, hidden 2048, 12 layers,
vocab 32000 -> about 3.0 GB in ~500 MB shards) and an r=64 LoRA adapter on every
linear layer, then merges it twice, each in a fresh subprocess:

* ``peft``:      ``AutoModelForCausalLM.from_pretrained`` (fp32) + ``PeftModel`` +
                 ``merge_and_unload`` + ``save_pretrained`` (what open-instruct / qmerge do);
* ``streaming``: ``reprotune.merge.merge({"method": "plain"})`` (shard by shard).

Each child reports its peak RSS (``VmHWM`` of /proc/self/status; see ``_peak_kb``) and the
RSS right after its imports (interpreter + torch + transformers + peft: memory that is
not the merge's). Printed: both peaks, the ratio, wall times, and the streaming peak
against the target ``1.5 x (largest shard + adapter)``. The two merged checkpoints are
compared tensor by tensor (max abs diff). Everything is written under ``--work``
(default: a new dir in /tmp) and deleted afterwards unless ``--keep``.

    .venv/bin/python bench/merge_memory.py                 # ~3 GB model, a few minutes
    .venv/bin/python bench/merge_memory.py --layers 2 --hidden 256 --vocab 1000   # smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MB = 1024 * 1024


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _rss_now_kb() -> int:
    return _status_kb("VmRSS")


def _peak_kb() -> int:
    """Peak RSS of this process image. VmHWM belongs to the address space, so it starts
    afresh at exec; ``ru_maxrss`` is carried over from the forking parent on Linux (it
    reported the builder's peak for both children), so it is only the fallback."""
    return _status_kb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _dir_bytes(d: Path, pattern: str) -> list[int]:
    return sorted(p.stat().st_size for p in d.glob(pattern))


# --------------------------------------------------------------------------- build
def build(work: Path, a) -> None:
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    base, adapter = work / "base", work / "adapter"
    base.mkdir(parents=True)
    adapter.mkdir(parents=True)
    cfg = LlamaConfig(hidden_size=a.hidden, intermediate_size=a.intermediate, num_hidden_layers=a.layers,
                      num_attention_heads=a.hidden // 128 or 1, num_key_value_heads=a.hidden // 128 or 1,
                      vocab_size=a.vocab, tie_word_embeddings=False, dtype="float32")
    cfg.save_pretrained(str(base))
    with torch.device("meta"):
        skel = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    shapes = {k: tuple(v.shape) for k, v in skel.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    limit = int(a.shard_mb * 1e6)
    shards: list[dict] = [{}]
    size = 0
    for k in sorted(shapes):  # write shard by shard: the builder never holds the model
        n = 4
        for d in shapes[k]:
            n *= d
        if shards[-1] and size + n > limit:
            shards.append({})
            size = 0
        shards[-1][k] = shapes[k]
        size += n
    weight_map, total = {}, 0
    for i, keys in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {k: (torch.randn(s, generator=gen) * 0.02) if len(s) == 2 else torch.ones(s) for k, s in keys.items()}
        save_file(tensors, str(base / name), metadata={"format": "pt"})
        for k, t in tensors.items():
            weight_map[k] = name
            total += t.numel() * 4
        del tensors
    (base / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2, sort_keys=True))
    tok = Tokenizer(models.WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(str(base))
    # adapter: r on every linear layer of every block
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    LoraConfig(r=a.r, lora_alpha=2 * a.r, target_modules=targets, task_type="CAUSAL_LM",
               lora_dropout=0.0).save_pretrained(str(adapter))
    lora = {}
    for name, mod in skel.named_modules():
        if isinstance(mod, torch.nn.Linear) and name.split(".")[-1] in targets:
            lora[f"base_model.model.{name}.lora_A.weight"] = torch.randn(a.r, mod.in_features, generator=gen) * 0.01
            lora[f"base_model.model.{name}.lora_B.weight"] = torch.randn(mod.out_features, a.r, generator=gen) * 0.01
    save_file(lora, str(adapter / "adapter_model.safetensors"), metadata={"format": "pt"})


# --------------------------------------------------------------------------- children
def child(mode: str, work: Path, shard_mb: float) -> None:
    import torch  # noqa: F401  (imports before the baseline RSS reading)
    import transformers  # noqa: F401
    import peft  # noqa: F401
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    sys.path.insert(0, str(REPO / "src"))
    from reprotune.merge import merge

    base_kb = _rss_now_kb()
    t0 = time.perf_counter()
    out = work / f"out_{mode}"
    if mode == "peft":
        m = AutoModelForCausalLM.from_pretrained(str(work / "base"), dtype=torch.float32)
        m = PeftModel.from_pretrained(m, str(work / "adapter")).merge_and_unload()
        m.save_pretrained(str(out), safe_serialization=True, max_shard_size=f"{int(shard_mb)}MB")
    else:
        merge({"method": "plain", "max_shard_size": f"{int(shard_mb)}MB"}, work / "base",
              {"main": work / "adapter"}, out)
    wall = time.perf_counter() - t0
    peak_kb = _peak_kb()
    print(json.dumps({"mode": mode, "peak_rss_mb": peak_kb / 1024, "baseline_rss_mb": base_kb / 1024,
                      "wall_s": wall}))


def compare(work: Path) -> float:
    from reprotune.merge import _max_abs_diff_files, tensor_index

    a, b = work / "out_peft", work / "out_streaming"
    names_a, names_b = set(tensor_index(a)), set(tensor_index(b))
    assert names_a == names_b, sorted(names_a ^ names_b)[:5]
    return _max_abs_diff_files(a, b)["max_abs"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--intermediate", type=int, default=5632)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--r", type=int, default=64)
    p.add_argument("--shard-mb", type=float, default=500.0)
    p.add_argument("--work")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--child", choices=["peft", "streaming"], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a.child, Path(a.work), a.shard_mb)
        return 0
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="merge_bench_", dir="/tmp"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONHASHSEED": "0"}
    try:
        t0 = time.perf_counter()
        build(work, a)
        shards = _dir_bytes(work / "base", "model-*.safetensors")
        adapter_b = (work / "adapter" / "adapter_model.safetensors").stat().st_size
        print(f"built {sum(shards) / 1e9:.2f} GB base in {len(shards)} shards (largest {shards[-1] / MB:.0f} MiB), "
              f"adapter r={a.r} {adapter_b / MB:.0f} MiB, in {time.perf_counter() - t0:.0f} s")
        res = {}
        for mode in ("peft", "streaming"):
            r = subprocess.run([sys.executable, __file__, "--child", mode, "--work", str(work),
                                "--shard-mb", str(a.shard_mb)], env=env, capture_output=True, text=True)
            if r.returncode:
                print(r.stdout[-3000:], r.stderr[-3000:], file=sys.stderr)
                return 1
            res[mode] = json.loads(r.stdout.strip().splitlines()[-1])
            print(f"{mode:>9}: peak RSS {res[mode]['peak_rss_mb']:8.0f} MiB "
                  f"(after imports {res[mode]['baseline_rss_mb']:.0f} MiB), wall {res[mode]['wall_s']:.1f} s")
        pk, st = res["peft"], res["streaming"]
        target = 1.5 * (shards[-1] + adapter_b) / MB
        net_p = pk["peak_rss_mb"] - pk["baseline_rss_mb"]
        net_s = st["peak_rss_mb"] - st["baseline_rss_mb"]
        print(f"ratio peft/streaming peak RSS: {pk['peak_rss_mb'] / st['peak_rss_mb']:.2f}x "
              f"(above the import baseline: {net_p:.0f} / {net_s:.0f} MiB = {net_p / max(net_s, 1):.2f}x)")
        print(f"streaming peak vs 1.5 x (largest shard + adapter) = {target:.0f} MiB: "
              f"total {st['peak_rss_mb']:.0f} MiB ({'ok' if st['peak_rss_mb'] <= target else 'over'}), "
              f"above imports {net_s:.0f} MiB ({'ok' if net_s <= target else 'over'})")
        print(f"wall ratio streaming/peft: {st['wall_s'] / pk['wall_s']:.2f}x")
        print(f"max |peft - streaming| over all tensors: {compare(work):.3g}")
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
