"""Build the *twin* of a real base model: a deterministic, scaled-down copy in the real repo layout.

``build(spec, text_files, out_root)`` writes a one-repo Hub mirror::

    out_root/hub/models/<org>/<name>/   config.json, generation_config.json, tokenizer files,
                                        weight shards (+ index) in the formats the real repo ships,
                                        the real repo's other files (placeholder text)
    out_root/SHA256SUMS                 the mirror's pins (sha256sum format, paths from hub/)
    out_root/twin_info.json             what was built: sizes, tokenizer, pre-training losses

which ``download_base`` then reads through the same code as a Hub mirror (``reprotune.download``),
so the tiny build runs the base download, its pins, its layout (and, for a ``.bin``-only base,
the pickle -> safetensors conversion) exactly as full scale does.

``spec``: ``{"profile": <base profile, reprotune.bases>, "seed": int,
"pretrain": {"steps", "batch_size", "seq_len", "learning_rate"}}``.

What the twin keeps from the real base (its profile): architecture and model class, the
query-heads : KV-heads ratio, rope_theta, norm epsilon, max positions, tied or untied
embeddings, special tokens and their ids, dtype, the tokenizer family and the tokenizer
files the repo ships (``tokenizer.json`` only where the real repo has one), the
``tokenizer_config.json`` keys (tokenizer class, ``legacy``, add_bos/add_eos) and the shard
layout. What it scales down: sizes (``twin`` of the profile) and the vocabulary, which is
trained on the fixture text:

* ``sentencepiece_bpe`` (Llama, Mistral, OpenLLaMA): a SentencePiece BPE model with the real
  normalizer facts (byte fallback, split digits, dummy prefix, whitespace handling), unk/bos/eos
  = 0/1/2, saved as ``tokenizer.model``; ``tokenizer.json`` is transformers' own conversion of it.
* ``byte_level_bpe`` (Qwen2): a byte-level BPE (``tokenizers``) with the real split regex and
  the real added tokens, saved as ``vocab.json`` + ``merges.txt`` + ``tokenizer.json``.

The model is initialised from a seed and briefly pre-trained on the same text (full-parameter
AdamW, fp32, one thread, seeded sampling), so that fine-tuning visibly moves it; weights are then
cast to the real dtype. Every step is deterministic: the same spec and texts give the same bytes
(``.bin`` shards are pickled into memory first, so the archive name does not depend on a temp path).
"""
from __future__ import annotations

import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterator

from reprotune.io import atomic_dir, atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_file

log = logging.getLogger(__name__)

DTYPES = ("float32", "float16", "bfloat16")
SP_IDS = {"unk_token": 0, "bos_token": 1, "eos_token": 2}
PRETRAIN_DEFAULTS = {"steps": 200, "batch_size": 16, "seq_len": 128, "learning_rate": 3e-3}


class TwinError(ValueError):
    """The twin cannot be built (bad profile or inputs); one printable line."""


