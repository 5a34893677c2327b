"""The hash-locked environments (envs/*.in -> envs/*.lock): what each installs, and what not."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pins(path: Path) -> dict[str, str]:
    """name -> version of a lock (or of the `name==version` lines of a spec)."""
    text = path.read_text()
    return {m.group(1).lower().replace("_", "-"): m.group(2)
            for m in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+?)(?: \\)?$", text, re.M)}


@pytest.mark.parametrize("extra", ["slurm", "bench"])
def test_extra_locks_hold_only_their_own_packages(extra):
    """Installed with --no-deps on top of .venv: they name their spec's packages only, never
    torch nor anything of envs/cpu.lock, so they cannot replace what .venv has."""
    lock, spec, cpu = pins(ROOT / f"envs/{extra}.lock"), pins(ROOT / f"envs/{extra}.in"), pins(ROOT / "envs/cpu.lock")
    assert lock == spec and lock
    assert not set(lock) & set(cpu)
    assert "--hash=sha256:" in (ROOT / f"envs/{extra}.lock").read_text()


def test_slurm_plugins_are_not_in_the_default_environments():
    for env in ("cpu", "cuda"):
        assert not [p for p in pins(ROOT / f"envs/{env}.lock") if p.startswith("snakemake-executor-plugin")], env


def test_sentencepiece_and_protobuf_are_in_the_cpu_and_cuda_sets():
    for env in ("cpu", "cuda"):
        locked = pins(ROOT / f"envs/{env}.lock")
        assert locked["sentencepiece"] == "0.2.3" and "protobuf" in locked, env


def test_a_base_that_ships_only_tokenizer_model_loads(tmp_path):
    """A SentencePiece-only tokenizer (no tokenizer.json), as some base models ship it."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"the quick brown fox {i} jumps over the lazy dog {i * 7}\n" for i in range(300)))
    model = tmp_path / "model"
    model.mkdir()
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(model / "tokenizer"), vocab_size=64,
                                   model_type="unigram", num_threads=1, minloglevel=2)
    (model / "tokenizer.vocab").unlink()
    (model / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
    tok = AutoTokenizer.from_pretrained(model)
    ids = tok("the lazy fox", add_special_tokens=False).input_ids
    assert ids and tok.decode(ids) == "the lazy fox"
