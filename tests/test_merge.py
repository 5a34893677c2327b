"""Tests for reprotune.merge on a tiny Llama built here (CPU, offline)."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import json
from pathlib import Path

import pytest
import torch

from reprotune.io import read_json, sha256_file
from reprotune.merge import MergeError, merge, nf4_roundtrip

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n"
                 "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def _corpus() -> list[str]:
    words = ("the quick brown fox jumps over a lazy dog while seven wizards quietly "
             "judge boxing matches question answer science water energy plant").split()
    lines = []
    for i in range(400):
        lines.append(" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(8 + i % 5))
                     + f" {i}. Question: why? Answer: because {i % 13}.")
    return lines


def build_tiny_base(out: Path, vocab_size: int = 300, seed: int = 0) -> Path:
    """Tiny Llama + byte-level BPE tokenizer, safetensors, deterministic."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(str(out))
    torch.manual_seed(seed)
    # intermediate 192 (not 176): bitsandbytes' CPU 4-bit kernels need in_features % 64 == 0
    # (see reprotune.merge.nf4_roundtrip); the 4-bit reference model below runs on CPU.
    cfg = LlamaConfig(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, vocab_size=len(fast), max_position_embeddings=4096,
                      bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                      pad_token_id=None, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    # bigger-than-init weights so NF4 round-trip error is clearly visible
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.05)
    model.save_pretrained(str(out), safe_serialization=True)
    return out


def build_adapter(base_dir: Path, out: Path, seed: int, r: int = 4, with_tokenizer: bool = True,
                  target_modules=("q_proj", "v_proj", "down_proj")) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    cfg = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=list(target_modules),
                     init_lora_weights=False, task_type="CAUSAL_LM")
    pm = get_peft_model(model, cfg)
    with torch.no_grad():  # make B clearly non-zero and seed-dependent
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.05)
    pm.save_pretrained(str(out))
    if with_tokenizer:
        tok = AutoTokenizer.from_pretrained(str(base_dir))
        tok.chat_template = CHAT_TEMPLATE
        tok.save_pretrained(str(out))
    return out


