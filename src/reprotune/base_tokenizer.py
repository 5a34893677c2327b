"""Load a base model's tokenizer as users have it, with one-line errors.

``load(base_dir, use_fast=True)``:

* ``use_fast=True`` (default): ``AutoTokenizer.from_pretrained`` -- the ``tokenizers`` (Rust)
  tokenizer, from ``tokenizer.json`` or converted from ``tokenizer.model`` (which needs the
  ``sentencepiece`` and ``protobuf`` packages).
* ``use_fast=False`` (recipe key ``tokenizer: {use_fast: false}``): the SentencePiece library
  itself runs ``tokenizer.model`` (``reprotune.slow_tokenizer.SlowLlamaTokenizer`` on transformers'
  ``SentencePieceBackend``: what ``LlamaTokenizer`` was before transformers 5), with the repo's
  ``legacy``, ``add_prefix_space`` and ``add_bos_token``/``add_eos_token`` from ``tokenizer_config.json``. Cards such as OpenLLaMA's tell users to use it because the
  auto-converted fast tokenizer tokenizes some text differently.

A tokenizer that cannot load stops with ``TokenizerLoadError``: one line naming the base
directory and the cause (a missing package, a missing file, an unreadable file), never a
traceback (the CLIs print it as ``reprotune: error: ...``).
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "tokenizer_config.json")
# what a model directory carries of its tokenizer (copied verbatim from the base)
COPIED_FILES = TOKENIZER_FILES + ("special_tokens_map.json", "added_tokens.json")
CHAT_TEMPLATE_FILE = "chat_template.jinja"


class TokenizerLoadError(ValueError):
    """The base model's tokenizer cannot be loaded; one printable line."""


def _missing(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return True
    return False


def _need(base_dir: Path, what: str, packages: tuple[str, ...]) -> None:
    missing = [p for p in packages if _missing(p)]
    if missing:
        names = ", ".join(f"'{p.split('.')[0]}'" for p in missing)
        raise TokenizerLoadError(f"cannot load the tokenizer of {base_dir}: {what} needs the {names} package "
                                 f"(not installed; it is in envs/cpu.lock: make venv)")


def _files(base_dir: Path) -> set[str]:
    if not base_dir.is_dir():
        raise TokenizerLoadError(f"cannot load the tokenizer of {base_dir}: no such directory")
    present = {f for f in TOKENIZER_FILES if (base_dir / f).is_file()}
    if not present - {"tokenizer_config.json"}:
        raise TokenizerLoadError(f"cannot load the tokenizer of {base_dir}: no tokenizer files "
                                 "(tokenizer.json, tokenizer.model, or vocab.json + merges.txt)")
    return present


def tokenizer_config(base_dir: Path) -> dict:
    path = Path(base_dir) / "tokenizer_config.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TokenizerLoadError(f"cannot load the tokenizer of {base_dir}: tokenizer_config.json is not "
                                 f"valid JSON ({e})") from None
    return data if isinstance(data, dict) else {}


def _load_fast(base_dir: Path, files: set[str]):
    from transformers import AutoTokenizer

    if "tokenizer.json" not in files and "tokenizer.model" in files:
        _need(base_dir, "tokenizer.model without tokenizer.json", ("sentencepiece", "google.protobuf"))
    return AutoTokenizer.from_pretrained(base_dir, trust_remote_code=False)


def _special_pattern(cfg: dict) -> str:
    bos, eos = bool(cfg.get("add_bos_token", True)), bool(cfg.get("add_eos_token", False))
    return {(True, False): "bos", (False, True): "eos", (True, True): "bos_eos"}.get((bos, eos), "none")


def _load_slow(base_dir: Path, files: set[str]):
    if "tokenizer.model" not in files:
        raise TokenizerLoadError(f"cannot load a slow tokenizer for {base_dir}: tokenizer.use_fast false needs "
                                 f"a SentencePiece tokenizer.model (the base ships {', '.join(sorted(files))})")
    cfg = tokenizer_config(base_dir)
    legacy = cfg.get("legacy", True)  # LlamaTokenizer's default before transformers 5
    _need(base_dir, "the slow (SentencePiece) tokenizer",
          ("sentencepiece",) + (() if legacy else ("google.protobuf",)))
    from reprotune.slow_tokenizer import SlowLlamaTokenizer

    return SlowLlamaTokenizer.from_pretrained(base_dir, legacy=legacy, special_tokens_pattern=_special_pattern(cfg),
                                              add_prefix_space=cfg.get("add_prefix_space", True))


def load(base_dir, use_fast: bool = True):
    """The tokenizer of a base model (or of a merged model) directory."""
    base_dir = Path(base_dir)
    files = _files(base_dir)
    try:
        tok = _load_fast(base_dir, files) if use_fast else _load_slow(base_dir, files)
    except TokenizerLoadError:
        raise
    except Exception as e:  # transformers raises many kinds; the user needs the cause, in one line
        msg = " ".join(str(e).split()) or type(e).__name__
        raise TokenizerLoadError(f"cannot load the tokenizer of {base_dir}: {type(e).__name__}: {msg[:300]}") from None
    return tok


def copy_tokenizer_files(base_dir, out_dir, chat_template: str | None) -> list[str]:
    """The base's tokenizer files, byte for byte (a SentencePiece base keeps its tokenizer.model
    and gets no converted tokenizer.json), plus ``chat_template.jinja``; returns the names."""
    import shutil

    from reprotune.io import atomic_write_text

    base_dir, out_dir = Path(base_dir), Path(out_dir)
    names = [n for n in COPIED_FILES if (base_dir / n).is_file()]
    for n in names:
        shutil.copyfile(base_dir / n, out_dir / n)
    if chat_template:
        atomic_write_text(out_dir / CHAT_TEMPLATE_FILE, chat_template)
        names.append(CHAT_TEMPLATE_FILE)
    return names


def describe(tok) -> dict:
    """What the card and train_summary say about the tokenizer a stage used."""
    return {"class": type(tok).__name__, "fast": bool(getattr(tok, "is_fast", False)), "vocab_size": len(tok)}
