"""The recipe's ``card`` block: title, languages, license, description, limitations, citations,
links and the results the card reports."""
from __future__ import annotations

import re
from typing import Any

from .markdown import Card, _plain

LICENSES = [  # how cards write a license -> the Hub's license id
    (r"llama[ -]?2", "llama2"), (r"llama[ -]?3", "llama3"), (r"apache[ -]?(?:license[ ,]*)?(?:v(?:ersion)?\s*)?2",
                                                               "apache-2.0"),
    (r"\bmit\b", "mit"), (r"cc[ -]?by[ -]?nc[ -]?sa[ -]?4", "cc-by-nc-sa-4.0"), (r"cc[ -]?by[ -]?nc[ -]?4", "cc-by-nc-4.0"),
    (r"cc[ -]?by[ -]?sa[ -]?4", "cc-by-sa-4.0"), (r"cc[ -]?by[ -]?4", "cc-by-4.0"), (r"gpl[ -]?3", "gpl-3.0"),
    (r"openrail", "openrail"),
]
LANGUAGES = {"english": "en", "chinese": "zh", "french": "fr", "german": "de", "spanish": "es", "japanese": "ja",
             "korean": "ko", "russian": "ru", "portuguese": "pt", "italian": "it"}
RESULTS = [  # an evaluation name (table row, model-index dataset) -> the lm-eval task of the eval presets
    (r"ifeval", "leaderboard_ifeval"), (r"\bbbh\b|big[ -]?bench[ -]?hard", "leaderboard_bbh"),
    (r"math[ _-]?(?:lvl|level|hard)", "leaderboard_math_hard"), (r"gpqa", "leaderboard_gpqa"),
    (r"musr", "leaderboard_musr"), (r"mmlu[ _-]?pro", "leaderboard_mmlu_pro"),
    (r"\barc\b|ai2 reasoning", "arc_challenge"), (r"hellaswag", "hellaswag"), (r"mmlu", "mmlu"),
    (r"truthful", "truthfulqa_mc2"), (r"winogrande", "winogrande"), (r"gsm8k|gsm-8k", "gsm8k"),
]
LIMITS = re.compile(r"limitation|bias|risk", re.I)
LICENSE_SECTION = re.compile(r"licen[cs]e|disclaimer", re.I)


def _section_text(card: Card, pattern: re.Pattern) -> tuple[str, str] | None:
    for b in card.blocks:
        sec = b.where.split(" > ")[-1]
        if b.kind in ("para", "bullet") and pattern.search(sec):
            text = " ".join(_plain(x.text) if x.kind == "bullet" else x.text for x in card.blocks
                            if x.where == b.where and x.kind in ("para", "bullet"))
            return text, sec
    return None


def title(card: Card, recipe_id: str) -> tuple[str, str]:
    for b in card.blocks:
        if b.where:
            return b.where.split(" > ")[0], "first heading"
    return recipe_id, "recipe id (the card has no heading)"


def language(card: Card) -> tuple[list[str] | None, str]:
    lang = card.meta.get("language")
    if isinstance(lang, str) or isinstance(lang, list) and lang and all(isinstance(x, str) for x in lang):
        return ([lang] if isinstance(lang, str) else list(lang)), "front matter 'language'"
    for b in card.blocks:
        m = re.match(r"\**\s*language\(?s?\)?[^:]*:\**\s*(.*)", b.text, re.I) if b.kind == "bullet" else None
        if m:
            found = sorted({code for word, code in LANGUAGES.items() if word in m.group(1).lower()})
            if found:
                return found, f"{b.where.split(' > ')[-1]} (bullet 'Language')"
    return None, ""


