"""Merge trained adapters into the base model (stage ``merge``).

``merge(spec, base_dir, adapter_dirs, out_dir) -> info``

spec keys
---------
``method``        ``plain`` | ``qlora_dequant`` | ``combine`` | ``none``
``quantization``  (qlora_dequant, or combine with ``then: qlora_dequant``)
                  ``{"quant_type": "nf4", "double_quant": true, "blocksize": 64}``
``combine``       ``{"adapters": [names], "weights": [floats], "combination_type":
                  "linear"|"cat"|"svd"|"ties"|"dare_linear"|"dare_ties"|"magnitude_prune"|...,
                  "density": float|null, "seed": int}``
``then``          (combine only) how the combined adapter goes into the base:
                  ``plain`` (default) or ``qlora_dequant``
``dtype``         optional dtype of the saved weights (``float32``/``bfloat16``/``float16``);
                  default: the dtype recorded in the base config.json, else float32.
                  The merge arithmetic itself is always done in float32.

Methods
-------
``plain``          base in fp32 + ``PeftModel.from_pretrained`` + ``merge_and_unload``.
``qlora_dequant``  the QLoRA-faithful merge (open-instruct ``merge_lora.py --qlora``,
                   jondurbin ``qmerge.py``): the adapter was trained against the NF4
                   base, so every base weight that bitsandbytes would have quantized
                   when loading with ``load_in_4bit`` -- every ``nn.Linear`` except the
                   output embedding (``lm_head``), i.e. all attention and MLP projections,
                   *not only the LoRA-targeted ones* -- is replaced by its NF4
                   round trip ``dequantize_4bit(quantize_4bit(W))`` before the LoRA delta
                   is added. Embeddings and norms are never quantized by bnb and stay.
``combine``        peft ``add_weighted_adapter`` over several adapters (seeded: dare_*
                   are random), the result merged per ``then``.
``none``           full fine-tune: the single "adapter" dir already holds full weights;
                   model + tokenizer files are copied and checked against the config.

``max_shard_size`` output shard size (``"5GB"`` default, ``"500MB"``, ``"2GiB"`` or bytes)
``streaming``      default true; false forces the in-memory merge (the reference in tests)

Streaming (default for plain / qlora_dequant / combine)
-------------------------------------------------------
The base checkpoint is read one tensor at a time with ``safetensors.safe_open`` (any
number of input shards), the tensor gets the NF4 round trip (qlora_dequant) and its LoRA
delta, and is written straight into its output shard, whose safetensors header is planned
up front from shapes and dtypes. Peak memory is about one tensor (+ its delta) plus the
adapter(s), never the model. The deltas come from peft's own LoRA layers built on a
weightless skeleton of the base (zero-stride parameters), so key naming, scaling
(alpha / r, rslora, rank/alpha patterns), fan_in_fan_out and ``add_weighted_adapter``
(seeded the same way, same module order) are peft's: the result is bitwise equal to the
in-memory merge (tests/test_merge.py). Adapters the streaming path does not handle
(``modules_to_save``, DoRA, trainable tokens, non-LoRA tensors) fall back to the
in-memory merge with a warning.

Output (written atomically): ``model.safetensors`` or ``model-0000i-of-0000n.safetensors`` +
``model.safetensors.index.json``, ``config.json`` (the base's, with the adapter's
``config_overrides.json`` -- e.g. the RoPE scaling used in training -- applied),
``generation_config.json``, tokenizer files (from the first adapter dir when it has
them -- they carry the chat template -- else from the base dir) and ``merge_info.json``
(deterministic: no paths, no timestamps).
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch

from .io import atomic_dir, atomic_write_json, read_json, sha256_file

log = logging.getLogger(__name__)

METHODS = ("plain", "qlora_dequant", "combine", "none")
DEFAULT_QUANT = {"quant_type": "nf4", "double_quant": True, "blocksize": 64}

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
MODEL_FILES = ("config.json", "generation_config.json")
# "none": copied weights smaller than this are loaded in full as a check; bigger ones
# are checked against the config on the meta device (names + shapes)
FULL_LOAD_CHECK_BYTES = 1 << 30
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class MergeError(RuntimeError):
    pass


# --------------------------------------------------------------------------- per tensor

def nf4_roundtrip(weight: torch.Tensor, quant: Mapping[str, Any] | None = None) -> torch.Tensor:
    """Return ``dequantize_4bit(quantize_4bit(weight))`` in float32 (the weight the
    QLoRA adapter actually saw during training).

    The tensor is round-tripped *flattened*: bitsandbytes' blocks run over the flat
    (row-major) storage, which the CUDA kernels honour for every shape. The 2-D CPU
    dequantize kernel of bitsandbytes 0.50 instead assumes ``in_features % blocksize
    == 0`` and returns wrong values for other shapes (e.g. a [64, 176] down_proj: max
    error 1.13 x block absmax instead of <= 0.152 x); flattening sidesteps that and
    gives the device-independent, mathematically defined round trip.
    """
    import bitsandbytes.functional as bnbf

    q = {**DEFAULT_QUANT, **(quant or {})}
    w = weight.detach().to(torch.float32).contiguous().reshape(-1)
    packed, state = bnbf.quantize_4bit(
        w,
        blocksize=int(q["blocksize"]),
        compress_statistics=bool(q["double_quant"]),
        quant_type=str(q["quant_type"]),
    )
    return bnbf.dequantize_4bit(packed, state).to(torch.float32).reshape(weight.shape)


def lora_delta(lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float,
               fan_in_fan_out: bool = False) -> torch.Tensor:
    """The LoRA weight delta ``scaling * B @ A`` (peft's formula for Linear layers)."""
    delta = (lora_B.to(torch.float32) @ lora_A.to(torch.float32)) * scaling
    return delta.T if fan_in_fan_out else delta


def max_abs_diff_state(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> dict:
    """Per-tensor max |a - b| over the keys both share (same shape); summary dict."""
    per: dict[str, float] = {}
    for k in sorted(set(a) & set(b)):
        if a[k].shape != b[k].shape:
            continue
        per[k] = float((a[k].to(torch.float32) - b[k].to(torch.float32)).abs().max()) if a[k].numel() else 0.0
    changed = sorted(k for k, v in per.items() if v > 0)
    return {
        "max_abs": max(per.values(), default=0.0),
        "n_tensors_compared": len(per),
        "n_tensors_changed": len(changed),
        "changed_tensors": changed,
    }


# --------------------------------------------------------------------------- loading

def _load_base(base_dir: Path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(base_dir), dtype=torch.float32, use_safetensors=True, trust_remote_code=False,
        low_cpu_mem_usage=True,
    )
    model.eval()
    return model


def _quantized_linear_names(model) -> list[str]:
    """Linear layers bitsandbytes turns into Linear4bit under ``load_in_4bit``:
    every nn.Linear except the output embedding (transformers keeps lm_head in full
    precision)."""
    out_emb = model.get_output_embeddings()
    names = []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and mod is not out_emb:
            names.append(name)
    return sorted(names)


def _roundtrip_base_(model, quant: Mapping[str, Any]) -> dict:
    """In place: replace every quantizable Linear weight by its NF4 round trip."""
    names = _quantized_linear_names(model)
    modules = dict(model.named_modules())
    max_err = 0.0
    bs = int(quant.get("blocksize", 64))
    unaligned = [n for n in names if modules[n].weight.shape[-1] % bs]
    if unaligned:
        log.warning("%d quantized Linear weights have in_features %% %d != 0 (e.g. %s): bitsandbytes' "
                    "CPU 4-bit kernels mis-dequantize these, so an adapter trained with QLoRA on CPU "
                    "saw different base weights than this (correct, CUDA-equivalent) round trip",
                    len(unaligned), bs, unaligned[0])
    with torch.no_grad():
        for name in names:
            w = modules[name].weight
            rt = nf4_roundtrip(w.data, quant)
            max_err = max(max_err, float((rt - w.data).abs().max()))
            w.data.copy_(rt)
    return {"n_tensors_roundtripped": len(names), "nf4_max_abs_error": max_err,
            "n_tensors_unaligned_for_cpu_bnb": len(unaligned)}


def _maybe_resize(model, adapter_dir: Path) -> None:
    """If training added tokens, the adapter's saved embeddings are bigger than the
    base's; resize the base first so the adapter loads."""
    cfg_path = adapter_dir / "adapter_config.json"
    st = adapter_dir / "adapter_model.safetensors"
    if not (cfg_path.exists() and st.exists()):
        return
    from safetensors import safe_open

    want = None
    with safe_open(str(st), framework="pt") as f:
        for k in f.keys():
            if k.endswith("embed_tokens.weight") or k.endswith("lm_head.weight"):
                want = max(want or 0, f.get_slice(k).get_shape()[0])
    if want and want != model.get_input_embeddings().weight.shape[0]:
        log.info("resizing base embeddings to %d for %s", want, adapter_dir.name)
        model.resize_token_embeddings(want)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- methods

def _combine_params(spec: Mapping[str, Any], adapter_dirs: Mapping[str, Any]):
    """(names, weights, combination_type, density, seed) of a ``combine`` spec, checked."""
    c = spec.get("combine") or {}
    names = list(c.get("adapters") or list(adapter_dirs))
    weights = [float(w) for w in (c.get("weights") or [1.0] * len(names))]
    if len(weights) != len(names):
        raise MergeError(f"combine: {len(names)} adapters but {len(weights)} weights")
    missing = [n for n in names if n not in adapter_dirs]
    if missing:
        raise MergeError(f"combine: no adapter dir for {missing}")
    return names, weights, c.get("combination_type", "linear"), c.get("density"), int(c.get("seed", 0))


def _apply_adapters(model, spec: dict, adapter_dirs: Mapping[str, Path]):
    """Attach the adapter(s) per spec and return the merged plain model + info."""
    from peft import PeftModel

    method = spec["method"]
    info: dict[str, Any] = {}
    if method in ("plain", "qlora_dequant"):
        if len(adapter_dirs) != 1:
            raise MergeError(f"merge method {method!r} takes exactly one adapter, got {sorted(adapter_dirs)}")
        (name, adir), = adapter_dirs.items()
        _maybe_resize(model, Path(adir))
        peft_model = PeftModel.from_pretrained(model, str(adir), adapter_name=name, is_trainable=False)
        info["adapters"] = [name]
    else:  # combine
        names, weights, ctype, density, seed = _combine_params(spec, adapter_dirs)
        _maybe_resize(model, Path(adapter_dirs[names[0]]))
        peft_model = PeftModel.from_pretrained(model, str(adapter_dirs[names[0]]), adapter_name=names[0],
                                               is_trainable=False)
        for n in names[1:]:
            peft_model.load_adapter(str(adapter_dirs[n]), adapter_name=n, is_trainable=False)
        kwargs: dict[str, Any] = {}
        if density is not None:
            kwargs["density"] = float(density)
        torch.manual_seed(seed)
        peft_model.add_weighted_adapter(names, weights, adapter_name="combined",
                                        combination_type=ctype, **kwargs)
        peft_model.set_adapter("combined")
        for n in names:
            peft_model.delete_adapter(n)
        info.update({"adapters": names, "weights": weights, "combination_type": ctype,
                     "density": density, "seed": seed})
    deltas = _lora_deltas(peft_model) if spec.get("_collect_deltas") else None
    merged = peft_model.merge_and_unload()
    merged.eval()
    return merged, info, deltas


def _lora_deltas(peft_model) -> dict[str, torch.Tensor]:
    """Per target weight (merged-model state_dict key) the delta peft is about to add."""
    from peft.tuners.lora import LoraLayer

    out = {}
    prefix = "base_model.model."
    for name, mod in peft_model.named_modules():
        if isinstance(mod, LoraLayer):
            for a in mod.active_adapters:
                if a in getattr(mod, "lora_A", {}):
                    key = (name[len(prefix):] if name.startswith(prefix) else name) + ".weight"
                    d = mod.get_delta_weight(a).detach().to(torch.float32)
                    out[key] = out[key] + d if key in out else d
    return out


def _copy_tokenizer(dst: Path, adapter_dir: Path | None, base_dir: Path) -> str:
    src = None
    if adapter_dir is not None and any((adapter_dir / f).exists() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        src, label = adapter_dir, "adapter"
    else:
        src, label = base_dir, "base"
    n = 0
    for f in TOKENIZER_FILES:
        if (src / f).exists():
            shutil.copyfile(src / f, dst / f)
            n += 1
    if n == 0:
        raise MergeError(f"no tokenizer files in {src}")
    return label


def _save_dtype(spec: dict, base_dir: Path) -> torch.dtype:
    name = spec.get("dtype")
    if not name:
        cfg = read_json(base_dir / "config.json") if (base_dir / "config.json").exists() else {}
        name = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
    if name not in _DTYPES:
        raise MergeError(f"unsupported save dtype {name!r}")
    return _DTYPES[name]


def _verify_loadable(out: Path, full: bool) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    AutoTokenizer.from_pretrained(str(out))
    if full:
        AutoModelForCausalLM.from_pretrained(str(out), use_safetensors=True, trust_remote_code=False)
        return
    # cheap structural check: every parameter of the config's model is in the files
    from safetensors import safe_open

    cfg = AutoConfig.from_pretrained(str(out), trust_remote_code=False)
    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(cfg, trust_remote_code=False)
    shapes: dict[str, tuple] = {}
    for st in sorted(out.glob("*.safetensors")):
        with safe_open(str(st), framework="pt") as f:
            for k in f.keys():
                shapes[k] = tuple(f.get_slice(k).get_shape())
    tied = getattr(cfg, "tie_word_embeddings", False)
    for k, v in m.state_dict().items():
        if k not in shapes:
            if tied and k.endswith("lm_head.weight"):
                continue
            raise MergeError(f"full weights lack tensor {k}")
        if shapes[k] != tuple(v.shape):
            raise MergeError(f"tensor {k}: shape {shapes[k]} != {tuple(v.shape)} from config")


def _copy_full(src: Path, dst: Path) -> list[str]:
    if list(src.glob("*.bin")) and not list(src.glob("*.safetensors")):
        raise MergeError(f"{src} has only .bin weights; safetensors required")
    files = sorted(p.name for p in src.glob("*.safetensors"))
    if not files:
        raise MergeError(f"no *.safetensors in {src}")
    extra = [f for f in ("model.safetensors.index.json", *MODEL_FILES) if (src / f).exists()]
    for f in files + extra:
        shutil.copyfile(src / f, dst / f)
    if "config.json" not in extra:
        raise MergeError(f"no config.json in {src}")
    return files


def tensor_index(d: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file of a (sharded) checkpoint directory that holds it."""
    from safetensors import safe_open

    out = {}
    for st in sorted(d.glob("*.safetensors")):
        with safe_open(str(st), framework="pt") as f:
            for k in f.keys():
                out[k] = st
    return out


def _max_abs_diff_files(a_dir: Path, b_dir: Path) -> dict:
    """Per-tensor streaming comparison of two safetensors checkpoints."""
    from safetensors import safe_open

    ia, ib = tensor_index(a_dir), tensor_index(b_dir)
    per: dict[str, float] = {}
    for k in sorted(set(ia) & set(ib)):
        with safe_open(str(ia[k]), framework="pt") as fa, safe_open(str(ib[k]), framework="pt") as fb:
            ta, tb = fa.get_tensor(k), fb.get_tensor(k)
        if ta.shape == tb.shape:
            per[k] = max_abs_diff_state({k: ta}, {k: tb})["max_abs"]
    changed = sorted(k for k, v in per.items() if v > 0)
    return {"max_abs": max(per.values(), default=0.0), "n_tensors_compared": len(per),
            "n_tensors_changed": len(changed), "changed_tensors": changed}


def _adapter_digest(adir: Path) -> dict[str, str]:
    out = {}
    for f in ("adapter_model.safetensors", "adapter_config.json", "model.safetensors"):
        if (adir / f).exists():
            out[f] = sha256_file(adir / f)
    return out


# --------------------------------------------------------------------------- streaming merge
#
# Shard by shard: the base checkpoint is read one tensor at a time (safetensors.safe_open),
# each tensor gets its LoRA delta (and, for qlora_dequant, the NF4 round trip first), and it
# is written straight into its output shard, whose header was planned up front from the
# shapes alone. Peak memory is about one tensor (plus its delta) plus the adapter(s); the
# whole model is never in memory. The deltas come from peft's own LoRA layers, built on a
# weightless skeleton of the base (every base parameter is a zero-stride view of one
# scalar), so key naming, scaling (alpha / r, rslora alpha / sqrt(r), rank/alpha patterns),
# fan_in_fan_out and the add_weighted_adapter combinations are peft's, bit for bit.

DEFAULT_MAX_SHARD_SIZE = "5GB"
_ST_DTYPES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}
_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(value: int | str) -> int:
    """``5GB`` / ``500MiB`` / ``1000`` -> bytes."""
    import re

    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(value))
        if not m or m.group(2).upper() not in _SIZE_UNITS:
            raise MergeError(f"max_shard_size: cannot parse {value!r} (e.g. 5GB, 500MiB, 1000000)")
        n = int(float(m.group(1)) * _SIZE_UNITS[m.group(2).upper()])
    if n <= 0:
        raise MergeError(f"max_shard_size must be positive, got {value!r}")
    return n


def checkpoint_index(model_dir: Path) -> dict[str, Path]:
    """tensor key -> shard file of a safetensors checkpoint (ordered: shard, then key)."""
    from safetensors import safe_open

    model_dir = Path(model_dir)
    idx = model_dir / "model.safetensors.index.json"
    files = (sorted({model_dir / f for f in read_json(idx)["weight_map"].values()}) if idx.exists()
             else sorted(model_dir.glob("*.safetensors")))
    if not files:
        raise MergeError(f"no *.safetensors weights in {model_dir}")
    out: dict[str, Path] = {}
    for st in files:
        with safe_open(str(st), framework="pt") as f:
            for k in sorted(f.keys()):
                out[k] = st
    return out


def _tensor_meta(path: Path, key: str) -> tuple[list[int], str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        sl = f.get_slice(key)
        return list(sl.get_shape()), sl.get_dtype()


_HEADERS: dict[tuple, tuple[int, dict]] = {}


def _st_header(path: Path) -> tuple[int, dict]:
    """(data start, header) of a safetensors file (the format: u64 LE header size, JSON header)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _HEADERS:
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            _HEADERS.clear()  # one file at a time is all the merge needs
            _HEADERS[key] = (8 + n, json.loads(fh.read(n)))
    return _HEADERS[key]


def _read_tensor(path: Path, key: str) -> torch.Tensor:
    """One tensor, read with a positioned plain read into a fresh buffer. (``safe_open``
    lists keys, shapes and dtypes; its memory-mapped ``get_tensor`` would keep the touched
    file pages resident -- counted in RSS -- on top of the copy it returns.)"""
    start, header = _st_header(Path(path))
    meta = header[key]
    dtype = _ST_NAMES[meta["dtype"]]
    b0, b1 = meta["data_offsets"]
    buf = torch.empty(b1 - b0, dtype=torch.uint8)
    with open(path, "rb", buffering=0) as fh:
        fh.seek(start + b0)
        view = memoryview(buf.numpy())
        got = 0
        while got < len(view):
            n = fh.readinto(view[got:])
            if not n:
                raise MergeError(f"{path}: truncated tensor {key}")
            got += n
    return buf.view(dtype).reshape(meta["shape"]) if b1 > b0 else torch.empty(meta["shape"], dtype=dtype)


def _streamable(adapter_dirs: Mapping[str, Path]) -> str | None:
    """None if every adapter is plain LoRA the streaming merge handles, else the reason."""
    from safetensors import safe_open

    for name, adir in sorted(adapter_dirs.items()):
        cfg_path = Path(adir) / "adapter_config.json"
        st = Path(adir) / "adapter_model.safetensors"
        if not cfg_path.exists() or not st.exists():
            return f"{name}: not a safetensors LoRA adapter dir"
        cfg = read_json(cfg_path)
        if cfg.get("peft_type", "LORA") != "LORA":
            return f"{name}: peft_type {cfg.get('peft_type')}"
        for key in ("modules_to_save", "trainable_token_indices", "use_dora", "lora_bias"):
            if cfg.get(key):
                return f"{name}: adapter_config {key}={cfg[key]!r}"
        with safe_open(str(st), framework="pt") as f:
            odd = [k for k in f.keys() if not any(p in k for p in (".lora_A.", ".lora_B.", ".lora_embedding_A",
                                                                    ".lora_embedding_B"))]
        if odd:
            return f"{name}: adapter carries non-LoRA tensors (e.g. {sorted(odd)[0]})"
    return None


def _skeleton(base_dir: Path):
    """The base architecture with weightless parameters: every parameter is a zero-stride
    fp32 view of one scalar (real CPU tensors of the right shape, ~0 bytes), so peft can
    build, load and combine LoRA layers on it without the base weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(str(base_dir), trust_remote_code=False)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=False, dtype=torch.float32)
    zero = torch.zeros((), dtype=torch.float32)
    for mod in model.modules():
        for pname, p in list(mod._parameters.items()):
            if p is not None:
                mod._parameters[pname] = torch.nn.Parameter(zero.expand(p.shape), requires_grad=False)
    model.eval()
    return model


class _Deltas:
    """checkpoint key -> callable computing peft's delta for it (lazily: one at a time)."""

    def __init__(self, peft_model, adapter: str):
        from peft.tuners.lora import LoraLayer

        self.mods: dict[str, Any] = {}
        self.adapter = adapter
        prefix = "base_model.model."
        for name, mod in peft_model.named_modules():
            if isinstance(mod, LoraLayer) and (adapter in getattr(mod, "lora_A", {})
                                               or adapter in getattr(mod, "lora_embedding_A", {})):
                key = (name[len(prefix):] if name.startswith(prefix) else name) + ".weight"
                self.mods[key] = mod

    def __contains__(self, key: str) -> bool:
        return key in self.mods

    def __call__(self, key: str) -> torch.Tensor:
        with torch.no_grad():
            return self.mods[key].get_delta_weight(self.adapter).detach().to(torch.float32)


def _stream_adapters(base_dir: Path, spec: dict, adapter_dirs: Mapping[str, Path]):
    """Load the adapter(s) onto the skeleton as the in-memory merge does; returns
    (deltas, names of the Linear weights bnb would quantize, info)."""
    from peft import PeftModel

    method = spec["method"]
    model = _skeleton(base_dir)
    quant_keys = {n + ".weight" for n in _quantized_linear_names(model)}
    info: dict[str, Any] = {}
    if method in ("plain", "qlora_dequant"):
        if len(adapter_dirs) != 1:
            raise MergeError(f"merge method {method!r} takes exactly one adapter, got {sorted(adapter_dirs)}")
        (name, adir), = adapter_dirs.items()
        pm = PeftModel.from_pretrained(model, str(adir), adapter_name=name, is_trainable=False)
        info["adapters"] = [name]
        return _Deltas(pm, name), quant_keys, info
    names, weights, ctype, density, seed = _combine_params(spec, adapter_dirs)
    pm = PeftModel.from_pretrained(model, str(adapter_dirs[names[0]]), adapter_name=names[0], is_trainable=False)
    for n in names[1:]:
        pm.load_adapter(str(adapter_dirs[n]), adapter_name=n, is_trainable=False)
    kwargs: dict[str, Any] = {"density": float(density)} if density is not None else {}
    torch.manual_seed(seed)  # same calls in the same module order as the in-memory merge: same dare masks
    pm.add_weighted_adapter(names, weights, adapter_name="combined", combination_type=ctype, **kwargs)
    pm.set_adapter("combined")
    for n in names:
        pm.delete_adapter(n)
    info.update({"adapters": names, "weights": weights, "combination_type": ctype,
                 "density": density, "seed": seed})
    return _Deltas(pm, "combined"), quant_keys, info


def _plan_shards(entries: list[tuple[str, list[int], torch.dtype]], max_bytes: int) -> list[list[tuple]]:
    shards: list[list[tuple]] = [[]]
    size = 0
    for key, shape, dtype in entries:
        n = _nbytes(shape, dtype)
        if shards[-1] and size + n > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append((key, shape, dtype))
        size += n
    return shards


def _nbytes(shape: list[int], dtype: torch.dtype) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n * torch.empty((), dtype=dtype).element_size()


def _shard_header(entries: list[tuple]) -> bytes:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    off = 0
    for key, shape, dtype in entries:
        n = _nbytes(shape, dtype)
        header[key] = {"dtype": _ST_DTYPES[dtype], "shape": [int(d) for d in shape], "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as safetensors writes it
    return len(raw).to_bytes(8, "little") + raw


def _write_tensor(fh, t: torch.Tensor) -> None:
    t = t.contiguous()
    if t.numel() == 0:
        return
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.view(torch.int16)
    elif t.dtype == torch.bool:
        t = t.view(torch.uint8)
    fh.write(memoryview(t.numpy()).cast("B"))


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) if a.numel() else 0.0


def _stream_merge(spec: dict, base_dir: Path, adapter_dirs: Mapping[str, Path], tmp: Path,
                  info: dict[str, Any]) -> None:
    """Write the merged shards + index into ``tmp`` and fill ``info``."""
    method = spec["method"]
    then = spec.get("then", "plain") if method == "combine" else method
    if then not in ("plain", "qlora_dequant"):
        raise MergeError(f"combine.then must be plain or qlora_dequant, got {then!r}")
    if method == "combine":
        info["then"] = then
    quant = None
    if then == "qlora_dequant":
        quant = {**DEFAULT_QUANT, **(spec.get("quantization") or {})}
        if quant["quant_type"] not in ("nf4", "fp4"):
            raise MergeError(f"unsupported quant_type {quant['quant_type']!r}")
        info["quantization"] = quant
    deltas, quant_keys, ainfo = _stream_adapters(base_dir, {**spec, "method": method}, adapter_dirs)
    info.update(ainfo)
    index = checkpoint_index(base_dir)
    missing = sorted(k for k in deltas.mods if k not in index)
    if missing:
        raise MergeError(f"adapter targets {missing[0]} but the base checkpoint has no such tensor "
                         f"({len(missing)} missing; checkpoint keys must match module names)")
    save_dtype = _save_dtype(spec, base_dir)
    info["save_dtype"] = str(save_dtype).replace("torch.", "")
    max_bytes = parse_size(spec.get("max_shard_size") or DEFAULT_MAX_SHARD_SIZE)
    entries = []
    for key, path in index.items():
        shape, st_dtype = _tensor_meta(path, key)
        src = _ST_NAMES.get(st_dtype)
        dtype = save_dtype if src is not None and src.is_floating_point else src
        if dtype is None:
            raise MergeError(f"tensor {key}: unsupported safetensors dtype {st_dtype}")
        entries.append((key, shape, dtype))
    shards = _plan_shards(entries, max_bytes)
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    bs = int((quant or {}).get("blocksize", 64))
    per_delta: dict[str, float] = {}
    per_plain: dict[str, float] = {}
    rt_err, n_rt, unaligned = 0.0, 0, []
    weight_map: dict[str, str] = {}
    total = 0
    for fname, shard in zip(names, shards):
        with open(tmp / fname, "wb") as fh:
            fh.write(_shard_header(shard))
            for key, shape, dtype in shard:
                base_t = _read_tensor(index[key], key)
                touched = base_t.is_floating_point() and (
                    key in deltas or (quant is not None and key in quant_keys))
                if not touched:
                    merged = base_t.to(dtype)
                    per_delta[key] = 0.0
                else:
                    base32 = base_t.to(torch.float32)
                    w = base32
                    if quant is not None and key in quant_keys:
                        if shape[-1] % bs:
                            unaligned.append(key)
                        w = nf4_roundtrip(base32, quant)
                        rt_err = max(rt_err, _max_abs(w, base32))
                        n_rt += 1
                    if key in deltas:
                        d = deltas(key)
                        if quant is not None:
                            # exact per-tensor comparison with the plain merge: plain = W + delta
                            per_plain[key] = _max_abs(w + d, base32 + d)
                        w = w + d if w is base32 else w.add_(d)  # peft: weight.data += delta_weight
                        del d
                    else:
                        per_plain[key] = _max_abs(w, base32)
                    per_delta[key] = _max_abs(w, base32)
                    del base32
                    merged = w.to(dtype)
                    del w
                _write_tensor(fh, merged)
                weight_map[key] = fname
                total += _nbytes(shape, dtype)
                del base_t, merged
    if len(shards) > 1:
        atomic_write_json(tmp / "model.safetensors.index.json",
                          {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))})
    if quant is not None:
        if unaligned:
            log.warning("%d quantized Linear weights have in_features %% %d != 0 (e.g. %s): bitsandbytes' "
                        "CPU 4-bit kernels mis-dequantize these, so an adapter trained with QLoRA on CPU "
                        "saw different base weights than this (correct, CUDA-equivalent) round trip",
                        len(unaligned), bs, unaligned[0])
        info["roundtrip"] = {"n_tensors_roundtripped": n_rt, "nf4_max_abs_error": rt_err,
                             "n_tensors_unaligned_for_cpu_bnb": len(unaligned)}
        info["max_abs_vs_plain"] = max(per_plain.values(), default=0.0)
    changed = sorted(k for k, v in per_delta.items() if v > 0)
    info["delta_vs_base"] = {"max_abs": max(per_delta.values(), default=0.0), "n_tensors_compared": len(per_delta),
                             "n_tensors_changed": len(changed), "changed_tensors": changed}
    info["streaming"] = True
    info["max_shard_size"] = max_bytes
    info["n_shards"] = len(shards)
    _write_config(tmp, base_dir, adapter_dirs, info, save_dtype)


def _write_config(tmp: Path, base_dir: Path, adapter_dirs: Mapping[str, Path], info: dict,
                  save_dtype: torch.dtype) -> None:
    """config.json = the base's, with the adapter's ``config_overrides.json`` (e.g. RoPE
    scaling used in training) applied and the saved dtype recorded; generation config copied."""
    cfg = read_json(base_dir / "config.json")
    overrides = _config_overrides(adapter_dirs, info.get("adapters") or sorted(adapter_dirs))
    cfg.update(overrides)
    cfg["dtype"] = str(save_dtype).replace("torch.", "")
    cfg.pop("torch_dtype", None)
    atomic_write_json(tmp / "config.json", cfg)
    if overrides:
        info["config_overrides"] = overrides
    if (base_dir / "generation_config.json").exists():
        shutil.copyfile(base_dir / "generation_config.json", tmp / "generation_config.json")


def _config_overrides(adapter_dirs: Mapping[str, Path], names: list[str]) -> dict:
    """Union of the adapters' ``config_overrides.json``; adapters that disagree are an error."""
    out: dict[str, Any] = {}
    for n in names:
        p = Path(adapter_dirs[n]) / "config_overrides.json"
        if not p.exists():
            continue
        for k, v in read_json(p).items():
            if k in out and out[k] != v:
                raise MergeError(f"adapters disagree on config override {k!r}: {out[k]!r} vs {v!r}")
            out[k] = v
    return out


# --------------------------------------------------------------------------- entry point

def merge(spec: dict, base_dir: Path, adapter_dirs: dict[str, Path], out_dir: Path) -> dict:
    """Merge per ``spec`` and write the loadable model to ``out_dir``; returns merge_info."""
    spec = dict(spec or {})
    method = spec.get("method", "plain")
    if method not in METHODS:
        raise MergeError(f"unknown merge method {method!r} (expected one of {METHODS})")
    base_dir = Path(base_dir)
    adapter_dirs = {k: Path(v) for k, v in adapter_dirs.items()}
    if not adapter_dirs:
        raise MergeError("no adapter dirs given")
    out_dir = Path(out_dir)

    info: dict[str, Any] = {"method": method}
    first_adapter = next(iter(adapter_dirs.values()))
    if method == "combine":
        names = (spec.get("combine") or {}).get("adapters") or list(adapter_dirs)
        first_adapter = adapter_dirs[names[0]]

    with atomic_dir(out_dir) as tmp:
        if method == "none":
            if len(adapter_dirs) != 1:
                raise MergeError(f"method 'none' takes one weights dir, got {sorted(adapter_dirs)}")
            (name, wdir), = adapter_dirs.items()
            info["adapters"] = [name]
            info["weights_files"] = _copy_full(wdir, tmp)
            info["tokenizer_from"] = _copy_tokenizer(tmp, wdir, base_dir)
            info["adapter_sha256"] = {name: _adapter_digest(wdir)}
            if list(base_dir.glob("*.safetensors")):
                info["delta_vs_base"] = _max_abs_diff_files(base_dir, tmp)
            small = sum(p.stat().st_size for p in tmp.glob("*.safetensors")) < FULL_LOAD_CHECK_BYTES
            _verify_loadable(tmp, full=small)
        elif spec.get("streaming", True) and not (reason := _streamable(adapter_dirs)):
            _stream_merge({**spec, "method": method}, base_dir, adapter_dirs, tmp, info)
            info["adapter_sha256"] = {n: _adapter_digest(adapter_dirs[n]) for n in info["adapters"]}
            info["tokenizer_from"] = _copy_tokenizer(tmp, first_adapter, base_dir)
            _verify_loadable(tmp, full=False)
        else:
            if spec.get("streaming", True):
                log.warning("in-memory merge (the streaming merge does not handle %s)", reason)
            info["streaming"] = False
            base = _load_base(base_dir)
            base_state = _state(base)
            quant = None
            then = spec.get("then", "plain") if method == "combine" else method
            if then not in ("plain", "qlora_dequant"):
                raise MergeError(f"combine.then must be plain or qlora_dequant, got {then!r}")
            if method == "combine":
                info["then"] = then
            if then == "qlora_dequant":
                quant = {**DEFAULT_QUANT, **(spec.get("quantization") or {})}
                if quant["quant_type"] not in ("nf4", "fp4"):
                    raise MergeError(f"unsupported quant_type {quant['quant_type']!r}")
                info["quantization"] = quant
                info["roundtrip"] = _roundtrip_base_(base, quant)
            pre_names = _quantized_linear_names(base)
            merged, ainfo, deltas = _apply_adapters(
                base, {**spec, "method": method, "_collect_deltas": quant is not None}, adapter_dirs)
            info.update(ainfo)
            if quant is not None:
                # exact per-tensor comparison with the plain merge: plain = W + delta
                # (peft adds the delta in fp32 in place, so this is bitwise the plain merge)
                merged_sd = merged.state_dict()
                per = {}
                for k in sorted(set(deltas) | {n + ".weight" for n in pre_names}):
                    if k in merged_sd and k in base_state:
                        plain = base_state[k] + deltas[k] if k in deltas else base_state[k]
                        per[k] = float((merged_sd[k] - plain).abs().max())
                info["max_abs_vs_plain"] = max(per.values(), default=0.0)
                del deltas
            info["adapter_sha256"] = {n: _adapter_digest(adapter_dirs[n]) for n in info["adapters"]}
            merged_state = merged.state_dict()
            info["delta_vs_base"] = max_abs_diff_state(merged_state, base_state)
            dtype = _save_dtype(spec, base_dir)
            info["save_dtype"] = str(dtype).replace("torch.", "")
            if dtype != torch.float32:
                merged = merged.to(dtype)
            merged.save_pretrained(str(tmp), safe_serialization=True)
            overrides = _config_overrides(adapter_dirs, info["adapters"])
            if overrides:
                atomic_write_json(tmp / "config.json", {**read_json(tmp / "config.json"), **overrides})
                info["config_overrides"] = overrides
            del base_state
            for stray in ("README.md",):
                (tmp / stray).unlink(missing_ok=True)
            info["tokenizer_from"] = _copy_tokenizer(tmp, first_adapter, base_dir)
            _verify_loadable(tmp, full=False)  # the weights came from an in-memory model
        info["files"] = sorted(p.name for p in tmp.iterdir())
        info["files"].append("merge_info.json")
        atomic_write_json(tmp / "merge_info.json", info)
    log.info("merged (%s) -> %s: max |W_merged - W_base| = %.3g", method, out_dir,
             info.get("delta_vs_base", {}).get("max_abs", float("nan")))
    return info
