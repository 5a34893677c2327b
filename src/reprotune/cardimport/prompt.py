"""The prompt format a card shows -> a built-in template, or a chat template of the recipe's own.

Candidate blocks are the card's fenced text blocks and the string literals of its Python blocks
(``f"### System:\\n{system}\\n..."``). A built-in template matches a block when one of its
renderings of a probe conversation (system or not, an input or not, one or two turns, a
generation prompt or a finished turn) equals the block byte for byte once each message is
replaced by whatever the block has in its place ("{user}", "Your message here!", "Q1"). A
finished turn may stop before the end-of-turn marker, and a leading BOS is optional. On a card
whose newlines were collapsed, runs of whitespace compare equal to any whitespace (and the draft
says so). When no built-in matches, a block with recognizable placeholders becomes a Jinja chat
template (:func:`synthesize`), checked by rendering it back to the block.
"""
from __future__ import annotations

import ast
import re
from typing import NamedTuple

from reprotune import templates

from .markdown import Card

S, I, U1, A1, U2, A2 = "\x01S\x01", "\x01I\x01", "\x01U1\x01", "\x01A1\x01", "\x01U2\x01", "\x01A2\x01"
_SENTINEL = re.compile("\x01[A-Z0-9]+\x01")
_PROBES = [  # (record, as a generation prompt)
    ({"system": S, "messages": [{"role": "user", "content": U1}]}, True),
    ({"messages": [{"role": "user", "content": U1}]}, True),
    ({"system": S, "input": I, "messages": [{"role": "user", "content": U1}]}, True),
    ({"input": I, "messages": [{"role": "user", "content": U1}]}, True),
    ({"system": S, "messages": [{"role": "user", "content": U1}, {"role": "assistant", "content": A1}]}, False),
    ({"messages": [{"role": "user", "content": U1}, {"role": "assistant", "content": A1}]}, False),
    ({"system": S, "messages": [{"role": "user", "content": U1}, {"role": "assistant", "content": A1},
                                {"role": "user", "content": U2}]}, True),
    ({"messages": [{"role": "user", "content": U1}, {"role": "assistant", "content": A1},
                   {"role": "user", "content": U2}]}, True),
    ({"system": S, "messages": [{"role": "user", "content": U1}, {"role": "assistant", "content": A1},
                                {"role": "user", "content": U2}, {"role": "assistant", "content": A2}]}, False),
    ({"messages": [{"role": "user", "content": U1}, {"role": "assistant", "content": A1},
                   {"role": "user", "content": U2}, {"role": "assistant", "content": A2}]}, False),
]
SKIP = {"raw"}   # a text format: no scaffold to compare


class Candidate(NamedTuple):
    text: str
    where: str


class Match(NamedTuple):
    spec: str | dict
    where: str
    blocks: int
    loose: bool        # matched ignoring whitespace (collapsed card)


def candidates(card: Card) -> list[Candidate]:
    out = []
    for b in card.blocks:
        if b.kind != "fence" or b.text.lstrip().startswith("@"):
            continue
        sec = b.where.split(" > ")[-1] or "top of the card"
        if b.lang in ("python", "py"):
            out += [Candidate(s, f"{sec} (string in a Python block)") for s in _strings(b.text)]
        elif b.lang in ("", "text", "txt", "markdown", "md", "plaintext", "jinja") and 0 < len(b.text) < 2000:
            out.append(Candidate(b.text, f"{sec} (code block)"))
    return out + _inline(card)


_PROMPT_SECTION = re.compile(r"prompt|template|format|usage|conversation|chat", re.I)


def _inline(card: Card) -> list[Candidate]:
    """Inline code in a prompt section that looks like a format ("`USER: {prompt} ASSISTANT:`");
    a written "\\n" stands for a newline."""
    out = []
    for b in card.blocks:
        if b.kind not in ("para", "bullet") or not _PROMPT_SECTION.search(b.where):
            continue
        for code in re.findall(r"`([^`\n]{8,400})`", b.text):
            if re.search(r"\{\w+\}|<\|\w+\|>|###|\[INST\]", code):
                out.append(Candidate(code.replace("\\n", "\n"), f"{b.where.split(' > ')[-1]} (inline code)"))
    return out


