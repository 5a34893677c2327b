"""Test helper (not a test module): the tokenize stage's output for a train spec, built once per
distinct tokenize settings next to the data dir, as the pipeline's tokenize rule writes it."""
from __future__ import annotations

import hashlib
from pathlib import Path

from reprotune import dataset
from reprotune.io import canonical_json


def tokens_for(data_dir: Path, base_dir: Path, spec: dict) -> Path:
    tspec = dataset.spec_for(spec)
    out = Path(data_dir).parent / f"tokens-{hashlib.sha256(canonical_json(tspec).encode()).hexdigest()[:12]}"
    if not out.exists():
        dataset.build(tspec, Path(data_dir), Path(base_dir), out)
    return out