def license_(card: Card) -> dict[str, tuple[Any, str]]:
    """license (+ license_name, license_link when it is 'other') with where each was read."""
    out: dict[str, tuple[Any, str]] = {}
    fm = card.meta.get("license")
    body = next((b for b in card.blocks if b.kind == "bullet" and re.match(r"\**\s*licen[cs]e\**\s*:", b.text, re.I)),
                None)
    named = re.sub(r"^\**\s*licen[cs]e\**\s*:\**\s*", "", body.text, flags=re.I) if body else ""
    link = re.search(r"\]\(<?(https?://[^)>\s]+)", named)
    plain = _plain(named).rstrip(".")
    known = next((lid for pat, lid in LICENSES if plain and re.search(pat, plain, re.I)), None)
    where_body = f"{body.where.split(' > ')[-1]} (bullet 'License')" if body else ""
    if fm:
        out["license"] = (str(fm), "front matter 'license'")
        for key in ("license_name", "license_link"):
            if card.meta.get(key):
                out[key] = (str(card.meta[key]), f"front matter '{key}'")
    elif known:
        out["license"] = (known, where_body)
    elif plain:
        out["license"] = ("other", where_body)
    if out.get("license", ("",))[0] == "other" and plain and "license_name" not in out:
        slug = known or re.sub(r"[^a-z0-9]+", "-", plain.lower()).strip("-")
        out["license_name"] = (slug, where_body)
        if link:
            out["license_link"] = (link.group(1), where_body)
    return out


def description(card: Card) -> tuple[str | None, str]:
    intro = re.compile(r"intro|descr|overview|summary|model details|about", re.I)
    top = card.blocks[0].where.split(" > ")[0] if card.blocks else ""
    ordered = sorted(card.blocks, key=lambda b: 0 if intro.search(b.where) else 1 if b.where in ("", top) else 2)
    for b in ordered:
        text = _plain(b.text)
        if b.kind == "para" and len(text) >= 60 and not re.search(r"banner|badge", text[:40], re.I):
            return text, f"{b.where.split(' > ')[-1] or 'top of the card'} (first paragraph)"
    return None, ""


def limitations(card: Card) -> tuple[str, str] | None:
    return _section_text(card, LIMITS)


def license_text(card: Card) -> tuple[str, str] | None:
    return _section_text(card, LICENSE_SECTION)


def citations(card: Card) -> list[str]:
    return ["\n".join(line.rstrip() for line in b.text.strip().split("\n")) + "\n"
            for b in card.blocks if b.kind == "fence" and re.match(r"\s*@\w+\s*\{", b.text)]


def links(card: Card) -> dict[str, str]:
    out: dict[str, str] = {}
    for b in card.blocks:
        if b.kind == "fence":
            continue
        for url in re.findall(r"https?://[^\s)>\]]+", b.text):
            url = url.rstrip(".,;")
            code_repo = re.match(r"https?://github\.com/[\w.-]+/[\w.-]+", url)   # not a user's page
            key = ("paper" if "arxiv.org" in url else "repository" if code_repo else
                   "wandb" if "wandb.ai" in url else None)
            if key:
                n = 1 + sum(1 for k in out if k.startswith(key))
                if url not in out.values():
                    out[key if n == 1 else f"{key}_{n}"] = url
    return out


def _task(name: str) -> str | None:
    return next((task for pat, task in RESULTS if re.search(pat, name, re.I)), None)


def _model_index_results(index: Any) -> list[dict]:
    entries = index if isinstance(index, list) else []
    return [r for e in entries if isinstance(e, dict) and isinstance(e.get("results"), list)
            for r in e["results"] if isinstance(r, dict)]


def reported_results(card: Card) -> tuple[dict[str, float], str]:
    out: dict[str, float] = {}
    for res in _model_index_results(card.meta.get("model-index")):
        ds = res.get("dataset") if isinstance(res.get("dataset"), dict) else {}
        task = _task(f"{ds.get('type', '')} {ds.get('name', '')}")
        metrics = res.get("metrics") if isinstance(res.get("metrics"), list) else []
        value = metrics[0].get("value") if metrics and isinstance(metrics[0], dict) else None
        if task and isinstance(value, (int, float)) and not isinstance(value, bool):
            out.setdefault(task, float(value))
    if out:
        return out, "front matter 'model-index'"
    for b in card.blocks:
        if b.kind == "table" and re.search(r"eval|result|benchmark|leaderboard", b.where, re.I):
            for row in b.rows[1:]:
                task = _task(row[0]) if len(row) >= 2 else None
                m = re.match(r"\s*(\d+(?:\.\d+)?)", row[1]) if task else None
                if m:
                    out.setdefault(task, float(m.group(1)))
            if out:
                return out, f"{b.where.split(' > ')[-1]} (table)"
    return out, ""
