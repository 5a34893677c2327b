"""``python -m reprotune import-card CARD --id ID --out PATH``: write the draft, list its TODOs
and notes."""
from __future__ import annotations

import re
from pathlib import Path

from reprotune.io import atomic_write_text

from . import draft


class CardImportError(ValueError):
    """A card that cannot be read, or an output that would be overwritten (one line)."""


def run(card: Path, recipe_id: str, out: Path, base_revision: str | None = None, force: bool = False) -> int:
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]*", recipe_id):
        raise CardImportError(f"--id {recipe_id!r}: a recipe id is lowercase letters, digits, '.' and '-'")
    if card.is_dir():   # a model repo checkout: its card is README.md
        card = card / "README.md"
    try:
        text = card.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CardImportError(f"{card}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CardImportError(f"{card}: cannot read the card ({e})") from None
    if out.exists() and not force:
        raise CardImportError(f"{out} exists; pass --force to overwrite it")
    d = draft(text, recipe_id, base_revision)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, d.yaml)
    for key, question in d.todos:
        print(f"TODO  {key}: {question}")
    for note in d.notes:
        print(f"note  {note}")
    print(f"wrote {out}: {len(d.sources)} values from the card, {len(d.todos)} TODOs, {len(d.notes)} notes")
    return 0