def _load_state(d: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    sd = {}
    for f in sorted(d.glob("*.safetensors")):
        sd.update(load_file(str(f)))
    return sd


def _peft_reference(base_dir: Path, adapter_dir: Path) -> dict[str, torch.Tensor]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    return {k: v.detach().clone() for k, v in
            PeftModel.from_pretrained(m, str(adapter_dir)).merge_and_unload().state_dict().items()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    base = build_tiny_base(root / "base")
    a1 = build_adapter(base, root / "a1", seed=1)
    a2 = build_adapter(base, root / "a2", seed=2, with_tokenizer=False)
    return {"root": root, "base": base, "a1": a1, "a2": a2}


def _maxdiff(a, b):
    assert set(a) == set(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_plain_equals_peft_merge_and_unload(tiny):
    out = tiny["root"] / "plain"
    info = merge({"method": "plain"}, tiny["base"], {"main": tiny["a1"]}, out)
    ref = _peft_reference(tiny["base"], tiny["a1"])
    got = _load_state(out)
    got.pop("lm_head.weight", None) if "lm_head.weight" not in ref else None
    assert _maxdiff(got, ref) <= 1e-6
    base = _load_state(tiny["base"])
    # the adapter did change exactly the targeted tensors
    assert info["delta_vs_base"]["max_abs"] > 0
    changed = set(info["delta_vs_base"]["changed_tensors"])
    assert changed == {k for k in base if any(t in k for t in ("q_proj", "v_proj", "down_proj"))}
    assert info["tokenizer_from"] == "adapter"
    mi = read_json(out / "merge_info.json")
    assert mi == json.loads(json.dumps(info))
    assert str(tiny["root"]) not in (out / "merge_info.json").read_text()


def test_merged_dir_loads_with_auto_classes(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tiny["root"] / "plain_load"
    merge({"method": "plain"}, tiny["base"], {"main": tiny["a1"]}, out)
    for f in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
              "tokenizer_config.json", "merge_info.json"):
        assert (out / f).exists(), f
    assert not list(out.glob("*.bin")) and not (out / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(str(out), use_safetensors=True)
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.chat_template == CHAT_TEMPLATE  # carried from the adapter dir
    ids = tok("the quick brown fox", return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits
    assert logits.shape[-1] == model.config.vocab_size and torch.isfinite(logits).all()


def test_merge_is_byte_identical_on_rerun(tiny):
    o1, o2 = tiny["root"] / "rep1", tiny["root"] / "rep2"
    merge({"method": "plain"}, tiny["base"], {"main": tiny["a1"]}, o1)
    merge({"method": "plain"}, tiny["base"], {"main": tiny["a1"]}, o2)
    assert sorted(p.name for p in o1.iterdir()) == sorted(p.name for p in o2.iterdir())
    for p in sorted(o1.iterdir()):
        assert sha256_file(p) == sha256_file(o2 / p.name), p.name


def test_nf4_roundtrip_error_bound():
    torch.manual_seed(0)
    w = torch.randn(64, 176) * 0.05
    rt = nf4_roundtrip(w, {"quant_type": "nf4", "double_quant": True, "blocksize": 64})
    err = (rt - w).abs()
    # NF4 codes span [-1, 1] with the widest gap between neighbouring codes
    # (-1.0 .. -0.6962) = 0.3038, so |err| <= 0.152 * absmax(block) (+ a little for
    # the 8-bit double-quantized absmax).
    blocks = w.reshape(-1, 64).abs().amax(dim=1, keepdim=True)
    bound = (0.1519 * blocks * 1.02).expand(-1, 64).reshape(w.shape)
    assert err.max() > 0
    assert (err <= bound + 1e-7).all()


def test_qlora_dequant_vs_plain_and_4bit_model(tiny):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    out_p, out_q = tiny["root"] / "p", tiny["root"] / "q"
    merge({"method": "plain"}, tiny["base"], {"main": tiny["a1"]}, out_p)
    spec = {"method": "qlora_dequant", "quantization": {"quant_type": "nf4", "double_quant": True, "blocksize": 64}}
    info = merge(spec, tiny["base"], {"main": tiny["a1"]}, out_q)
    p, q, base = _load_state(out_p), _load_state(out_q), _load_state(tiny["base"])
    diff = {k: float((p[k] - q[k]).abs().max()) for k in p}
    # every Linear except lm_head was round-tripped; embeddings/norms/lm_head untouched
    linear = {k for k in base if k.endswith("_proj.weight")}
    assert info["roundtrip"]["n_tensors_roundtripped"] == len(linear) == 14
    assert {k for k, v in diff.items() if v > 0} == linear
    # bound: per tensor, NF4 round trip error <= 0.152 * max|W| (see test above)
    for k in linear:
        assert 0 < diff[k] <= 0.1519 * 1.02 * float(base[k].abs().max()) + 1e-6, k
    assert info["max_abs_vs_plain"] == pytest.approx(max(diff.values()), abs=1e-6)
    assert info["roundtrip"]["nf4_max_abs_error"] == pytest.approx(max(diff.values()), abs=1e-6)

    # the merged model reproduces what the adapter saw in training: 4-bit base + adapter
    tok = AutoTokenizer.from_pretrained(str(out_q))
    ids = tok(["the quick brown fox jumps over a lazy dog 12. Question: why?"], return_tensors="pt")
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.float32)
    m4 = AutoModelForCausalLM.from_pretrained(str(tiny["base"]), quantization_config=bnb, dtype=torch.float32)
    m4 = PeftModel.from_pretrained(m4, str(tiny["a1"]))
    mq = AutoModelForCausalLM.from_pretrained(str(out_q), dtype=torch.float32).eval()
    mp = AutoModelForCausalLM.from_pretrained(str(out_p), dtype=torch.float32).eval()
    # train mode = the path QLoRA training takes on CPU: exact dequantize_4bit + fp32
    # matmul (dropout is 0 everywhere, so the forward is deterministic).  In eval mode
    # bnb's CPU backend switches to a packed 4-bit GEMM that (measured) deviates up to
    # ~8e-4 per weight from the dequantized weight, i.e. not what the adapter saw.
    m4.train()
    with torch.no_grad():
        l4, lq, lp = m4(**ids).logits, mq(**ids).logits, mp(**ids).logits
    err_q = float((l4 - lq).abs().max())
    err_p = float((l4 - lp).abs().max())
    print(f"logits max|4bit+adapter - qlora_dequant merge| = {err_q:.3g}; vs plain merge = {err_p:.3g}")
    # Measured: err_q ~1e-6 (fp32 reassociation only: x@(Wq+dW) vs x@Wq + (x@A)@B,
    # logits of magnitude ~1), err_p ~0.5 (the NF4 error the plain merge ignores).
    assert err_q < 1e-4, err_q
    assert err_p > 100 * err_q, (err_p, err_q)


@pytest.mark.parametrize("ctype,density", [("linear", None), ("cat", None), ("ties", 0.5), ("dare_linear", 0.5)])
def test_combine(tiny, ctype, density):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    spec = {"method": "combine", "combine": {"adapters": ["a1", "a2"], "weights": [0.7, 0.3],
                                             "combination_type": ctype, "density": density, "seed": 7}}
    dirs = {"a1": tiny["a1"], "a2": tiny["a2"]}
    o1, o2 = tiny["root"] / f"c_{ctype}_1", tiny["root"] / f"c_{ctype}_2"
    info = merge(spec, tiny["base"], dirs, o1)
    merge(spec, tiny["base"], dirs, o2)
    assert sha256_file(o1 / "model.safetensors") == sha256_file(o2 / "model.safetensors")
    assert info["combination_type"] == ctype and info["adapters"] == ["a1", "a2"]
    assert info["delta_vs_base"]["max_abs"] > 0
    got = _load_state(o1)
    # independent reference: peft in memory with the same calls and seed
    m = AutoModelForCausalLM.from_pretrained(str(tiny["base"]), dtype=torch.float32)
    pm = PeftModel.from_pretrained(m, str(tiny["a1"]), adapter_name="a1")
    pm.load_adapter(str(tiny["a2"]), adapter_name="a2")
    torch.manual_seed(7)
    kw = {"density": density} if density is not None else {}
    pm.add_weighted_adapter(["a1", "a2"], [0.7, 0.3], adapter_name="combined", combination_type=ctype, **kw)
    pm.set_adapter("combined")
    ref = pm.merge_and_unload().state_dict()
    assert _maxdiff(got, {k: v for k, v in ref.items() if k in got}) <= 1e-6
    if ctype == "linear":
        # linear with weights (0.7, 0.3) differs from either adapter alone
        only1 = _peft_reference(tiny["base"], tiny["a1"])
        assert _maxdiff(got, only1) > 1e-4


def test_combine_then_qlora_dequant(tiny):
    spec = {"method": "combine", "then": "qlora_dequant",
            "combine": {"adapters": ["a1", "a2"], "weights": [0.5, 0.5], "combination_type": "cat", "seed": 0}}
    info = merge(spec, tiny["base"], {"a1": tiny["a1"], "a2": tiny["a2"]}, tiny["root"] / "cq")
    assert info["then"] == "qlora_dequant" and info["max_abs_vs_plain"] > 0


def test_none_copies_full_weights(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    full = tiny["root"] / "full"
    merge({"method": "plain"}, tiny["base"], {"main": tiny["a1"]}, full)  # stands in for full FT output
    (full / "merge_info.json").unlink()
    out = tiny["root"] / "none"
    info = merge({"method": "none"}, tiny["base"], {"main": full}, out)
    assert sha256_file(out / "model.safetensors") == sha256_file(full / "model.safetensors")
    assert info["delta_vs_base"]["max_abs"] > 0
    AutoModelForCausalLM.from_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(out))


def test_errors_leave_no_output(tiny):
    out = tiny["root"] / "bad"
    with pytest.raises(MergeError):
        merge({"method": "plain"}, tiny["base"], {"a1": tiny["a1"], "a2": tiny["a2"]}, out)
    with pytest.raises(MergeError):
        merge({"method": "bogus"}, tiny["base"], {"a1": tiny["a1"]}, out)
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".bad.tmp-")]


# --------------------------------------------------------------------------- streaming merge

@pytest.fixture(scope="module")
def sharded(tiny):
    """The tiny base re-saved as several safetensors shards (+ index)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tiny["root"] / "base_sharded"
    m = AutoModelForCausalLM.from_pretrained(str(tiny["base"]), dtype=torch.float32)
    m.save_pretrained(str(out), safe_serialization=True, max_shard_size="100KB")
    AutoTokenizer.from_pretrained(str(tiny["base"])).save_pretrained(str(out))
    assert len(list(out.glob("model-*.safetensors"))) >= 3 and (out / "model.safetensors.index.json").exists()
    return out


STREAM_CASES = [
    ({"method": "plain"}, ("a1",)),
    ({"method": "qlora_dequant", "quantization": {"quant_type": "nf4", "double_quant": True, "blocksize": 64}},
     ("a1",)),
    *[({"method": "combine", "combine": {"adapters": ["a1", "a2"], "weights": [0.7, 0.3], "combination_type": c,
                                          "density": d, "seed": 7}}, ("a1", "a2"))
      for c, d in (("linear", None), ("cat", None), ("ties", 0.5), ("dare_linear", 0.5))],
    ({"method": "combine", "then": "qlora_dequant",
      "combine": {"adapters": ["a1", "a2"], "weights": [0.5, 0.5], "combination_type": "cat", "seed": 0}},
     ("a1", "a2")),
]


@pytest.mark.parametrize("base_kind", ["single", "sharded"])
@pytest.mark.parametrize("spec,adapters", STREAM_CASES,
                         ids=["plain", "qlora_dequant", "linear", "cat", "ties", "dare_linear", "cat_then_qlora"])
def test_streaming_equals_in_memory(tiny, sharded, spec, adapters, base_kind):
    base = tiny["base"] if base_kind == "single" else sharded
    dirs = {a: tiny[a] for a in adapters}
    tag = f"{spec['method']}_{(spec.get('combine') or {}).get('combination_type', '')}_{spec.get('then', '')}_{base_kind}"
    mem = merge({**spec, "streaming": False}, base, dirs, tiny["root"] / f"mem_{tag}")
    st = merge(spec, base, dirs, tiny["root"] / f"st_{tag}")
    assert st["streaming"] is True and mem["streaming"] is False
    a, b = _load_state(tiny["root"] / f"st_{tag}"), _load_state(tiny["root"] / f"mem_{tag}")
    assert set(a) == set(b)
    assert _maxdiff(a, b) == 0.0  # bitwise: the same fp32 arithmetic in the same order
    for k in ("delta_vs_base", "adapters", "max_abs_vs_plain", "roundtrip", "combination_type", "save_dtype"):
        assert st.get(k) == mem.get(k), k


def test_streaming_output_is_sharded_with_index(tiny, sharded):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    out = tiny["root"] / "st_shards"
    info = merge({"method": "plain", "max_shard_size": "60KB"}, sharded, {"main": tiny["a1"]}, out)
    shards = sorted(out.glob("model-*.safetensors"))
    assert info["n_shards"] == len(shards) >= 3 and info["max_shard_size"] == 60_000
    idx = read_json(out / "model.safetensors.index.json")
    assert sorted(set(idx["weight_map"].values())) == [p.name for p in shards]
    total = 0
    for p in shards:
        with safe_open(str(p), framework="pt") as f:
            n = sum(f.get_tensor(k).numel() * 4 for k in f.keys())
            assert set(f.keys()) == {k for k, v in idx["weight_map"].items() if v == p.name}
        total += n
        # a shard exceeds the limit only when a single tensor does
        assert n <= 60_000 or len(list(safe_open(str(p), framework="pt").keys())) == 1
    assert idx["metadata"]["total_size"] == total
    assert "model.safetensors.index.json" in info["files"]
    ref = _peft_reference(tiny["base"], tiny["a1"])
    m = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    assert _maxdiff({k: v for k, v in m.state_dict().items()}, ref) == 0.0


def test_streaming_delta_formula_matches_adapter_tensors(tiny):
    """The streamed delta for one tensor is scaling * B @ A read from the adapter file
    (peft key naming, scaling = alpha / r), independent of peft's layer classes."""
    from safetensors.torch import load_file

    from reprotune.merge import lora_delta

    out = tiny["root"] / "st_formula"
    merge({"method": "plain"}, tiny["base"], {"main": tiny["a1"]}, out)
    cfg = read_json(tiny["a1"] / "adapter_config.json")
    ad = load_file(str(tiny["a1"] / "adapter_model.safetensors"))
    key = "model.layers.1.self_attn.q_proj"
    d = lora_delta(ad[f"base_model.model.{key}.lora_A.weight"], ad[f"base_model.model.{key}.lora_B.weight"],
                   cfg["lora_alpha"] / cfg["r"])
    got = _load_state(out)[key + ".weight"] - _load_state(tiny["base"])[key + ".weight"]
    assert float((got - d).abs().max()) <= 1e-6


def test_streaming_applies_config_overrides_and_dtype(tiny):
    import shutil

    adir = tiny["root"] / "a1_rope"
    shutil.copytree(tiny["a1"], adir)
    rope = {"rope_parameters": {"factor": 2.0, "rope_theta": 10000.0, "rope_type": "linear"}}
    (adir / "config_overrides.json").write_text(json.dumps(rope))
    out = tiny["root"] / "st_rope"
    info = merge({"method": "plain", "dtype": "bfloat16"}, tiny["base"], {"main": adir}, out)
    cfg = read_json(out / "config.json")
    assert cfg["rope_parameters"] == rope["rope_parameters"] and info["config_overrides"] == rope
    assert cfg["dtype"] == "bfloat16" and info["save_dtype"] == "bfloat16"
    got = _load_state(out)
    assert all(v.dtype == torch.bfloat16 for v in got.values())
    ref = _peft_reference(tiny["base"], tiny["a1"])
    assert _maxdiff(got, {k: v.to(torch.bfloat16) for k, v in ref.items()}) == 0.0
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(str(out)).rope_parameters["factor"] == 2.0


def test_streaming_falls_back_for_modules_to_save(tiny):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    m = AutoModelForCausalLM.from_pretrained(str(tiny["base"]), dtype=torch.float32)
    pm = get_peft_model(m, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], modules_to_save=["lm_head"],
                                      init_lora_weights=False, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "modules_to_save" in n:
                p.add_(0.01)
    adir = tiny["root"] / "a_mts"
    pm.save_pretrained(str(adir))
    info = merge({"method": "plain"}, tiny["base"], {"main": adir}, tiny["root"] / "st_mts")
    assert info["streaming"] is False  # handled in memory, with a warning
    assert "lm_head.weight" in info["delta_vs_base"]["changed_tensors"]


def test_parse_size():
    from reprotune.merge import parse_size

    assert parse_size("5GB") == 5 * 10**9 and parse_size("500MiB") == 500 * 2**20 and parse_size(1000) == 1000
    for bad in ("lots", "-1MB", 0):
        with pytest.raises(MergeError):
            parse_size(bad)
