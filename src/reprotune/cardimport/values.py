"""Value parsers: a card's wording of a setting -> the recipe's value, or None (not readable).

Each parser takes the raw value (a string, or what a fenced YAML/JSON config held) and returns
the recipe schema's value. ``PARSERS`` is keyed by the ``parse`` names of keys.yaml.
"""
from __future__ import annotations

import re
from typing import Any, Callable

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"


def _text(v: Any) -> str:
    return str(v).strip().strip("`*").strip() if v is not None else ""


def number(v: Any) -> float | int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return v
    m = re.match(rf"\s*~?\s*({_NUM})", _text(v).replace(",", ""))
    if not m:
        return None
    x = float(m.group(1))
    return int(x) if x.is_integer() and not re.search(r"[.eE]", m.group(1)) else x


def as_float(v: Any) -> float | None:
    x = number(v)
    return float(x) if x is not None else None


def as_int(v: Any) -> int | None:
    x = number(v)
    return int(x) if x is not None and float(x).is_integer() and x >= 0 else None


def ratio(v: Any) -> float | None:
    t = _text(v)
    x = number(t)
    if x is None:
        return None
    x = x / 100 if t.rstrip().endswith("%") else float(x)
    return float(x) if 0 <= x <= 1 else None


def length(v: Any) -> int | None:
    m = re.match(r"\s*(\d+(?:\.\d+)?)\s*[kK]\b", _text(v))
    if m:
        return int(float(m.group(1)) * 1024)
    return as_int(v)


def gpus(v: Any) -> int | None:
    """"8xA100(80G)", "8 x H100", "8 GPUs", "8" -> 8."""
    m = re.match(r"\s*(\d+)\s*(?:[x×*]|gpus?\b|\s|$)", _text(v), re.I)
    return int(m.group(1)) if m and int(m.group(1)) > 0 else None


def boolean(v: Any) -> bool | None:
    if isinstance(v, bool):
        return v
    t = _text(v).lower()
    return {"true": True, "yes": True, "on": True, "1": True, "enabled": True,
            "false": False, "no": False, "off": False, "0": False, "disabled": False}.get(t)


def scheduler(v: Any) -> str | None:
    t = _text(v).lower()
    if "constant" in t:
        return "constant_with_warmup" if "warmup" in t else "constant"
    for name in ("cosine", "linear"):
        if name in t:
            return name
    return None


def method(v: Any) -> str | None:
    if isinstance(v, bool):           # peft_model: false -> a full fine-tune
        return "lora" if v else "full"
    t = _text(v).lower()
    if re.search(r"qlora|4[- ]?bit|nf4", t):
        return "qlora"
    if re.search(r"\blora\b|peft|adapter", t):
        return "lora"
    if re.search(r"\bfull\b|full[- ]?(?:fine|parameter)|sft\b", t) or t in ("false", "none"):
        return "full"
    return None


def optimizer(v: Any) -> str | None:
    t = _text(v).lower().replace(" ", "_")
    if "8bit" in t and "paged" in t:
        return "paged_adamw_8bit"
    if "paged" in t:
        return "paged_adamw_32bit"
    if t.startswith("adam"):
        return "adamw_torch"
    return None


def adam_args(v: Any) -> dict[str, float]:
    """"Adam with betas=(0.9,0.999) and epsilon=1e-08" -> beta1, beta2, epsilon."""
    t = _text(v)
    out = {}
    m = re.search(rf"betas?\s*=?\s*\(\s*({_NUM})\s*,\s*({_NUM})\s*\)", t)
    if m:
        out["adam_beta1"], out["adam_beta2"] = float(m.group(1)), float(m.group(2))
    m = re.search(rf"(?:epsilon|eps)\s*=?\s*({_NUM})", t)
    if m:
        out["adam_epsilon"] = float(m.group(1))
    return out


