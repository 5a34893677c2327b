"""A chat template of the recipe's own, built from a card's prompt block that no built-in renders.

The block's placeholders ("{system}", "{user}", "{assistant}", "<|prompter|>Q1", "system
message"...) are given roles by their names (or, unnamed, by their order: system, user,
assistant); the literal text around them is split into each role's prefix and suffix at the last
line start (or, on one line, at the last tag opening). The assistant's end-of-turn marker comes
from the block when it shows one (after an answer placeholder, or before the next user turn);
otherwise the tokenizer's EOS ends the answer, and the note says so. The template is accepted
only if it renders the block back (:func:`reprotune.cardimport.prompt.matches`).
"""
from __future__ import annotations

import re

from reprotune import templates

from . import prompt

_PLACEHOLDER = re.compile(r"\{\{?\s*([A-Za-z_][\w ]{0,30}?)\s*\}?\}|\b(system message|user prompt|user message|"
                          r"assistant (?:message|response)|Q\d|A\d)\b|"
                          r"<((?:your |the )?(?:prompt|instruction|question|message|input|system prompt|"
                          r"system message|answer|response|user message|model answer)(?: here)?)>", re.I)
_ROLE_WORDS = [("system", r"sys"), ("assistant", r"^(?:a\d?|assistant.*|response|answer|output|gpt|bot|model|"
                                                r"completion|reply)$"),
               ("input", r"^input$"), ("user", r".")]


def _role(name: str) -> str:
    n = name.lower().strip()
    return next(role for role, pat in _ROLE_WORDS if re.search(pat, n))


def _placeholders(text: str) -> list[tuple[str, int, int]]:
    out = []
    for m in _PLACEHOLDER.finditer(text):
        out.append((_role(m.group(1) or m.group(2) or m.group(3)), m.start(), m.end()))
    if out and all(r == "user" for r, _, _ in out) and len(out) in (2, 3):   # unnamed: by order
        roles = ["user", "assistant"] if len(out) == 2 else ["system", "user", "assistant"]
        out = [(r, s, e) for r, (_, s, e) in zip(roles, out)]
    return out


def _split(between: str) -> tuple[str, str]:
    """Literal text between two placeholders -> (suffix of the first, prefix of the second)."""
    starts = [m.start() + 1 for m in re.finditer(r"\n(?=\S)", between)]
    if starts:
        return between[:starts[-1]], between[starts[-1]:]
    tag = max(between.rfind("<"), between.rfind("["))
    return (between[:tag], between[tag:]) if tag > 0 else ("", between)


def _parts(text: str) -> dict[str, str] | None:
    marks = _placeholders(text)
    roles = [r for r, _, _ in marks]
    if "input" in roles or "user" not in roles:
        return None
    first_user = roles.index("user")
    if first_user > 1 or (first_user == 1 and roles[0] != "system"):
        return None
    seq = marks[:first_user + 3]
    p = {"preamble": "", "sys_pre": "", "sys_post": "", "user_pre": "", "user_post": "", "asst_pre": "",
         "asst_post": None}
    cursor = 0
    for i, (role, s, e) in enumerate(seq):
        lit = text[cursor:s]
        prev = seq[i - 1][0] if i else None
        if prev is None and role == "user" and "\n" in lit.strip("\n") or prev is None and len(lit) > 40:
            p["preamble"], p["user_pre"] = _split(lit)    # a fixed text once at the top: the default system prompt
        elif prev is None:
            p[f"{_key(role)}_pre"] = lit
        else:
            post, pre = _split(lit)
            if prev == "assistant" and role == "user" and lit.endswith(p["user_pre"]) and p["user_pre"]:
                post, pre = lit[:len(lit) - len(p["user_pre"])], p["user_pre"]
            p[f"{_key(prev)}_post"], p[f"{_key(role)}_pre"] = post, pre
        cursor = e
    tail = text[cursor:].rstrip("\n") if seq[-1][0] == "assistant" else text[cursor:]
    last = seq[-1][0]
    if last == "user":
        p["user_post"], p["asst_pre"] = _split(tail)
    elif last == "assistant" and p["asst_post"] is None:
        p["asst_post"] = tail or None
    return p


def _key(role: str) -> str:
    return {"system": "sys", "user": "user", "assistant": "asst"}[role]


def _q(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def _jinja(p: dict, name: str) -> str:
    end = _q(p["asst_post"]) if p["asst_post"] else "eos_token"
    pre, sep = p["preamble"].rstrip(), p["preamble"][len(p["preamble"].rstrip()):]
    if pre:   # the card's fixed text before the first turn stands where a system prompt would
        p = {**p, "sys_pre": "", "sys_post": sep}
    top = (f"{{%- if messages[0]['role'] != 'system' or not messages[0]['content'] -%}}{{{{- {_q(p['preamble'])} -}}}}"
           "{%- endif -%}\n") if pre else ""
    return (
        f"{{#- {name}: built by `reprotune import-card` from the card's prompt block -#}}\n" + top +
        "{%- for message in messages -%}\n"
        "    {%- if message['role'] == 'system' -%}\n"
        f"        {{%- if message['content'] -%}}{{{{- {_q(p['sys_pre'])} + message['content'] + {_q(p['sys_post'])} -}}}}"
        "{%- endif -%}\n"
        "    {%- elif message['role'] == 'user' -%}\n"
        f"        {{{{- {_q(p['user_pre'])} + message['content'] + {_q(p['user_post'])} -}}}}\n"
        "    {%- elif message['role'] == 'assistant' -%}\n"
        f"        {{{{- {_q(p['asst_pre'])} -}}}}{{%- generation -%}}{{{{- message['content'] + {end} -}}}}"
        "{%- endgeneration -%}\n"
        "    {%- endif -%}\n"
        "{%- endfor -%}\n"
        f"{{%- if add_generation_prompt -%}}{{{{- {_q(p['asst_pre'])} -}}}}{{%- endif -%}}\n")


def _variants(p: dict) -> list[dict]:
    """The parts as read, and with a newline after the answer's end marker (a fence drops the
    block's last newline, so "...{assistant}</s>" may end a line that the next turn follows)."""
    out = [p]
    if p["asst_post"] and not p["asst_post"].endswith("\n"):
        out.append({**p, "asst_post": p["asst_post"] + "\n"})
    return out


def _built(p: dict, name: str):
    try:
        spec = templates.resolve({"name": name, "chat_template": _jinja(p, name)})
        return spec, templates.get(spec)
    except (templates.TemplateSpecError, ValueError):
        return None


def synthesize(cands: list[prompt.Candidate], recipe_id: str):
    """(template spec, where, note): of the templates built from the blocks with placeholders, the
    one that renders the most of the card's blocks back (it must render its own)."""
    name = f"{recipe_id}-prompt"
    best = None
    for c in cands:
        p0 = _parts(c.text)
        for p in _variants(p0) if p0 else []:
            built = _built(p, name)
            if built is None or not prompt.matches(built[1], c.text):
                continue
            score = sum(prompt.matches(built[1], x.text) for x in cands)
            if best is None or score > best[0]:
                best = (score, built[0], c, p)
    if best is None:
        return None
    score, spec, c, p = best
    end = f"the block's {p['asst_post']!r}" if p["asst_post"] else "the tokenizer's EOS (the block shows none)"
    note = (f"No built-in template renders the card's prompt block ({c.where}); the draft carries its own chat "
            f"template built from it (answers end with {end}; it renders {score} of the card's blocks; check it).")
    return spec, f"{c.where}: own chat template", note
