"""A model card, read into blocks: front matter, and per section its tables, bullets, fenced
blocks and paragraphs, each knowing the heading it sits under (``where``, for the draft's
``# from:`` comments).

Cards found in the wild are not always intact Markdown: some were scraped with every newline
collapsed into a space. :func:`parse` detects that (very few newlines for the text's length) and
restores the structure it can (front matter keys, headings, bullets, fences, table rows) before
reading; ``Card.collapsed`` says it happened, so that prompt blocks are compared ignoring
whitespace and the draft says so.
"""
from __future__ import annotations

import json
import re
from typing import Any, Iterator, NamedTuple

import yaml

# top-level keys of the Hub's model card metadata (huggingface_hub ModelCardData and the Hub's
# card spec); used to split the front matter of a collapsed card back into lines
FRONT_MATTER_KEYS = (
    "language", "license", "license_name", "license_link", "library_name", "tags", "datasets",
    "metrics", "base_model", "base_model_relation", "model-index", "model_name", "pipeline_tag",
    "inference", "widget", "thumbnail", "co2_eq_emissions", "model_type", "quantized_by",
    "model_creator", "new_version", "extra_gated_prompt", "extra_gated_fields",
)
FENCE_LANGS = ("python", "py", "bash", "sh", "shell", "console", "yaml", "yml", "json", "bibtex", "bib",
               "text", "txt", "markdown", "md", "jinja", "toml", "ini", "plaintext", "")


class Block(NamedTuple):
    kind: str          # "table" | "bullet" | "fence" | "para"
    where: str         # the heading path, "Training > Parameters" ('' before the first heading)
    text: str          # the block's text (a fence: its content; a bullet: the item)
    lang: str = ""     # a fence's info string
    rows: tuple = ()   # a table's rows (tuples of cells), header first, separator dropped


class Card(NamedTuple):
    meta: dict[str, Any]
    meta_error: str | None
    blocks: list[Block]
    collapsed: bool
    text: str          # the body as read (restored when collapsed)
    configs: list      # (fence Block, mapping): the fenced YAML/JSON training configs, parsed once

    def sections(self) -> list[str]:
        return sorted({b.where for b in self.blocks})


def is_collapsed(text: str) -> bool:
    lines = text.strip().count("\n") + 1
    inline_marks = len(re.findall(r"\s(?:#{1,6} |- |\* |```|\| )", text))
    return len(text) > 200 and lines * 200 < len(text) and inline_marks >= 3


def _split_front_matter(text: str) -> tuple[str | None, str]:
    if not text.startswith("---"):
        return None, text
    m = re.match(r"---[ \t]*\n(.*?)\n---[ \t]*(?:\n|$)", text, re.S)
    if m:
        return m.group(1), text[m.end():]
    m = re.match(r"---\s(.*?)\s---(?:\s|$)", text, re.S)   # collapsed: all on one line
    if m:
        return _restore_front_matter(m.group(1)), text[m.end():]
    return None, text


def _restore_front_matter(flat: str) -> str:
    """One-line front matter back into YAML lines: a line per known top-level key, list items
    ("- x") on lines of their own; a value with nested mappings stays on its key's line."""
    keys = "|".join(re.escape(k) for k in FRONT_MATTER_KEYS)
    parts = re.split(rf"(?:^|\s)(?=(?:{keys}):(?:\s|$))", flat.strip())
    lines = []
    for part in filter(None, (p.strip() for p in parts)):
        key, _, value = part.partition(":")
        value = value.strip()
        if value.startswith("- ") and not re.search(r"- [\w-]+: ", value):
            lines.append(f"{key}:")
            lines += [f"- {item.strip()}" for item in re.split(r"(?:^|\s)- ", value) if item.strip()]
        elif value.startswith("- "):
            lines.append(f"{key}: []  # nested value lost when the card was collapsed")
        else:
            lines.append(f"{key}: {value}")
    return "\n".join(lines)


def _restore_body(flat: str) -> str:
    """Headings, bullets, table rows and fences of a collapsed body back on lines of their own."""
    pieces = re.split(r"```", flat)
    out = []
    for i, piece in enumerate(pieces):
        if i % 2:   # inside a fence
            first = piece.strip().split(" ", 1)
            lang = first[0].lower() if first[0].lower() in FENCE_LANGS and len(first) > 1 else ""
            content = first[1] if lang else piece.strip()
            out.append(f"\n```{lang}\n{content.strip()}\n```\n")
            continue
        piece = re.sub(r"(?<=[^\\\s])\s+(?=#{1,6} \S)", "\n\n", piece)
        piece = "\n".join(_split_heading(line) for line in piece.split("\n"))
        piece = re.sub(r"(?<=\S)\s+(?=[-*] (?:\*\*|`?[\w][\w .()/-]{0,60}`?:\s))", "\n", piece)
        piece = re.sub(r"\|\s+\|(?=[\s:-]|\w)", "|\n|", piece)
        out.append(piece)
    return "".join(out)


_SENTENCE_START = {"The", "This", "These", "That", "We", "Our", "It", "Its", "If", "Please", "Here", "You",
                   "Your", "They", "Below", "To", "In", "Note", "See", "A", "An", "For"}


