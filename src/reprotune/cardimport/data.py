"""Datasets a card names, and the mix it states.

A dataset is named by the front matter (``datasets:``), by a link to huggingface.co/datasets/,
by a link text that reads like a Hub id, or by a name the registry knows (``datasets/*.yaml``:
``names``, e.g. "Dolphin" -> ehartford/dolphin) in a section about data. Mix shares come from
phrases ("100% A + ~1% B", "A (25%)"), or from a fenced training config's ``datasets`` list.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import yaml

from . import values
from .markdown import Card, leaves

REGISTRY_DIR = Path(__file__).with_name("datasets")
_ID = r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*"


class Mention(NamedTuple):
    repo: str
    where: str
    kind: str        # front_matter | link | link_text | name


class Share(NamedTuple):
    fraction: float | None
    approximate: bool
    max_val: int | None
    where: str
    wording: str


def norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


@lru_cache(maxsize=None)
def registry() -> dict[str, dict]:
    out = {}
    for p in sorted(REGISTRY_DIR.glob("*.yaml")):
        entry = yaml.safe_load(p.read_text(encoding="utf-8"))
        out[entry["repo"]] = entry
    return out


def source_name(repo: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", repo.split("/")[-1].lower()).strip("_") or "data"


@lru_cache(maxsize=None)
def _by_name() -> dict[str, str]:
    out = {}
    for repo, e in registry().items():
        for n in [repo.split("/")[-1], *e.get("names", [])]:
            out.setdefault(norm(n), repo)
    return out


def mentions(card: Card) -> list[Mention]:
    found: list[Mention] = []
    fm = card.meta.get("datasets") or []
    for repo in fm if isinstance(fm, list) else [fm]:
        if isinstance(repo, str) and re.fullmatch(_ID, repo.strip()):
            found.append(Mention(repo.strip(), "front matter 'datasets'", "front_matter"))
    for b, cfg in card.configs:
        for repo in _config_datasets(cfg):
            found.append(Mention(repo, f"{b.where.split(' > ')[-1]} (fenced config, datasets '{repo}')", "config"))
    for b in card.blocks:
        if b.kind == "fence" or re.search(r"eval|result|leaderboard|benchmark", b.where, re.I):
            continue
        sec = b.where.split(" > ")[-1] or "top of the card"
        for text, url in re.findall(r"\[([^\]]*)\]\(<?([^)>\s]+)>?\)", b.text):
            m = re.search(rf"huggingface\.co/datasets/({_ID})", url)
            if m:
                found.append(Mention(m.group(1).rstrip("/"), f"{sec} (link '{text}')", "link"))
            if re.fullmatch(_ID, text.strip()) and m and text.strip() != m.group(1).rstrip("/"):
                found.append(Mention(text.strip(), f"{sec} (link text '{text}')", "link_text"))
        for m in re.finditer(rf"(?<![\[/\w])https?://huggingface\.co/datasets/({_ID})", b.text):
            found.append(Mention(m.group(1).rstrip("/"), f"{sec} (URL)", "link"))
        if re.search(r"data", b.where, re.I):
            found += _named(b.text, sec)
    return found


def _config_datasets(cfg: dict) -> list[str]:
    """Hub ids in a training config's ``datasets`` list (axolotl ``- path: org/name``)."""
    out = []
    for path, items in leaves(cfg):
        if path[-1] != "datasets" or not isinstance(items, list):
            continue
        for item in items:
            if isinstance(item, dict):
                out += [str(item[k]) for k in ("path", "name", "repo", "dataset")
                        if re.fullmatch(_ID, str(item.get(k, "")))][:1]
    return out


def _named(text: str, sec: str) -> list[Mention]:
    """Registry names used as whole words in a data section's text."""
    by_name = _by_name()
    plain = re.sub(r"\]\([^)]*\)", "]", text)
    out = []
    for word in re.findall(r"[A-Za-z][\w.-]*(?:[ _-]V?\d[\w.]*)?", plain):
        repo = by_name.get(norm(word))
        if repo:
            out.append(Mention(repo, f"{sec} (named '{word}')", "name"))
    return out


