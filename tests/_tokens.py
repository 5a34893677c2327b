"""Test helper (not a test module): the tokenize stage's output for a train spec, built once per
distinct tokenize settings next to the data dir, as the pipeline's tokenize rule writes it."""
from __future__ import annotations

import hashlib
from pathlib import Path

from reprotune import dataset
from reprotune.io import canonical_json


def trainable_spans(segments: list[tuple[str, bool]]) -> list[tuple[int, int]]:
    """The ``[start, end)`` character spans of the trainable pieces of ``(text, trainable)`` segments,
    touching ones merged: the reference ``Template.render_spans`` is checked against."""
    spans: list[tuple[int, int]] = []
    pos = 0
    for text, trainable in segments:
        end = pos + len(text)
        if trainable and end > pos:
            if spans and spans[-1][1] == pos:
                spans[-1] = (spans[-1][0], end)
            else:
                spans.append((pos, end))
        pos = end
    return spans


def tokens_for(data_dir: Path, base_dir: Path, spec: dict) -> Path:
    tspec = dataset.spec_for(spec)
    out = Path(data_dir).parent / f"tokens-{hashlib.sha256(canonical_json(tspec).encode()).hexdigest()[:12]}"
    if not out.exists():
        dataset.build(tspec, Path(data_dir), Path(base_dir), out)
    return out