def _split_heading(line: str) -> str:
    """A collapsed heading line "## Input Format The model is..." -> the heading, a blank line,
    the text: the heading ends at a bullet, a colon, a sentence start or after ten words."""
    m = re.match(r"(#{1,6} )(.*)", line)
    if not m:
        return line
    words = m.group(2).split(" ")
    for i, w in enumerate(words[1:], start=1):
        rest = " ".join(words[i:])
        if (w in ("-", "*", "```") or words[i - 1].endswith(":") or w in _SENTENCE_START
                or re.match(r"[A-Z][\w-]* (?:is|are|was|were|has|have|can|will)\b", rest) or i >= 10):
            return f"{m.group(1)}{' '.join(words[:i]).rstrip(':')}\n\n{rest}"
    return line


def _heading(line: str) -> tuple[int, str] | None:
    m = re.match(r"\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$", line)
    if not m or not m.group(2):
        return None
    return len(m.group(1)), _plain(m.group(2))


def _plain(text: str) -> str:
    """Markdown emphasis, links and HTML tags taken off a short text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"<[^>]+>", "", text)
    text = re.sub(r"(?<![\w])_{1,3}|_{1,3}(?![\w])", "", re.sub(r"[*`]{1,3}", "", text))
    return text.strip().rstrip(":").strip()


def _pseudo_heading(line: str) -> bool:
    """A short line of its own ending in a colon ("Limitations & Biases:") heads what follows."""
    t = _plain(line.strip().strip("*"))
    return (bool(re.fullmatch(r"[A-Z][\w&/,' ()-]{2,48}", t)) and len(t.split()) <= 5
            and t.split()[0] not in _SENTENCE_START
            and line.strip().rstrip("*").endswith(":"))


def _table_row(line: str) -> tuple[str, ...]:
    cells = line.strip().strip("|").split("|")
    return tuple(c.strip() for c in cells)


def _is_separator(row: tuple[str, ...]) -> bool:
    return all(re.fullmatch(r":?-{2,}:?", c) for c in row if c) and any(row)


def _blocks(body: str) -> list[Block]:
    lines = body.split("\n")
    blocks: list[Block] = []
    stack: list[tuple[int, str]] = []
    para: list[str] = []
    i = 0

    def where():
        return " > ".join(t for _, t in stack)

    def flush():
        if para:
            blocks.append(Block("para", where(), " ".join(s.strip() for s in para)))
            para.clear()

    while i < len(lines):
        line = lines[i]
        fence = re.match(r"\s*(`{3,}|~{3,})\s*([\w+-]*)", line)
        if fence:
            flush()
            close = re.compile(rf"\s*{re.escape(fence.group(1)[0]) * len(fence.group(1))}\s*$")
            j = i + 1
            while j < len(lines) and not close.match(lines[j]):
                j += 1
            blocks.append(Block("fence", where(), "\n".join(lines[i + 1:j]), fence.group(2).lower()))
            i = j + 1
            continue
        head = _heading(line)
        if head:
            flush()
            while stack and stack[-1][0] >= head[0]:
                stack.pop()
            stack.append(head)
        elif line.strip().startswith("|"):
            flush()
            j = i
            rows = []
            while j < len(lines) and lines[j].strip().startswith("|"):
                row = _table_row(lines[j])
                if not _is_separator(row):
                    rows.append(row)
                j += 1
            blocks.append(Block("table", where(), "\n".join(lines[i:j]), rows=tuple(rows)))
            i = j
            continue
        elif re.match(r"\s*(?:[-*+]|\d+[.)])\s+\S", line):
            flush()
            blocks.append(Block("bullet", where(), re.sub(r"^\s*(?:[-*+]|\d+[.)])\s+", "", line)))
        elif _pseudo_heading(line) and not para and (i + 1 >= len(lines) or not lines[i + 1].strip()
                                                      or not _pseudo_heading(lines[i + 1])):
            flush()
            while stack and stack[-1][0] >= 7:
                stack.pop()
            stack.append((7, _plain(line)))
        elif not line.strip() or re.fullmatch(r"\s*(<br\s*/?>|---+|\*\*\*+)\s*", line):
            flush()
        else:
            para.append(line)
        i += 1
    flush()
    return blocks


def leaves(data: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """(key path, value) of every key of a nested mapping, parents before their children."""
    if isinstance(data, dict):
        for k, v in data.items():
            yield (*path, str(k)), v
            yield from leaves(v, (*path, str(k)))


def _configs(blocks: list[Block]) -> list[tuple[Block, dict]]:
    """Fenced blocks that hold a YAML or JSON mapping of three keys or more (a training config)."""
    out = []
    for b in blocks:
        if b.kind != "fence" or b.lang not in ("", "yaml", "yml", "json", "text"):
            continue
        try:
            data = json.loads(b.text) if b.lang == "json" else yaml.safe_load(b.text)
        except (yaml.YAMLError, ValueError):
            continue
        if isinstance(data, dict) and len(list(leaves(data))) >= 3:
            out.append((b, data))
    return out


def parse(text: str) -> Card:
    text = text.replace("\r\n", "\n").lstrip("\ufeff")
    collapsed = is_collapsed(text)
    fm, body = _split_front_matter(text)
    meta, error = {}, None
    if fm is not None:
        try:
            loaded = yaml.safe_load(fm)
            meta = loaded if isinstance(loaded, dict) else {}
        except yaml.YAMLError as e:
            error = str(getattr(e, "problem", None) or e).splitlines()[0]
    if collapsed:
        body = _restore_body(body)
    blocks = _blocks(body)
    return Card(meta, error, blocks, collapsed, body, _configs(blocks))