# --------------------------------------------------------------------------- text
def _strings(obj: Any) -> Iterator[str]:
    """All string values of a JSON-like object, depth first, dict keys sorted."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for key in sorted(obj, key=str):
            yield from _strings(obj[key])
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _strings(item)
    elif hasattr(obj, "tolist"):  # numpy arrays inside parquet rows
        yield from _strings(obj.tolist())


def iter_texts(path: Path) -> Iterator[str]:
    """Every string value in one .jsonl / .json / .parquet / .txt file."""
    name = path.name.lower()
    if name.endswith(".jsonl"):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    # a truncated/malformed line (the fixtures plant some for the
                    # readers' reject tests): the raw line is still text to learn from
                    obj = line
                yield from _strings(obj)
    elif name.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            yield from _strings(json.load(f))
    elif name.endswith(".parquet"):
        import pyarrow.parquet as pq

        yield from _strings(pq.read_table(path).to_pylist())
    elif name.endswith(".csv"):
        import csv

        with open(path, encoding="utf-8", newline="") as f:
            for row in csv.reader(f):
                yield from row
    elif name.endswith(".txt"):
        yield path.read_text(encoding="utf-8")
    else:
        raise TwinError(f"cannot read text from {path} (a twin reads .jsonl, .json, .parquet, .csv and .txt files)")


def _corpus(text_files: list[Path]) -> list[str]:
    lines: set[str] = set()
    for path in sorted(Path(p) for p in text_files):
        for text in iter_texts(path):
            for line in text.splitlines():
                if line.strip():
                    lines.add(line)
    return sorted(lines)


# --------------------------------------------------------------------------- tokenizers
def _sentencepiece_model(corpus: list[str], profile: dict) -> bytes:
    import sentencepiece as spm

    tok = profile["tokenizer"]
    sp = tok["sentencepiece"]
    specials = tok["special_tokens"]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=buf, model_type="bpe",
        vocab_size=int(profile["twin"]["vocab_size"]), hard_vocab_limit=False,
        byte_fallback=bool(sp.get("byte_fallback", True)), split_digits=bool(sp.get("split_digits", True)),
        add_dummy_prefix=bool(sp.get("add_dummy_prefix", True)),
        remove_extra_whitespaces=bool(sp.get("remove_extra_whitespaces", False)),
        normalization_rule_name="identity", allow_whitespace_only_pieces=True, character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, unk_piece=specials.get("unk_token", "<unk>"),
        bos_piece=specials.get("bos_token", "<s>"), eos_piece=specials["eos_token"],
        num_threads=1, max_sentence_length=1 << 16, shuffle_input_sentence=False, minloglevel=2)
    return buf.getvalue()


def _tokenizer_config(profile: dict, extra: dict | None = None) -> dict:
    tok = profile["tokenizer"]
    cfg = dict(tok["tokenizer_config"])
    cfg.update(tok["special_tokens"])
    cfg.update(extra or {})
    return cfg


def _write_sentencepiece(corpus: list[str], profile: dict, repo: Path) -> None:
    from transformers import AutoTokenizer

    files = set(profile["tokenizer"]["files"])
    atomic_write_bytes(repo / "tokenizer.model", _sentencepiece_model(corpus, profile))
    atomic_write_json(repo / "tokenizer_config.json", _tokenizer_config(profile))
    if "special_tokens_map.json" in files:
        atomic_write_json(repo / "special_tokens_map.json", dict(profile["tokenizer"]["special_tokens"]))
    if "tokenizer.json" in files:
        # transformers' own conversion of tokenizer.model, as the real repos' tokenizer.json was made
        fast = AutoTokenizer.from_pretrained(repo)
        atomic_write_text(repo / "tokenizer.json", fast.backend_tokenizer.to_str(pretty=True) + "\n")


def _byte_level_bpe(corpus: list[str], profile: dict):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok_spec = profile["tokenizer"]
    added = list(tok_spec.get("added_tokens", []))
    tok = Tokenizer(models.BPE(byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    split = [pre_tokenizers.Split(Regex(tok_spec["split_pattern"]), behavior="isolated")] \
        if tok_spec.get("split_pattern") else []
    tok.pre_tokenizer = pre_tokenizers.Sequence(split + [pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                                  use_regex=not split)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=int(profile["twin"]["vocab_size"]) - len(added), min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer, length=len(corpus))
    tok.add_special_tokens(added)
    return tok


def _write_byte_level(corpus: list[str], profile: dict, repo: Path) -> None:
    import tempfile

    tok = _byte_level_bpe(corpus, profile)
    with tempfile.TemporaryDirectory() as d:
        tok.model.save(d)
        for name in ("vocab.json", "merges.txt"):
            atomic_write_bytes(repo / name, (Path(d) / name).read_bytes())
    atomic_write_text(repo / "tokenizer.json", tok.to_str(pretty=True) + "\n")
    decoder = {str(tok.token_to_id(t)): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                         "single_word": False, "special": True}
               for t in profile["tokenizer"].get("added_tokens", [])}
    atomic_write_json(repo / "tokenizer_config.json", _tokenizer_config(profile, {"added_tokens_decoder": decoder}))


def write_tokenizer(corpus: list[str], profile: dict, repo: Path):
    """Train the twin's tokenizer, write the files the real repo ships, return it loaded (fast)."""
    from transformers import AutoTokenizer

    family = profile["tokenizer"]["family"]
    {"sentencepiece_bpe": _write_sentencepiece, "byte_level_bpe": _write_byte_level}[family](corpus, profile, repo)
    return AutoTokenizer.from_pretrained(repo)


