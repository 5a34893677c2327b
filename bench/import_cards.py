"""How much of a model card ``reprotune import-card`` recovers: drafts vs hand-written recipes.

    python bench/import_cards.py CARDS_DIR RECIPES_DIR [--json OUT]

A measurement, not a test: it always exits 0 (2 only for wrong arguments).

Every ``*.md`` card in CARDS_DIR is drafted with ``reprotune.cardimport.draft(text, recipe_id)``
and compared with the hand-written recipe it belongs to in RECIPES_DIR (``yaml.safe_load`` +
``reprotune.recipe.apply_defaults``). Pairing: card stem, recipe ``id`` and the name part of the
recipe's ``card.original`` are lowercased and stripped of non-alphanumerics; a recipe matches
when one of its names is contained in the stem or contains it, and the longest such name wins.
A card with no recipe is reported and skipped.

Items per card, each recovered or not:

* base model -- draft ``base_model.id`` == hand ``base_model.id``;
* datasets -- each distinct hand source ``repo`` is among the draft sources' repos (extra
  draft datasets are listed, not counted);
* license -- draft ``card.license`` == hand ``card.license``;
* prompt format -- per distinct hand template: the draft adapter ``main``'s template renders
  the same bytes (``render`` and ``render_prompt``, eos ``</s>``) on the ``PROBES`` records; a
  probe the hand template refuses is skipped for both; a TODO template is not recovered;
* hyperparameters -- the keys ``HYPER_KEYS`` of each hand adapter's train block (plus
  ``total_batch_size`` = per-device batch x accumulation x max(num_gpus, 1)) that are
  *card-stated*, compared with the draft adapter ``main``'s train block (numbers with a
  relative tolerance of 1e-9; a TODO or a missing key is not recovered).

How card-stated is decided (``card_stated``), on the card text with whitespace collapsed and
case ignored: a hand value is card-stated when one of its textual forms occurs after a mention
of the key -- one of the key's ``SYNONYMS`` -- within ``WINDOW`` characters and before the next
mention of any *other* key (so in ``rank: 64, alpha: 16`` the 16 belongs to alpha, not to the
rank). Mentions are found longest first: ``lr_scheduler_warmup_ratio`` is a warmup-ratio
mention, not an ``lr`` one, and the ``UNRELATED`` phrases (``per_device_eval_batch_size``,
``torch_dtype``...) are mentions of no key. Synonyms of one or two letters (``r``, ``lr``)
count only as ``key:``, ``key=`` or a table cell ``key |``. Value forms: a number is any
number written in the window that equals it (``1e-4``, ``1.0e-04``, ``0.0001``; ``3`` vs
``3.0``; ``3%`` is also 0.03); a boolean the first of the ``BOOL_FORMS`` words in the window; a
string its own spelling (``_``/``-``/space interchangeable) or one of ``VALUE_FORMS``
(``ZeRO stage 3`` for zero3, ``bfloat16`` for bf16, ``AdamW`` for adamw_torch...), unless that
form lies inside a longer form of another value (``adamw`` in ``paged_adamw_32bit``). Some
forms name the setting themselves and count anywhere in the card without a synonym
(``STANDALONE``: ``8x A100`` -> 8 GPUs, ``3 epochs``, ``QLoRA``, ``load_in_4bit: True``,
``peft_model: false`` -> full, ``NF4``, ``ZeRO-2``).
These tables are data at the top of the file, written for cards in general, not for the seeds.

Target (issue #15): every base model, dataset, license and prompt format recovered, and >= 90%
of the card-stated hyperparameters across all cards.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from reprotune import templates  # noqa: E402
from reprotune.recipe import apply_defaults  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Data: what the comparison looks for.  Phrases are lowercase words; between two words any
# 0-5 non-alphanumeric characters may stand ("lora rank" matches "LoRA_Rank", "lora-rank",
# "lorarank"); a phrase ending in "*" is a prefix ("full fine tun*" matches "full fine-tuning").
# ---------------------------------------------------------------------------------------------
WINDOW = 100
TARGET_SHARE = 0.9
EOS = "</s>"
TOTAL = "total_batch_size"

HYPER_KEYS = (
    "method", "lora.r", "lora.alpha", "lora.dropout", "quantization.quant_type",
    "quantization.double_quant", "quantization.compute_dtype", "learning_rate", "lr_scheduler",
    "warmup_ratio", "warmup_steps", "epochs", "per_device_batch_size", "gradient_accumulation_steps",
    "num_gpus", "max_length", "optimizer", "adam_beta1", "adam_beta2", "adam_epsilon", "weight_decay",
    "precision", "deepspeed", "rope_scaling.factor", "save_steps", "gradient_checkpointing",
    "attn_implementation", TOTAL,
)

SYNONYMS = {
    "method": ("finetune type", "finetuning type", "fine tune type", "fine tuning type", "training method",
               "finetuning method", "fine tuning method", "training type", "method", "peft", "adapter type"),
    "lora.r": ("lora r", "lora rank", "lora dim", "lora dimension", "rank", "r"),
    "lora.alpha": ("lora alpha", "alpha"),
    "lora.dropout": ("lora dropout", "dropout"),
    "quantization.quant_type": ("quant type", "bnb 4bit quant type", "quantization type", "quantization",
                                "quantisation"),
    "quantization.double_quant": ("double quant", "use double quant", "bnb 4bit use double quant",
                                  "double quantization", "nested quantization"),
    "quantization.compute_dtype": ("compute dtype", "bnb 4bit compute dtype", "compute type"),
    "learning_rate": ("learning rate", "lr", "peak learning rate", "max learning rate", "peak lr", "max lr"),
    "lr_scheduler": ("lr scheduler", "lr scheduler type", "scheduler", "scheduler type", "lr schedule",
                     "learning rate scheduler", "learning rate schedule", "schedule", "lr decay"),
    "warmup_ratio": ("warmup ratio", "warm up ratio", "lr scheduler warmup ratio", "warmup"),
    "warmup_steps": ("warmup steps", "warm up steps", "num warmup steps", "lr scheduler warmup steps",
                     "warmup"),
    "epochs": ("epochs", "epoch", "num epochs", "num train epochs", "number of epochs", "training epochs"),
    "per_device_batch_size": ("per device train batch size", "per device batch size", "micro batch size",
                              "train micro batch size per gpu", "batch size per device", "batch size per gpu",
                              "per gpu batch size", "per gpu train batch size", "train batch size",
                              "batch size"),
    "gradient_accumulation_steps": ("gradient accumulation steps", "gradient accumulation step",
                                    "gradient accumulation", "grad accum", "grad accumulation",
                                    "accumulation steps", "accumulate grad batches"),
    "num_gpus": ("num gpus", "number of gpus", "n gpus", "gpus", "gpu", "num devices", "nproc per node",
                 "num processes",
                 "world size", "hardware", "devices"),
    "max_length": ("max length", "max len", "max seq length", "max seq len", "max sequence length",
                   "maximum sequence length", "sequence length", "seq len", "context length", "context size",
                   "context window", "model max length", "cutoff len"),
    "optimizer": ("optimizer", "optimiser", "optim"),
    "adam_beta1": ("adam beta1", "beta1", "beta 1", "betas", "adam betas"),
    "adam_beta2": ("adam beta2", "beta2", "beta 2", "betas", "adam betas"),
    "adam_epsilon": ("adam epsilon", "adam eps", "epsilon", "eps"),
    "weight_decay": ("weight decay", "wd"),
    "precision": ("precision", "mixed precision", "training precision", "dtype", "data type", "datatype"),
    "deepspeed": ("deepspeed", "deepspeed config", "deepspeed stage", "ds config", "zero optimization"),
    "rope_scaling.factor": ("rope scaling", "rope scaling factor", "rope scale", "rope factor",
                            "scaling factor", "superhot config", "factor"),
    "save_steps": ("save steps", "save every", "save interval", "checkpoint every", "checkpointing steps"),
    "gradient_checkpointing": ("gradient checkpointing", "use gradient checkpointing",
                               "activation checkpointing"),
    "attn_implementation": ("attn implementation", "attention implementation", "attention"),
    TOTAL: ("total train batch size", "total batch size", "global batch size", "effective batch size",
            "batch size"),
}

# mentions of no key: they hide the shorter synonyms inside them and end a key's window
UNRELATED = ("per device eval batch size", "eval batch size", "eval steps", "logging steps", "total steps",
             "save total limit", "max new tokens", "generate len", "residual dropout", "attention dropout",
             "hidden dropout", "torch dtype", "load in 8bit", "llm int8 threshold", "llm int8 has fp16 weight")

BOOL_FORMS = {True: ("true", "yes", "enabled", "on"), False: ("false", "no", "disabled", "off", "none")}

# string value -> forms (besides its own spelling), after a mention of the key; a form inside a
# longer form of another value of the key does not count ("adamw" in "paged_adamw_32bit")
VALUE_FORMS = {
    "method": {"qlora": ("q lora",), "full": ("full*",)},
    "quantization.compute_dtype": {"bfloat16": ("bf16",), "float16": ("fp16", "half"), "float32": ("fp32",)},
    "lr_scheduler": {"cosine": ("cosine*",), "linear": ("linear*",), "constant_with_warmup": ("constant*",),
                     "cosine_with_restarts": (), "polynomial": (), "inverse_sqrt": ()},
    "optimizer": {"adamw_torch": ("adamw", "adam w", "adam", "adamw torch*"), "paged_adamw_32bit": ("paged adamw",),
                  "paged_adamw_8bit": ("paged adamw 8 bit",),
                  # no recipe value: their spellings only keep "adamw" inside them from counting as adamw_torch
                  "adamw_bnb_8bit": ("adamw 8bit", "adamw 8 bit", "8bit adam*", "adam8bit"),
                  "sgd": (), "adafactor": (), "lion": ("lion*",)},
    "precision": {"bf16": ("bfloat16", "bfloat 16", "brain float*"), "fp16": ("float16", "fp 16", "half*"),
                  "fp32": ("float32", "fp 32", "full precision")},
    "deepspeed": {"zero2": ("zero 2", "zero stage 2", "stage 2"), "zero3": ("zero 3", "zero stage 3", "stage 3")},
    "attn_implementation": {"flash_attention_2": ("flash attention*", "flash attn*", "flashattention*"),
                            "sdpa": ("scaled dot product*",)},
}

GPU_NAMES = ("gpu*", "nvidia*", "a100*", "h100*", "h800*", "a800*", "v100*", "a6000*", "a40*", "a10g*",
             "l40*", "rtx*", "3090*", "4090*", "tpu*")

# forms that name the setting themselves and count anywhere in the card; "*" = any value, {v} = it
STANDALONE = {
    "method": {"qlora": ("qlora", "q lora", "load in 4bit true", "use qlora"), "lora": ("lora", "use lora true"),
               "full": ("full fine tun*", "full finetun*", "full parameter*", "full weight*", "peft model false")},
    "quantization.quant_type": {"nf4": ("nf4",), "fp4": ("bnb 4bit quant type fp4",)},
    "num_gpus": {"*": tuple(f"{{v}} {g}" for g in GPU_NAMES) + tuple(f"{{v}} x {g}" for g in GPU_NAMES)},
    "epochs": {"*": ("{v} epoch*",)},
    "lr_scheduler": {v: (f"{v} schedul*", f"{v} decay*", f"{v} learning rate*", f"{v} lr*")
                     for v in ("cosine", "linear", "constant")},
    "precision": {"bf16": ("bf16 true",), "fp16": ("fp16 true",)},
    "deepspeed": {"zero2": ("zero 2", "zero stage 2"), "zero3": ("zero 3", "zero stage 3")},
    "attn_implementation": {"flash_attention_2": ("flash attention*", "flash attn*", "flashattention*",
                                                  "use flash attention true")},
}

SYSTEM = "You are a helpful assistant."
PROBES = {
    "system+user+assistant": {"system": SYSTEM, "messages": [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."}]},
    "no system": {"system": "", "messages": [
        {"role": "user", "content": "Name a prime number."}, {"role": "assistant", "content": "Seven."}]},
    "two turns": {"system": SYSTEM, "messages": [
        {"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "How are you?"}, {"role": "assistant", "content": "Fine, thanks."}]},
    # the record's input: a template with an Input block gets it as the first user message's "input"
    "input": {"system": SYSTEM, "input": "The quick brown fox jumps over the lazy dog.", "messages": [
        {"role": "user", "content": "Count the words of the input."}, {"role": "assistant", "content": "Nine."}]},
}

# ---------------------------------------------------------------------------------------------
# Card-stated detection
# ---------------------------------------------------------------------------------------------
GAP = r"[^a-z0-9]{0,5}"
NUMBER = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+(?![\d.])|\d+\.?\d*(?:e[-+]?\d+)?|\.\d+(?:e[-+]?\d+)?)(\s*%)?")


@lru_cache(maxsize=None)
def phrase_re(phrase: str, short_needs_sep: bool = False) -> re.Pattern:
    """A phrase (see the data section) as a regex on normalised text. With ``short_needs_sep``, a
    phrase of one or two letters must be followed by ``:``, ``=`` or ``|``."""
    prefix = phrase.endswith("*")
    words = re.findall(r"[a-z0-9]+", phrase.lower())
    body = GAP.join(re.escape(w) for w in words)
    tail = "" if prefix else "(?![a-z0-9])"
    if short_needs_sep and len(phrase) < 3:
        tail += r"(?=\s*[:=|])"
    return re.compile(r"(?<![a-z0-9])" + body + tail)


def normalise_text(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def numbers_in(text: str) -> list[float]:
    """Every number written in ``text`` (``1e-4``, ``0.0001``, ``1,000``; ``3%`` also as 0.03)."""
    out = []
    for m in NUMBER.finditer(text.lower()):
        try:
            v = float(m.group(1).replace(",", ""))
        except ValueError:
            continue
        out += [v, v / 100] if m.group(2) else [v]
    return out


def same_number(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return False
    return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-9)


class Mention(NamedTuple):
    start: int
    end: int
    keys: frozenset


def find_mentions(text: str) -> list[Mention]:
    """Key mentions in normalised ``text``, longest first: a span inside a longer one is dropped;
    one span that is a synonym of several keys (``batch size``) names them all."""
    spans: dict[tuple[int, int], set] = {}
    phrases = [(p, k) for k, ps in SYNONYMS.items() for p in ps] + [(p, None) for p in UNRELATED]
    for phrase, key in phrases:
        for m in phrase_re(phrase, True).finditer(text):
            spans.setdefault((m.start(), m.end()), set()).update([key] if key else [])
    kept: list[Mention] = []
    reach = -1   # the furthest end of a kept span: spans run by start, longest first
    for (s, e) in sorted(spans, key=lambda se: (se[0], -se[1])):
        if e <= reach:
            continue   # inside a longer span that starts no later
        kept.append(Mention(s, e, frozenset(spans[(s, e)])))
        reach = e
    return kept


class Card(NamedTuple):
    """A card's normalised text and its key mentions (``read_card``)."""
    text: str
    mentions: tuple