_SHARE = re.compile(r"(~|about\s+|approx(?:\.|imately)?\s+|roughly\s+)?(\d+(?:\.\d+)?)\s*%\s*"
                    r"(?:(?:random\s+|uniform\s+)?(?:sample|subset|portion|share|part|split)\s+)?(?:of\s+)?(?:the\s+)?"
                    r"([A-Za-z][\w./-]*(?:\s*\([^)]*\))?)", re.I)
_WHOLE = re.compile(r"\b(?:the\s+)?(?:full|entire|whole|complete)\s+([A-Za-z][\w./-]*)|"
                    r"\b([A-Za-z][\w./-]*)\s+(?:\w+\s+){0,3}(?:used\s+)?in\s+full\b", re.I)
_SHARE_AFTER = re.compile(r"([A-Za-z][\w./-]*)\s*[:(]\s*(~)?(\d+(?:\.\d+)?)\s*%", re.I)


def shares(card: Card) -> dict[str, list[Share]]:
    """Normalized dataset name -> the shares the card states for it."""
    out: dict[str, list[Share]] = {}
    for b in card.blocks:
        if b.kind in ("para", "bullet"):
            sec = b.where.split(" > ")[-1] or "top of the card"
            for m in _SHARE.finditer(b.text):
                name = re.sub(r"\s*\(.*", "", m.group(3))
                out.setdefault(norm(name), []).append(
                    Share(min(float(m.group(2)) / 100, 1.0), bool(m.group(1)), None, f"{sec} (mix '{m.group(0).strip()}')",
                          m.group(0).strip()))
    for b in card.blocks:
        if b.kind in ("para", "bullet"):
            for m in _SHARE_AFTER.finditer(b.text):
                out.setdefault(norm(m.group(1)), []).append(
                    Share(min(float(m.group(3)) / 100, 1.0), bool(m.group(2)), None,
                          f"{b.where.split(' > ')[-1]} (mix '{m.group(0).strip()}')", m.group(0).strip()))
            for m in _WHOLE.finditer(re.sub(r"\]\([^)]*\)", "]", b.text)):
                name = (m.group(1) or m.group(2)).strip("[]`*")
                out.setdefault(norm(name), []).append(
                    Share(1.0, False, None, f"{b.where.split(' > ')[-1]} (text '{m.group(0).strip()}')", m.group(0)))
    for b, data in card.configs:
        out_cfg = _config_shares(b, data)
        for k, v in out_cfg.items():
            out.setdefault(k, []).extend(v)
    return out


def _config_shares(block, data: dict) -> dict[str, list[Share]]:
    """A training config's ``datasets`` list ({name: {fraction, max_val_set}} or names); a dataset
    without a fraction takes its "name: NN%" line of a composition comment, or all its rows."""
    items = next((v for path, v in leaves(data) if path[-1] == "datasets" and isinstance(v, list)), None)
    if not items:
        return {}
    train_part = re.split(r"(?im)^\s*#\s*valid", block.text)[0]
    comment = {norm(n): float(p) / 100 for n, p in re.findall(r"#\s*([\w.-]+):\s*(\d+(?:\.\d+)?)%", train_part)}
    sec = block.where.split(" > ")[-1]
    out: dict[str, list[Share]] = {}
    for item in items:
        name, opts = (next(iter(item.items())) if isinstance(item, dict) and len(item) == 1 else (item, {}))
        if not isinstance(name, str):
            continue
        opts = opts if isinstance(opts, dict) else {}
        frac = values.ratio(opts.get("fraction", comment.get(norm(name))))
        where = f"{sec} (fenced config, datasets '{name}')"
        out.setdefault(norm(name), []).append(Share(frac, False, values.as_int(opts.get("max_val_set")), where, str(item)))
    return out


def share_for(repo: str, table: dict[str, list[Share]]) -> Share | None:
    """The share stated for a dataset, looked up by its repo name or a registry name (either
    contains the other, after normalization)."""
    names = {norm(repo.split("/")[-1]), *(norm(n) for n in registry().get(repo, {}).get("names", []))}
    for key, found in sorted(table.items()):
        if any(key and (key == n or (len(key) >= 5 and (key in n or n in key))) for n in names):
            return found[0]
    return None
