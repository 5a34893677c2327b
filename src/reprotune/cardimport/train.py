"""A card's training facts -> the adapter's ``train`` block (values, where each came from, what
was inferred, what is left as a TODO)."""
from __future__ import annotations

import re
from typing import Any

from .facts import Fact

ORDER = ["method", "lora", "quantization", "learning_rate", "lr_scheduler", "warmup_ratio", "warmup_steps",
         "epochs", "max_steps", "per_device_batch_size", "gradient_accumulation_steps", "num_gpus", "max_length",
         "optimizer", "adam_beta1", "adam_beta2", "adam_epsilon", "weight_decay", "max_grad_norm", "precision",
         "seed", "gradient_checkpointing", "attn_implementation", "deepspeed", "rope_scaling", "packing",
         "save_steps"]
PLAIN = ["learning_rate", "lr_scheduler", "warmup_ratio", "warmup_steps", "epochs", "max_steps", "max_length",
         "optimizer", "adam_beta1", "adam_beta2", "adam_epsilon", "weight_decay", "max_grad_norm", "seed",
         "gradient_checkpointing", "attn_implementation", "deepspeed", "packing", "save_steps"]
REQUIRED = {"learning_rate": "What learning rate was used?",
            "max_length": "What maximum sequence length (tokens) was used in training?"}


class Block:
    """The train block being drafted: values by key path, their source, notes and TODOs."""

    def __init__(self, facts: list[Fact]):
        self.best: dict[str, Fact] = {}
        self.values: dict[str, Any] = {}
        self.where: dict[str, str] = {}
        self.notes: list[str] = []
        self.todos: dict[str, str] = {}
        for f in sorted(facts, key=lambda f: f.rank):
            if f.setting not in self.best:
                self.best[f.setting] = f
            elif f.value != self.best[f.setting].value and f.kind != "mention":
                b = self.best[f.setting]
                self.notes.append(f"Contradiction: {f.setting} is {b.value!r} in {b.where} but {f.value!r} in "
                                  f"{f.where}; the draft keeps {b.value!r}.")

    def get(self, setting: str):
        f = self.best.get(setting)
        return f.value if f else None

    def take(self, key: str, setting: str | None = None) -> bool:
        f = self.best.get(setting or key)
        if f is None:
            return False
        self.values[key], self.where[key] = f.value, f.where
        return True

    def infer(self, key: str, value: Any, why: str, where: str = "inferred") -> None:
        self.values[key], self.where[key] = value, where
        self.notes.append(why)

    def todo(self, key: str, question: str) -> None:
        self.values[key] = f"TODO: {question}"
        self.todos[key] = question


def _method(t: Block, library: str | None) -> str | None:
    stated = [f for f in t.best.values() if f.setting == "method" and f.kind != "mention"]
    if stated:
        t.take("method")
        return t.values["method"]
    if t.get("quantization.load_in_4bit"):
        t.values["method"], t.where["method"] = "qlora", t.best["quantization.load_in_4bit"].where
        return "qlora"
    mention = t.best.get("method")
    if mention is not None or t.get("lora.r") is not None or library == "peft":
        method = mention.value if mention else "lora"
        t.infer("method", method, f"train.method {method} is inferred from "
                                  f"{mention.where if mention else 'the LoRA settings / library_name peft'}.",
                mention.where if mention else "inferred")
        return method
    t.infer("method", "full", "The card mentions no LoRA, QLoRA or PEFT adapter: a full fine-tune is assumed.")
    return "full"


def _adapter_settings(t: Block, method: str) -> None:
    if method not in ("lora", "qlora"):
        return
    for key, q in (("lora.r", "What LoRA rank (r) was used?"), ("lora.alpha", "What LoRA alpha was used?")):
        if not t.take(key):
            t.todo(key, q)
    t.take("lora.dropout")
    t.take("lora.target_modules")
    if method == "qlora":
        found = [k for k in ("quantization.quant_type", "quantization.double_quant", "quantization.compute_dtype")
                 if t.take(k)]
        stated = t.best.get("method")
        if "quantization.quant_type" not in found and stated and "nf4" in str(stated.raw).lower():
            t.values["quantization.quant_type"] = "nf4"
            t.where["quantization.quant_type"] = stated.where
            found.append("quantization.quant_type")
        if len(found) < 3:
            t.values.setdefault("quantization", {})
            t.notes.append("Quantization settings the card does not give take reprotune's QLoRA defaults "
                           "(nf4, double quantization, bfloat16 compute).")


def _precision(t: Block) -> None:
    if not t.take("precision"):
        for flag in ("bf16", "fp16"):
            if t.take("precision", flag):
                return


def _rope(t: Block) -> None:
    if t.take("rope_scaling"):
        return
    factor = t.best.get("rope_scaling.factor")
    if t.best.get("rope_linear") and factor:
        t.values["rope_scaling"] = {"type": "linear", "factor": factor.value}
        t.where["rope_scaling"] = f"{t.best['rope_linear'].where}; factor: {factor.where}"
    elif t.best.get("rope_linear"):
        t.todo("rope_scaling", "The card uses linear RoPE scaling: by what factor?")


