"""Which base model a card fine-tunes, from every place a card may say it.

Evidence, most explicit first: the front matter's ``base_model``, a Hub link in a line about
the base ("base model", "finetuned from", "based on"), a training config's model path
(``model_name: /mnt/llama2/Llama-2-13b-hf/``), and a known base named in the title or text
("an OpenLLaMa-13B model"; known bases are the profiles of ``reprotune.bases``). When the pieces
disagree on the size ("13B" in the title, a 7b repo linked) that is a contradiction: the size
most pieces agree on wins, ties go to the most explicit piece, and the note lists them all.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

from reprotune import bases

from .data import norm
from .markdown import Card

_ID = r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*"
_ABOUT_BASE = re.compile(r"base[ _-]?model|fine-?tun(?:ed|ing|e)\b|based on|finetune of|trained (?:on top of|from)",
                         re.I)
_MODEL_KEYS = ("model_name", "model_name_or_path", "base_model", "pretrained_model_name_or_path", "model_path",
               "base_model_name_or_path", "model")


class Evidence(NamedTuple):
    repo: str | None   # a Hub id, when the piece gives one
    size: str | None   # "13b"
    where: str
    rank: int          # 0 front matter, 1 base link, 2 config path, 3 named in text


def size_of(text: str) -> str | None:
    m = re.search(r"(?<![A-Za-z0-9.])(\d+(?:\.\d+)?)\s*[bB](?![a-zA-Z])", text)
    return f"{m.group(1)}b" if m else None


@lru_cache(maxsize=None)
def _patterns() -> list[tuple[str, re.Pattern]]:
    """A regex per known base: its name's parts (letters / digits) with any separators between."""
    out = []
    for base_id in bases.ids():
        name = re.sub(r"[-_](hf|v\d[\w.]*)$", "", base_id.split("/")[-1], flags=re.I)
        parts = re.findall(r"[a-z]+|\d+(?:\.\d+)?b?", name.lower())
        out.append((base_id, re.compile(r"(?<![a-z0-9])" + r"[\s_-]*".join(map(re.escape, parts)) + r"(?![0-9])", re.I)))
    return out


def _known(text: str) -> str | None:
    for base_id, pat in _patterns():
        if pat.search(text):
            return base_id
    return None


def evidence(card: Card, title: str) -> list[Evidence]:
    found = []
    fm = card.meta.get("base_model")
    for repo in fm if isinstance(fm, list) else [fm]:
        if isinstance(repo, str) and re.fullmatch(_ID, repo.strip()):
            found.append(Evidence(repo.strip(), size_of(repo), "front matter 'base_model'", 0))
    for b in card.blocks:
        sec = b.where.split(" > ")[-1] or "top of the card"
        if b.kind in ("para", "bullet") and _ABOUT_BASE.search(b.text):
            for m in re.finditer(rf"huggingface\.co/({_ID})", b.text):
                if not m.group(1).startswith(("datasets/", "spaces/")):
                    found.append(Evidence(m.group(1).rstrip("/)"), size_of(m.group(1)), f"{sec} (link)", 1))
    for b, data in card.configs:
        for value in _model_paths(data):
            known = _known(value.rstrip("/").split("/")[-1])
            repo = value if re.fullmatch(_ID, value) and not value.startswith("/") else known
            found.append(Evidence(repo, size_of(value), f"{b.where.split(' > ')[-1]} (fenced config model path)", 2))
    for text, where in [(title, "title")] + [(b.text, b.where.split(" > ")[-1]) for b in card.blocks[:6]
                                              if b.kind == "para"]:
        known = _known(re.sub(r"\]\([^)]*\)", "]", text))
        if known or size_of(text):
            found.append(Evidence(known, size_of(text) if not known else size_of(known) or size_of(text),
                                  f"{where or 'top of the card'} (text)", 3))
    return found


def _model_paths(data, depth=0):
    if isinstance(data, dict) and depth < 4:
        for k, v in data.items():
            if str(k) in _MODEL_KEYS and isinstance(v, str):
                yield v.strip()
            else:
                yield from _model_paths(v, depth + 1)


def choose(found: list[Evidence], license_: str, title: str) -> tuple[str | None, str | None, list[str]]:
    """(base id, where, notes)."""
    notes = []
    sizes = {}
    for e in found:
        if e.size:
            sizes.setdefault(e.size, []).append(e)
    ids = sorted({e.repo for e in found if e.repo and e.rank < 3})
    if len(sizes) > 1 or len(ids) > 1:
        listed = "; ".join(f"{e.where}: {e.repo or e.size}" for e in found)
        notes.append(f"Contradiction: the card names different base models ({listed}).")
    if sizes:
        size = max(sizes, key=lambda s: (len(sizes[s]), -min(e.rank for e in sizes[s])))
        pool = [e for e in found if e.size == size and e.repo]
    else:
        pool = [e for e in found if e.repo]
    pool.sort(key=lambda e: e.rank)
    if pool:
        if notes:
            notes.append(f"base_model.id {pool[0].repo} follows {pool[0].where}, with which most pieces agree.")
        return pool[0].repo, pool[0].where, notes
    return _guess(license_, title, found, notes)


def _guess(license_: str, title: str, found: list[Evidence], notes: list[str]):
    """No Hub id anywhere: a known base of the card's family (from the license) and size."""
    size = next((e.size for e in found if e.size), None)
    family = "llama2" if re.search(r"llama[ -]?2", license_ or "", re.I) else None
    for base_id in bases.ids():
        if family and size and family in norm(base_id) and norm(size) in norm(base_id):
            notes.append(f"The card names no base model id; {base_id} is inferred from its size ({size}, "
                         f"{found[0].where if found else 'title'}) and its license ({license_}).")
            return base_id, f"inferred from the size in the {found[0].where if found else 'title'} and the license", notes
    return None, None, notes