def _strings(code: str) -> list[str]:
    """Prompt-like string literals of a Python block: with a newline escape or a {placeholder}."""
    out = []
    for m in re.finditer(r"""\b[fF]?("(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')""", code):
        body = m.group(1)
        if "\\n" not in body or "{" not in body:
            continue
        try:
            out.append(ast.literal_eval(body))
        except (ValueError, SyntaxError):
            continue
    return out


def _pattern(rendered: str, finished: bool, loose: bool) -> re.Pattern | None:
    rendered = rendered.rstrip()
    if rendered.startswith("<s>"):
        rendered = rendered[3:]
    parts = _SENTINEL.split(rendered)
    if sum(len(p.strip()) for p in parts) < 3:
        return None
    lit = [_literal(p, loose) for p in parts]
    tail = f"(?:{lit[-1]})?" if finished and lit[-1] else lit[-1]
    body = "(.+?)".join(lit[:-1]) + ("(.+?)" if len(parts) > 1 else "") + tail
    return re.compile(r"(?:<s>)?\s*" + body if loose else "(?:<s>)?" + body, re.S)


def _literal(text: str, loose: bool) -> str:
    if not loose:
        return re.escape(text)
    return r"\s*".join(re.escape(w) for w in re.split(r"\s+", text))


def _scaffold(rendered: str) -> list[str]:
    return [p.strip() for p in _SENTINEL.split(rendered) if len(p.strip()) >= 3]


def matches(template, text: str, loose: bool = False) -> bool:
    """Whether one of the template's probe renderings equals ``text`` (see the module doc)."""
    block = text.strip() if loose else text.rstrip()
    for record, prompt in _PROBES:
        if "input" in record and not template.has_input_block:
            continue
        try:
            rendered = (template.render_prompt if prompt else template.render)(record, eos="</s>")
        except (templates.TemplateError, ValueError, KeyError):
            continue
        pat = _pattern(rendered, not prompt, loose)
        m = pat.fullmatch(block) if pat else None
        if m and not any(piece in g for g in m.groups() for piece in _scaffold(rendered)):
            return True
    return False


def find(card: Card) -> Match | None:
    """The built-in template most of the card's prompt blocks match (ties: the longest scaffold)."""
    cands = candidates(card)
    best = None
    for name in templates.names():
        if name in SKIP:
            continue
        t = templates.get(name)
        hits = [c for c in cands if matches(t, c.text, card.collapsed)]
        if hits:
            size = len(t.chat_template)
            key = (len(hits), size)
            if best is None or key > best[0]:
                best = (key, Match(name, hits[0].where, len(hits), card.collapsed))
    return best[1] if best else None


# what training configs call the built-in formats (axolotl chat_template, LLaMA-Factory template, ...)
CONFIG_NAMES = {"chatml": "chatml", "alpaca": "alpaca", "llama2": "llama2_chat", "llama-2": "llama2_chat",
                "llama2_chat": "llama2_chat", "tulu": "tulu", "mistral": "mistral_instruct",
                "mistral_instruct": "mistral_instruct", "oasst": "oasst", "orca_mini": "orca_mini"}
CONFIG_KEYS = ("chat_template", "prompt_template", "template", "conversation_template", "prompt_format",
               "conversation")


def from_config(card: Card) -> tuple[str, str] | None:
    """A built-in named by a training config's template key: (name, where)."""
    for b, data in card.configs:
        for key in CONFIG_KEYS:
            value = data.get(key) if isinstance(data, dict) else None
            name = CONFIG_NAMES.get(str(value).strip().lower()) if isinstance(value, str) else None
            if name:
                return name, f"{b.where.split(' > ')[-1]} (fenced config, key '{key}: {value}')"
    return None