def read_card(raw: str) -> Card:
    text = normalise_text(raw)
    return Card(text, tuple(find_mentions(text)))


def value_forms(key: str, value: Any) -> list[str]:
    return [str(value)] + list(VALUE_FORMS.get(key, {}).get(value, ()))


def value_in(window: str, key: str, value: Any) -> bool:
    """Whether ``window`` writes ``value``: a number in any notation; for a boolean the first
    boolean word; for a string one of its forms, not inside a longer form of another value."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return any(same_number(n, value) for n in numbers_in(window))
    if isinstance(value, bool):
        return first_bool(window) is value
    others = [f for v, forms in VALUE_FORMS.get(key, {}).items() if v != value for f in (v, *forms)]
    return any(not shadowed(window, m, others)
               for form in value_forms(key, value) for m in phrase_re(form).finditer(window))


def first_bool(window: str) -> bool | None:
    hits = [(m.start(), v) for v, forms in BOOL_FORMS.items() for f in forms for m in phrase_re(f).finditer(window)]
    return min(hits)[1] if hits else None


def shadowed(window: str, m: re.Match, other_forms: list[str]) -> bool:
    """Whether match ``m`` lies inside a longer match of one of ``other_forms``."""
    for form in other_forms:
        for o in phrase_re(form).finditer(window):
            if o.start() <= m.start() and m.end() <= o.end() and o.end() - o.start() > m.end() - m.start():
                return True
    return False


def standalone_forms(key: str, value: Any) -> list[str]:
    table = STANDALONE.get(key, {})
    v = str(int(value)) if isinstance(value, (int, float)) and float(value).is_integer() else str(value)
    forms = list(table.get(value, ())) if not isinstance(value, (dict, list)) else []
    return forms + [f.replace("{v}", v) for f in table.get("*", ())]


def card_stated(card: Card, key: str, value: Any) -> str | None:
    """Where ``card`` states ``key`` = ``value`` (a snippet of the card), None where it does not."""
    for form in standalone_forms(key, value):
        m = phrase_re(form).search(card.text)
        if m:
            return card.text[max(m.start() - 20, 0):m.end() + 20]
    mentions = card.mentions
    for i, m in enumerate(mentions):
        if key not in m.keys:
            continue
        stop = m.end + WINDOW
        for later in mentions[i + 1:]:
            if later.start >= stop:
                break
            if later.start >= m.end and key not in later.keys:
                stop = later.start
                break
        if value_in(card.text[m.end:stop], key, value):
            return card.text[m.start:stop]
    return None


# ---------------------------------------------------------------------------------------------
# Recipes: loading and pairing
# ---------------------------------------------------------------------------------------------
def mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def norm_name(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(s).lower())


def recipe_names(recipe: dict) -> list[str]:
    original = mapping(recipe.get("card")).get("original") or ""
    return [n for n in (norm_name(recipe.get("id", "")), norm_name(original.rstrip("/").split("/")[-1])) if n]


def pair(stem: str, recipes: dict[str, dict]) -> str | None:
    """The id of the recipe for card file stem ``stem`` (longest contained/containing name), or None."""
    s = norm_name(stem)
    best: tuple[int, str] | None = None
    for rid in sorted(recipes):
        for name in recipe_names(recipes[rid]):
            if name in s or s in name:
                score = min(len(name), len(s))
                if best is None or score > best[0]:
                    best = (score, rid)
    return best[1] if best else None


def load_recipe(path: Path) -> dict:
    """A hand recipe: ``defaults.train`` merged into each adapter; templates resolved (paths read)."""
    data = apply_defaults(yaml.safe_load(path.read_text(encoding="utf-8")))
    for ad in mapping(data.get("adapters")).values():
        if isinstance(ad, dict) and "template" in ad:
            ad["template"] = templates.resolve(ad["template"], path.parent)
    return data


def load_recipes(recipes_dir: Path) -> dict[str, dict]:
    out = {}
    for path in sorted([*recipes_dir.glob("*.yaml"), *recipes_dir.glob("*.yml")]):
        try:
            data = load_recipe(path)
        except Exception as e:  # a broken recipe is reported, the others still pair
            print(f"skipping recipe {path.name}: {e}", file=sys.stderr)
            continue
        if isinstance(data, dict) and data.get("id"):
            out[data["id"]] = data
    return out


# ---------------------------------------------------------------------------------------------
# Comparisons
# ---------------------------------------------------------------------------------------------
def is_todo(value: Any) -> bool:
    return isinstance(value, str) and value.strip().upper().startswith("TODO")


def same_value(expected: Any, got: Any) -> bool:
    if got is None or is_todo(got):
        return False
    if isinstance(expected, bool) or isinstance(got, bool):
        return isinstance(got, bool) and isinstance(expected, bool) and got == expected
    if isinstance(expected, (int, float)):
        return same_number(got, expected)
    return got == expected


def dig(tree: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


@lru_cache(maxsize=None)
def schema_default(key: str) -> Any:
    schema = yaml.safe_load((ROOT / "schemas" / "recipe.schema.yaml").read_text(encoding="utf-8"))
    return schema["$defs"]["train_settings"]["properties"].get(key, {}).get("default")


def total_batch(train: dict) -> int | None:
    """per-device batch x accumulation x max(num_gpus, 1); a factor left out takes its schema default."""
    factors = [train.get(k, schema_default(k)) for k in ("per_device_batch_size", "gradient_accumulation_steps",
                                                         "num_gpus")]
    if not all(isinstance(f, int) and not isinstance(f, bool) for f in factors):
        return None
    return factors[0] * factors[1] * max(factors[2], 1)


def train_value(train: Any, key: str) -> Any:
    if key == TOTAL:
        return total_batch(train) if isinstance(train, dict) else None
    return dig(train, key)


def hyper_expectations(hand: dict, card: Card) -> list[dict]:
    """The card-stated (key, hand value) pairs over every hand adapter, each once."""
    seen, out = set(), []
    for ad in (hand.get("adapters") or {}).values():
        train = ad.get("train") or {}
        for key in HYPER_KEYS:
            value = train_value(train, key)
            if value is None or isinstance(value, (dict, list)) or (key, repr(value)) in seen:
                continue
            seen.add((key, repr(value)))
            evidence = card_stated(card, key, value)
            if evidence is not None:
                out.append({"key": key, "expected": value, "evidence": evidence})
    return out


def renderings(template: templates.Template, record: dict) -> dict[str, str | None]:
    """``render`` and ``render_prompt`` of ``record``; None for one the template refuses."""
    out: dict[str, str | None] = {}
    for name in ("render", "render_prompt"):
        try:
            out[name] = getattr(template, name)(record, eos=EOS)
        except Exception:
            out[name] = None
    return out


def compare_template(hand_spec: Any, draft_spec: Any) -> tuple[bool, str]:
    """Whether the draft's template renders the hand template's bytes (``render`` and
    ``render_prompt``) on every PROBES record; a rendering the hand template refuses (a
    single-turn format given two turns) is skipped for both. Returns (ok, why not)."""
    if draft_spec is None or is_todo(draft_spec):
        return False, "draft template is a TODO" if draft_spec else "draft has no template"
    hand = templates.get(hand_spec)
    try:
        draft = templates.get(draft_spec)
    except Exception as e:
        return False, f"draft template unusable: {e}"
    compared = 0
    for probe, record in PROBES.items():
        want, got = renderings(hand, record), renderings(draft, record)
        for name, text in want.items():
            if text is None:
                continue
            if got[name] != text:
                return False, f"probe '{probe}' {name}: expected {text!r}, draft {got[name]!r}"
            compared += 1
    return compared > 0, "" if compared else "the hand template renders no probe"


def template_label(spec: Any) -> str:
    return spec if isinstance(spec, str) else f"{spec.get('name')} (own template)"


# ---------------------------------------------------------------------------------------------
# One card
# ---------------------------------------------------------------------------------------------
def check_identity(hand: dict, got: dict) -> dict:
    """Base model, datasets and license."""
    hand_repos = list(dict.fromkeys(s.get("repo") for s in mapping(hand.get("sources")).values()))
    draft_repos = [s.get("repo") for s in mapping(got.get("sources")).values() if isinstance(s, dict)]
    return {
        "base": item("base_model.id", dig(hand, "base_model.id"), dig(got, "base_model.id")),
        "datasets": [item(f"dataset {r}", r, r if r in draft_repos else None) for r in hand_repos],
        "extra_datasets": [r for r in draft_repos if r not in hand_repos],
        "license": item("card.license", dig(hand, "card.license"), dig(got, "card.license")),
    }


def item(what: str, expected: Any, got: Any, detail: str = "") -> dict:
    return {"item": what, "expected": expected, "draft": got, "ok": same_value(expected, got), "detail": detail}


def check_prompts(hand: dict, got: dict) -> list[dict]:
    specs = []
    for ad in (hand.get("adapters") or {}).values():
        if ad.get("template") is not None and ad["template"] not in specs:
            specs.append(ad["template"])
    draft_spec = dig(got, "adapters.main.template")
    draft_label = template_label(draft_spec) if isinstance(draft_spec, (str, dict)) else draft_spec
    out = []
    for spec in specs:
        ok, why = compare_template(spec, draft_spec)
        label = template_label(spec)
        out.append({"item": f"template {label}", "expected": label, "draft": draft_label, "ok": ok, "detail": why})
    return out


def check_hyper(hand: dict, got: dict, card: Card) -> list[dict]:
    train = mapping(dig(got, "adapters.main.train"))
    out = []
    for exp in hyper_expectations(hand, card):
        value = train_value(train, exp["key"])
        out.append(item(exp["key"], exp["expected"], value, f"card: ...{exp['evidence']}..."))
    return out


def run_draft(draft_fn: Any, text: str, recipe_id: str) -> tuple[Any, str | None]:
    if isinstance(draft_fn, str):
        return None, draft_fn
    try:
        return draft_fn(text, recipe_id), None
    except Exception as e:
        return None, f"draft() raised {type(e).__name__}: {e}"


def bench_card(path: Path, hand: dict, draft_fn: Any) -> dict:
    text = path.read_text(encoding="utf-8", errors="replace")
    d, error = run_draft(draft_fn, text, hand["id"])
    got = mapping(getattr(d, "recipe", None))
    result = {"card": path.name, "recipe": hand["id"], "error": error}
    result.update(check_identity(hand, got))
    result["prompt_format"] = check_prompts(hand, got)
    result["hyperparameters"] = check_hyper(hand, got, read_card(text))
    result["todos"] = [list(t) if isinstance(t, (list, tuple)) else [t] for t in getattr(d, "todos", None) or []]
    result["notes"] = list(getattr(d, "notes", None) or [])
    return result


def load_importer() -> Any:
    """``reprotune.cardimport.draft``, or the reason it cannot be used (a string)."""
    try:
        from reprotune.cardimport import draft
    except Exception as e:
        return f"importer not importable: {type(e).__name__}: {e}"
    return draft


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def count(items: list[dict]) -> tuple[int, int]:
    return sum(1 for i in items if i["ok"]), len(items)


def all_items(r: dict) -> list[dict]:
    return [r["base"], *r["datasets"], r["license"], *r["prompt_format"], *r["hyperparameters"]]


def summarise(results: list[dict], skipped: list[str]) -> dict:
    sums = {}
    for part in ("base", "datasets", "license", "prompt_format", "hyperparameters"):
        items = [i for r in results for i in (r[part] if isinstance(r[part], list) else [r[part]])]
        sums[part] = dict(zip(("recovered", "total"), count(items)))
    h = sums["hyperparameters"]
    share = h["recovered"] / h["total"] if h["total"] else 1.0
    identity_ok = all(sums[p]["recovered"] == sums[p]["total"] for p in ("base", "datasets", "license",
                                                                         "prompt_format"))
    return {"cards": len(results), "skipped_cards": skipped, **sums, "hyperparameter_share": share,
            "target_met": bool(results) and identity_ok and share >= TARGET_SHARE}


def frac(items: list[dict]) -> str:
    k, n = count(items)
    return f"{k}/{n}"


def table_row(r: dict) -> list[str]:
    k, n = count(r["hyperparameters"])
    pct = f"{100 * k / n:.0f}%" if n else "-"
    return [r["card"], "ok" if r["base"]["ok"] else "MISS", frac(r["datasets"]),
            "ok" if r["license"]["ok"] else "MISS", frac(r["prompt_format"]), f"{k}/{n} ({pct})",
            str(len(r["todos"])), str(len(r["notes"]))]


def print_table(results: list[dict]) -> None:
    head = ["card", "base", "datasets", "license", "prompt format", "hyperparameters", "TODOs", "notes"]
    rows = [head] + [table_row(r) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def print_details(r: dict) -> None:
    print(f"\n## {r['card']} -> {r['recipe']}")
    if r["error"]:
        print(f"  error: {r['error']}")
    for i in all_items(r):
        if not i["ok"]:
            detail = f"  [{i['detail']}]" if i["detail"] else ""
            print(f"  MISS {i['item']}: expected {i['expected']!r}, draft {i['draft']!r}{detail}")
    if r["extra_datasets"]:
        print(f"  extra draft datasets: {', '.join(map(str, r['extra_datasets']))}")
    print(f"  TODOs ({len(r['todos'])}): {', '.join(str(t[0]) for t in r['todos']) or '-'}")
    for note in r["notes"]:
        print(f"  note: {note}")


def print_report(results: list[dict], summary: dict) -> None:
    print_table(results)
    for name in summary["skipped_cards"]:
        print(f"(no recipe for {name}: skipped)")
    for r in results:
        print_details(r)
    s = summary
    parts = [f"{p.replace('_', ' ')} {s[p]['recovered']}/{s[p]['total']}" for p in
             ("base", "datasets", "license", "prompt_format", "hyperparameters")]
    print(f"\nTOTAL  {len(results)} cards  {'  '.join(parts)} ({100 * s['hyperparameter_share']:.1f}%)  "
          f"target {'met' if s['target_met'] else 'NOT met'} (all base/datasets/license/prompt format, "
          f">= {TARGET_SHARE:.0%} hyperparameters)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("cards", type=Path, help="folder of model cards (*.md)")
    ap.add_argument("recipes", type=Path, help="folder of hand-written recipes (*.yaml)")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = ap.parse_args(argv)
    for p in (args.cards, args.recipes):
        if not p.is_dir():
            ap.error(f"{p}: not a directory")
    draft_fn = load_importer()
    recipes = load_recipes(args.recipes)
    results, skipped = [], []
    for path in sorted(args.cards.glob("*.md")):
        rid = pair(path.stem, recipes)
        if rid is None:
            skipped.append(path.name)
            continue
        results.append(bench_card(path, recipes[rid], draft_fn))
    summary = summarise(results, skipped)
    print_report(results, summary)
    if args.json:
        args.json.write_text(json.dumps({"cards": results, "summary": summary}, indent=2, default=str) + "\n",
                             encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