# --------------------------------------------------------------------------- model
def _token_id(tokenizer, key: str, value: Any) -> Any:
    """``*_token_id`` values of the profile: an int is kept, a token name becomes the twin's id."""
    if isinstance(value, str):
        tid = tokenizer.convert_tokens_to_ids(value)
        if tid is None or tid == tokenizer.unk_token_id and value != tokenizer.unk_token:
            raise TwinError(f"profile config key {key!r}: token {value!r} is not in the twin's tokenizer")
        return tid
    return value


def twin_config(profile: dict, tokenizer):
    """The real config.json facts with the twin's sizes (and a vocabulary that fits the tokenizer)."""
    from transformers import AutoConfig

    facts = {k: v for k, v in profile["config"].items() if k not in ("model_type", "dtype")}
    sizes = dict(profile["twin"])
    multiple = int(profile["tokenizer"].get("embedding_multiple", 1))
    sizes["vocab_size"] = int(math.ceil(len(tokenizer) / multiple) * multiple)
    for key, value in list(facts.items()):
        if key.endswith("_token_id"):
            facts[key] = _token_id(tokenizer, key, value)
    facts.update(sizes)  # the twin's sizes (and any config key it scales down) win
    dtype = profile["config"].get("dtype", "float32")
    if dtype not in DTYPES:
        raise TwinError(f"profile config key 'dtype': {dtype!r} (expected one of {', '.join(DTYPES)})")
    return AutoConfig.for_model(profile["config"]["model_type"], **facts, dtype=dtype)


