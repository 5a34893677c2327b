"""Training settings stated in a card, each with where it was read.

Four readers, most explicit first (a setting stated by several keeps the most explicit, and a
disagreement between them becomes a contradiction note): fenced YAML/JSON training configs,
tables (``| Parameter | Value |``), bullets (``- learning_rate: 1e-4``, ``- **LR:** 1e-4``) and
prose ("a learning rate of 2e-5 for 3 epochs on 8x A100"). Keys are looked up in keys.yaml;
values go through :mod:`reprotune.cardimport.values`.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import yaml

from . import values
from .markdown import Block, Card, leaves

KEYS_FILE = Path(__file__).with_name("keys.yaml")
RANK = {"config": 0, "table": 1, "bullet": 2, "prose": 3, "mention": 4}


class Fact(NamedTuple):
    setting: str      # a keys.yaml name: learning_rate, lora.r, batch_size, ...
    value: Any        # the recipe's value (parsed)
    raw: str          # the card's wording
    where: str        # where in the card
    kind: str         # config | table | bullet | prose | mention

    @property
    def rank(self) -> int:
        return RANK[self.kind]


class Unread(NamedTuple):
    setting: str
    raw: str
    where: str


def norm_key(key: str) -> str:
    key = re.sub(r"[*`]", "", str(key)).replace("α", "alpha").replace("#", "num ")
    return re.sub(r"[^a-z0-9]+", "_", key.lower()).strip("_")


@lru_cache(maxsize=None)
def key_table() -> dict[str, tuple[str, str]]:
    """normalized card key -> (setting, parser name)."""
    out = {}
    for setting, spec in yaml.safe_load(KEYS_FILE.read_text(encoding="utf-8")).items():
        for name in spec["names"]:
            out[norm_key(name)] = (setting, spec["parse"])
    return out


def _section(where: str) -> str:
    return where.split(" > ")[-1] if where else "top of the card"


def _parsed(setting: str, parser: str, raw: Any, where: str, kind: str, text: str):
    """A Fact (or facts: an optimizer string also gives Adam's betas), or an Unread."""
    value = values.PARSERS[parser](raw)
    if setting == "optimizer":
        for k, v in values.adam_args(raw).items():
            yield Fact(k, v, text, where, kind)
    if setting == "warmup" and value is not None:
        setting, value = value
    if value is None:
        yield Unread(setting, text, where)
    else:
        yield Fact(setting, value, text, where, kind)


def _value_column(header: tuple, size: str | None) -> int:
    """Which column of a settings table holds this model's values: the one whose header names the
    model's size ("| Setting | 7B | 13B |"), else the first after the names."""
    for i, cell in enumerate(header[1:], start=1):
        m = re.search(r"(?<![\w.])(\d+(?:\.\d+)?)\s*[bB]\b", cell)
        if size and m and f"{m.group(1)}b" == size:
            return i
    return 1


def _pairs_from_blocks(blocks: list[Block], size: str | None = None) -> Iterator[tuple[str, Any, str, str, str]]:
    """(card key, raw value, where, kind, wording) from tables and bullets."""
    for b in blocks:
        sec = _section(b.where)
        if b.kind == "table":
            col = _value_column(b.rows[0], size) if len(b.rows) > 1 else 1
            named = f", column '{b.rows[0][col]}'" if len(b.rows[0]) > 2 and col < len(b.rows[0]) else ""
            for row in b.rows[1:] if len(b.rows) > 1 else b.rows:
                if len(row) > col and row[0] and row[col]:
                    yield (row[0], row[col], f"{sec} (table row '{row[0].strip('*')}'{named})", "table",
                           f"{row[0]} | {row[col]}")
        elif b.kind == "bullet":
            m = re.match(r"\**\s*([^:=*]{1,60}?)\s*\**\s*[:=]\s*\**\s*(.+?)\s*$", b.text)
            if m:
                yield m.group(1), m.group(2), f"{sec} (bullet '{m.group(1).strip()}')", "bullet", b.text


def _from_configs(card: Card) -> Iterator[Fact | Unread]:
    table = key_table()
    for b, data in card.configs:
        for path, v in leaves(data):
            keys = [norm_key("_".join(path[-2:])), norm_key(path[-1])] if len(path) > 1 else [norm_key(path[-1])]
            hit = next((table[k] for k in keys if k in table), None)
            if hit is None or (isinstance(v, (dict, list)) and hit[1] not in ("rope", "modules")):
                continue
            where = f"{_section(b.where)} (fenced config, key '{'.'.join(path)}')"
            yield from _parsed(*hit, v, where, "config", f"{path[-1]}: {v}")


def _title_size(card: Card) -> str | None:
    title = next((b.where.split(" > ")[0] for b in card.blocks if b.where), "")
    m = re.search(r"(?<![A-Za-z0-9.])(\d+(?:\.\d+)?)\s*[bB](?![a-zA-Z])", title)
    return f"{m.group(1)}b" if m else None


def _from_pairs(card: Card) -> Iterator[Fact | Unread]:
    table = key_table()
    for key, raw, where, kind, text in _pairs_from_blocks(card.blocks, _title_size(card)):
        hit = table.get(norm_key(key))
        if hit:
            yield from _parsed(*hit, raw, where, kind, text)


_N = r"(\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
_GPU = r"(?:NVIDIA\s+)?(?:A100|H100|H200|H800|A800|V100|A6000|A40|L40S?|A10G?|RTX\s*\w+|\d{4}|MI\d+\w*)"
# (setting, pattern, group holding the value, parser, kind)
PROSE = [
    ("learning_rate", rf"learning[ _-]?rate\s*(?:of|was|is|:|=|at)?\s*{_N}", 1, "float", "prose"),
    ("learning_rate", rf"\blr\s*[=:]\s*{_N}", 1, "float", "prose"),
    ("lr_scheduler", r"\b(cosine|linear|constant)\s+(?:learning[ _-]rate\s+|lr\s+)?(?:schedul|decay|annealing|warm)", 1,
     "scheduler", "prose"),
    ("weight_decay", rf"weight[ _-]decay\s*(?:of|was|is|:|=)?\s*{_N}", 1, "float", "prose"),
    ("epochs", rf"\b{_N}\s+epochs?\b", 1, "number", "prose"),
    ("epochs", r"\bepochs?\s*(?:of|:|=)\s*(\d+)", 1, "number", "prose"),
    ("total_batch_size", r"(?:global|total|effective)\s+batch[ _-]?size\s*(?:of|was|is|:|=)?\s*(\d+)", 1, "int", "prose"),
    ("per_device_batch_size", r"(?:per[- ](?:device|gpu)|micro)[ _-]?batch[ _-]?size\s*(?:of|was|is|:|=)?\s*(\d+)", 1, "int", "prose"),
    ("batch_size", r"(?<!global )(?<!total )(?<!effective )(?<!micro )(?<!device )\bbatch[ _-]?size\s*(?:of|was|is|:|=)?\s*(\d+)", 1, "int", "prose"),
    ("gradient_accumulation_steps", r"(\d+)\s+gradient[ _-]accumulation\s+steps", 1, "int", "prose"),
    ("gradient_accumulation_steps", r"gradient[ _-]accumulation(?:\s+steps)?\s*(?:of|:|=)\s*(\d+)", 1, "int", "prose"),
    ("num_gpus", rf"\b(\d+)\s*[x×]\s*{_GPU}", 1, "int", "prose"),
    ("num_gpus", rf"\b(\d+)\s+(?:{_GPU}\s+)?GPUs\b", 1, "int", "prose"),
    ("num_gpus", rf"\b(\d+)\s+{_GPU}s?\b", 1, "int", "prose"),
    ("lora.r", r"\b(?:lora\s+)?rank\s*(?:of|:|=|r\s*=)?\s*(\d+)\b|\br\s*=\s*(\d+)\b", (1, 2), "int", "prose"),
    ("lora.alpha", r"\b(?:lora[ _-])?alpha\s*(?:of|:|=)?\s*(\d+)\b", 1, "int", "prose"),
    ("lora.dropout", rf"\b(?:lora[ _-])?dropout\s*(?:of|:|=)?\s*{_N}", 1, "ratio", "prose"),
    ("deepspeed", r"\bzero[\s_-]*(?:stage[\s_-]*)?([0-3])\b|deepspeed\s+stage[\s_-]*([0-3])", (1, 2), "deepspeed", "prose"),
    ("max_length", r"(?:context\s+(?:size|length|window)|max(?:imum)?\s+(?:sequence\s+|seq\s+|input\s+)?length|sequence\s+length|cutoff\s+length)\s*(?:of|was|is|:|=)?\s*(\d+)", 1, "length", "prose"),
    ("warmup_ratio", rf"warm[- ]?up\s+(?:ratio\s+)?(?:of\s+)?{_N}\s*%", 1, "float_percent", "prose"),
    ("warmup_ratio", rf"warm[- ]?up\s+ratio\s*(?:of|was|is|:|=)?\s*{_N}(?!\s*%)", 1, "ratio", "prose"),
    ("warmup_ratio", rf"{_N}\s*%\s+(?:of\s+(?:the\s+)?(?:steps\s+)?(?:for\s+)?)?(?:linear\s+)?warm[- ]?up", 1, "float_percent", "prose"),
    ("warmup_steps", r"(\d+)\s+warm[- ]?up\s+steps|warm[- ]?up\s+(?:of\s+)?(\d+)\s+steps", (1, 2), "int", "prose"),
    ("rope_linear", r"linear\s+(?:scaling\s+of\s+)?rope|rope\s+(?:scaling|interpolation)[^.]{0,30}\blinear", 0, "const_linear", "prose"),
    ("rope_scaling.factor", rf"(?:rope|scaling)[^.]{{0,40}}?\bfactor\s*(?:of|:|=)?\s*{_N}", 1, "float", "prose"),
    ("method", r"\bqlora\b", 0, "method", "mention"),
    ("method", r"\bfull(?:[- ]parameter)?[- ]fine[- ]?tun(?:e|ing)\b", 0, "method", "prose"),
    ("method", r"\blora\b", 0, "method", "mention"),
    ("attn_implementation", r"\bflash[_ -]?attention(?:[_ -]?2)?\b", 0, "attention", "mention"),
    ("precision", r"\b(bf16|bfloat16|fp16|float16)\b\s+(?:mixed\s+)?precision|(?:trained|training)\s+in\s+(bf16|bfloat16|fp16)", (1, 2), "precision", "prose"),
]


def _prose_text(b: Block) -> str:
    """The block's words: link targets and bare URLs left out."""
    return re.sub(r"https?://\S+", "", re.sub(r"\]\([^)]*\)", "]", b.text))


def _from_prose(card: Card) -> Iterator[Fact]:
    seen = set()
    for b in card.blocks:
        if b.kind not in ("para", "bullet"):
            continue
        text = _prose_text(b)
        for setting, pat, group, parser, kind in PROSE:
            m = re.search(pat, text, re.I)
            if not m or (setting, kind) in seen and kind == "mention":
                continue
            groups = group if isinstance(group, tuple) else (group,)
            raw = next((m.group(g) for g in groups if m.group(g) is not None), m.group(0))
            value = values.PARSERS[parser](raw)
            if value is None:
                continue
            seen.add((setting, kind))
            snippet = text[max(0, m.start() - 30):m.end() + 10].strip()
            yield Fact(setting, value, m.group(0), f"{_section(b.where)} (text '...{snippet}...')", kind)


def read(card: Card) -> tuple[list[Fact], list[Unread]]:
    facts, unread = [], []
    for item in (*_from_configs(card), *_from_pairs(card), *_from_prose(card)):
        (facts if isinstance(item, Fact) else unread).append(item)
    return facts, unread