def precision(v: Any) -> str | None:
    t = _text(v).lower()
    if re.search(r"bf16|bfloat16", t):
        return "bf16"
    if re.search(r"fp16|float16|half", t):
        return "fp16"
    if re.search(r"fp32|float32|full precision", t):
        return "fp32"
    return None


def dtype(v: Any) -> str | None:
    return {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(precision(v) or "")


def flag_bf16(v: Any) -> str | None:
    """``bf16: true`` (or axolotl's ``bf16: auto``: bf16 where the GPU has it) -> bf16."""
    return "bf16" if boolean(v) or _text(v).lower() == "auto" else None


def flag_fp16(v: Any) -> str | None:
    return "fp16" if boolean(v) else None


def deepspeed(v: Any) -> str | None:
    if isinstance(v, bool):
        return None
    t = _text(v).lower()
    m = re.search(r"(?:zero|stage)[\s_-]*(?:stage)?[\s_-]*([0-3])\b", t) or re.fullmatch(r"\s*([0-3])\s*", t)
    if not m:
        return None
    return {"2": "zero2", "3": "zero3"}.get(m.group(1))


def rope(v: Any) -> dict | None:
    """{type: linear, factor} (a mapping, or "linear, factor 2" / "linear (x4)"); other kinds are
    not read (the recipe schema has linear scaling only)."""
    if isinstance(v, str):
        m = re.search(rf"linear\D{{0,20}}?({_NUM})", v, re.I)
        return {"type": "linear", "factor": float(m.group(1))} if m and float(m.group(1)) > 1 else None
    if isinstance(v, dict):
        kind = str(v.get("type") or v.get("rope_type") or "").lower()
        factor = v.get("factor", v.get("scale"))
        if kind == "linear" and as_float(factor):
            return {"type": "linear", "factor": as_float(factor)}
    return None


def quant_type(v: Any) -> str | None:
    t = _text(v).lower()
    return t if t in ("nf4", "fp4") else None


def attention(v: Any) -> str | None:
    if isinstance(v, bool) or _text(v).lower() in ("true", "false", "yes", "no"):
        return "flash_attention_2" if boolean(v) else None
    t = _text(v).lower()
    if "flash" in t:
        return "flash_attention_2"
    return t if t in ("sdpa", "eager") else None


def modules(v: Any) -> str | list[str] | None:
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return sorted(v) if v else None
    t = _text(v)
    if re.search(r"all[-_ ]?linear|^true$", t, re.I):
        return "all-linear"
    names = re.findall(r"\b([a-z_]+_proj|query_key_value|dense\w*|c_attn|c_proj|w[123])\b", t)
    return sorted(set(names)) or None


def seed(v: Any) -> int | None:
    t = _text(v)
    if re.fullmatch(r"0x[0-9a-fA-F]+", t):
        return int(t, 16)
    return as_int(v)


def warmup(v: Any) -> tuple[str, float | int] | None:
    """"3%" or 0.03 -> a ratio; 100 -> steps."""
    t = _text(v)
    x = number(t)
    if x is None:
        return None
    if t.endswith("%") or (isinstance(x, float) and x < 1):
        return ("warmup_ratio", x / 100 if t.endswith("%") else x)
    return ("warmup_steps", int(x))


def percent(v: Any) -> float | None:
    x = as_float(v)
    return x / 100 if x is not None else None


def const_linear(v: Any) -> str:
    return "linear"


PARSERS: dict[str, Callable[[Any], Any]] = {
    "float": as_float, "int": as_int, "number": number, "ratio": ratio, "length": length, "gpus": gpus,
    "bool": boolean, "scheduler": scheduler, "method": method, "optimizer": optimizer,
    "precision": precision, "dtype": dtype, "flag_bf16": flag_bf16, "flag_fp16": flag_fp16,
    "deepspeed": deepspeed, "rope": rope, "quant_type": quant_type, "attention": attention,
    "modules": modules, "seed": seed, "warmup": warmup, "float_percent": percent, "const_linear": const_linear,
}