def resolve(facts: list[Fact], library: str | None) -> Block:
    t = Block(facts)
    method = _method(t, library)
    _adapter_settings(t, method)
    for key in PLAIN:
        t.take(key)
    for key, q in REQUIRED.items():
        if key not in t.values:
            t.todo(key, q)
    _precision(t)
    _rope(t)
    batch(t)
    return t


def _total(t: Block):
    return t.get("total_batch_size")


def batch(t: Block) -> None:
    """Per-device batch, accumulation and GPUs from what the card gives (total, or an ambiguous
    "batch size"); every inference is a note, a disagreement a contradiction."""
    p, g, n, total, b = (t.get(k) for k in ("per_device_batch_size", "gradient_accumulation_steps", "num_gpus",
                                             "total_batch_size", "batch_size"))
    for key in ("per_device_batch_size", "gradient_accumulation_steps", "num_gpus"):
        t.take(key)
    wording = str(t.best["batch_size"].raw).lower() if b is not None else ""
    if b is not None and p is None and re.search(r"per[ -]?(?:device|gpu)|/\s*gpu", wording):
        p = b
        t.values["per_device_batch_size"], t.where["per_device_batch_size"] = b, t.best["batch_size"].where
    elif b is not None and total is None and re.search(r"total|global|effective", wording):
        total = b
    if b is not None and p is None and total is None:
        if n and n > 1 and b % n == 0:
            total = b
            t.notes.append(f"The card's batch size {b} ({t.best['batch_size'].where}) divides by its {n} GPUs: "
                           "it is read as the total batch.")
        else:
            p = b
            t.infer("per_device_batch_size", b, f"The card's batch size {b} is read as the per-device batch"
                    + (f" (it does not divide by {n} GPUs)" if n else "") + ".", t.best["batch_size"].where)
    elif b is not None and total is None:
        total = b
    if p is None and total is not None:
        _split_total(t, total, g, n)
    elif p is not None and total is not None:
        _check_total(t, p, g, n, total)
    elif p is None:
        t.todo("per_device_batch_size", "What per-device batch size was used (and how many GPUs / accumulation steps)?")
    if "num_gpus" not in t.values and "per_device_batch_size" in t.values and not str(t.values["per_device_batch_size"]).startswith("TODO"):
        t.todo("num_gpus", "How many GPUs was it trained on (the card does not say)?")


def _split_total(t: Block, total: int, g: int | None, n: int | None) -> None:
    if not n:
        n = 8
        t.infer("num_gpus", 8, f"The card gives a total batch of {total} but no GPU count: 8 GPUs are assumed.")
    if g and total % (n * g) == 0:
        t.infer("per_device_batch_size", total // (n * g), f"per-device batch {total // (n * g)} = total {total} / "
                f"({n} GPUs x {g} accumulation steps).")
    elif total % n == 0:
        t.infer("per_device_batch_size", 1, f"The card gives a total batch of {total} without its split: "
                f"{n} GPUs x 1 per device x {total // n} accumulation steps is assumed.")
        t.infer("gradient_accumulation_steps", total // n, "(gradient accumulation: see the batch note)")
        t.notes.pop()
    else:
        t.todo("per_device_batch_size", f"The card gives a total batch of {total}: what per-device batch and "
                                        "accumulation make it up?")


def _check_total(t: Block, p: int, g: int | None, n: int | None, total: int) -> None:
    if g is None and n:
        if total % (p * n) == 0:
            t.infer("gradient_accumulation_steps", total // (p * n), f"gradient accumulation {total // (p * n)} = "
                    f"total batch {total} / ({p} per device x {n} GPUs).")
        return
    if n is None and g is not None and total % (p * g) == 0:
        t.infer("num_gpus", total // (p * g), f"num_gpus {total // (p * g)} = total batch {total} / "
                f"({p} per device x {g} accumulation steps).")
        return
    if n is not None and g is not None and p * g * n != total:
        t.notes.append(f"Contradiction: the total batch {total} is not {p} per device x {g} accumulation x "
                       f"{n} GPUs = {p * g * n}; the draft keeps the per-device values.")


def nested(t: Block) -> tuple[dict, dict]:
    """The train block as a nested mapping in schema order, and the matching where-map."""
    out: dict[str, Any] = {}
    where: dict[tuple, str] = {}
    for key in sorted(t.values, key=lambda k: ORDER.index(k.split(".")[0]) if k.split(".")[0] in ORDER else 99):
        head, _, sub = key.partition(".")
        if sub:
            out.setdefault(head, {})
            if isinstance(out[head], dict):
                out[head][sub] = t.values[key]
        else:
            out[head] = t.values[key] if not isinstance(t.values[key], dict) else {**t.values[key], **out.get(head, {})}
        if key in t.where:
            where[tuple(key.split("."))] = t.where[key]
    return out, where