def _blocks(tokenizer, corpus: list[str], seq_len: int):
    """The corpus as one token stream (each line: its encoding + eos), cut into ``seq_len`` blocks."""
    import torch

    ids: list[int] = []
    for enc in tokenizer(corpus, add_special_tokens=True)["input_ids"]:
        ids.extend(enc)
        ids.append(tokenizer.eos_token_id)
    n = len(ids) // seq_len
    if n < 1:
        raise TwinError(f"the fixture text has {len(ids)} tokens, fewer than one block of {seq_len}")
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def pretrain(model, blocks, settings: dict, seed: int) -> list[float]:
    """A short full-parameter pre-training run (warmup then cosine); returns the loss per step."""
    import torch

    steps, batch = int(settings["steps"]), int(settings["batch_size"])
    lr = float(settings["learning_rate"])
    warm = max(1, steps // 10)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.1 + 0.45 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
    model.train()
    losses = []
    for _ in range(steps):
        x = blocks[torch.randint(0, blocks.shape[0], (batch,), generator=gen)]
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(round(float(loss.detach()), 6))
    model.eval()
    return losses


# --------------------------------------------------------------------------- layout
def _shards(state: dict, n: int) -> list[list[str]]:
    """Split the ordered tensor names into ``n`` contiguous shards of about equal bytes."""
    import bisect
    import itertools

    names = list(state)
    if n > len(names):
        raise TwinError(f"the twin has {len(names)} tensors, fewer than the {n} shards of the real layout")
    ends = list(itertools.accumulate(state[k].numel() * state[k].element_size() for k in names))
    cuts = [0]
    for k in range(1, n):
        cut = bisect.bisect_left(ends, k * ends[-1] / n) + 1
        cuts.append(min(max(cut, cuts[-1] + 1), len(names) - (n - k)))  # every shard keeps >= 1 tensor
    cuts.append(len(names))
    return [names[a:b] for a, b in zip(cuts, cuts[1:])]


def _write_format(state: dict, fmt: str, n: int, repo: Path) -> None:
    import torch
    from safetensors.torch import save

    prefix, ext = ("model", "safetensors") if fmt == "safetensors" else ("pytorch_model", "bin")
    groups = _shards(state, n)
    weight_map, total = {}, 0
    for i, names in enumerate(groups, 1):
        fname = f"{prefix}.{ext}" if n == 1 else f"{prefix}-{i:05d}-of-{n:05d}.{ext}"
        part = {k: state[k].contiguous() for k in names}
        if fmt == "safetensors":
            data = save(part, metadata={"format": "pt"})
        else:
            buf = io.BytesIO()
            torch.save(part, buf)  # a file object: the archive name is fixed ("archive"), bytes deterministic
            data = buf.getvalue()
        atomic_write_bytes(repo / fname, data)
        weight_map.update({k: fname for k in names})
        total += sum(t.numel() * t.element_size() for t in part.values())
    if n > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        atomic_write_json(repo / f"{prefix}.{ext}.index.json", index)


def write_weights(model, profile: dict, repo: Path) -> None:
    import torch

    dtype = getattr(torch, profile["config"].get("dtype", "float32"))
    state = {k: v.detach().to(dtype) for k, v in model.state_dict().items()}
    for fmt in sorted(profile["weights"]):
        _write_format(state, fmt, int(profile["weights"][fmt]), repo)


def _readme(profile: dict) -> str:
    t = profile["twin"]
    return (f"# Twin of {profile['id']}\n\nA deterministic, scaled-down copy of {profile['id']} built by "
            "reprotune for tiny rehearsal builds: the real repository's layout, config facts, tokenizer "
            f"family and attention shape ({t['num_attention_heads']} query heads, "
            f"{t['num_key_value_heads']} KV heads), with {t['num_hidden_layers']} layers of width "
            f"{t['hidden_size']} and a vocabulary trained on the fixture text. Not a usable language model.\n")


def write_sums(root: Path, out: Path) -> None:
    lines = [f"{sha256_file(p)}  {p.relative_to(root).as_posix()}\n"
             for p in sorted(root.rglob("*")) if p.is_file()]
    atomic_write_text(out, "".join(lines))


# --------------------------------------------------------------------------- build
def _settings(spec: dict) -> tuple[dict, dict, int]:
    profile = spec.get("profile")
    if not isinstance(profile, dict) or "id" not in profile:
        raise TwinError("twin spec has no base profile")
    pre = {**PRETRAIN_DEFAULTS, **(spec.get("pretrain") or {})}
    return profile, pre, int(spec.get("seed", 0))


def build(spec: dict, text_files: list[Path], out_root: Path, threads: int = 1) -> dict:
    """Build the twin mirror under ``out_root`` (atomically); return ``twin_info``.

    ``threads``: torch threads while building (1 in the pipeline, for bytes that do not depend
    on the machine; the GPU rehearsal's ~1B twin uses every core)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    profile, pre, seed = _settings(spec)
    corpus = _corpus(list(text_files))
    if not corpus:
        raise TwinError("no text found in the given files")
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with atomic_dir(Path(out_root)) as tmp:
            repo = tmp / "hub" / "models" / profile["id"]
            repo.mkdir(parents=True)
            tokenizer = write_tokenizer(corpus, profile, repo)
            config = twin_config(profile, tokenizer)
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            losses = pretrain(model, _blocks(tokenizer, corpus, int(pre["seq_len"])), pre, seed)
            config.dtype = profile["config"].get("dtype", "float32")  # the real dtype (weights are cast to it)
            config.save_pretrained(repo)
            GenerationConfig.from_model_config(config).save_pretrained(repo)
            write_weights(model, profile, repo)
            for name in profile.get("other_files", []):
                atomic_write_text(repo / name, _readme(profile) if name == "README.md" else
                                  f"Placeholder for {name} of {profile['id']} (twin built by reprotune).\n")
            info = _info(profile, model, tokenizer, corpus, losses, pre)
            write_sums(tmp / "hub", tmp / "SHA256SUMS")
            atomic_write_json(tmp / "twin_info.json", info)
    finally:
        torch.set_num_threads(saved)
    log.info("twin of %s: %d parameters, vocab %d, pre-training loss %.3f -> %.3f", profile["id"],
             info["parameters"], info["vocab_size"], losses[0] if losses else float("nan"),
             losses[-1] if losses else float("nan"))
    return info


def _info(profile: dict, model, tokenizer, corpus: list[str], losses: list[float], pre: dict) -> dict:
    tail = losses[-10:] or [float("nan")]
    return {
        "base_model": profile["id"], "twin": True, "model_class": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()), "vocab_size": len(tokenizer),
        "tokenizer_class": type(tokenizer).__name__, "corpus_lines": len(corpus),
        "sizes": dict(profile["twin"]), "pretrain": {**pre, "first_loss": losses[0] if losses else None,
                                                      "final_loss_mean10": round(sum(tail) / len(tail), 6)},
    }
