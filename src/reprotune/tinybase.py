"""Build the tiny Llama base model used by the ``tiny`` overlay.

``build(spec, text_files, out_dir)`` trains a byte-level BPE tokenizer on the
text found in ``text_files`` and saves it next to a randomly initialised, seeded
``LlamaForCausalLM``.  The result is byte-identical for the same inputs and spec:

* inputs are read in sorted path order, string values are extracted recursively
  in a fixed order (dict keys sorted), the BPE trainer gets one sorted, de-duplicated
  list of lines, and it runs single-threaded (``TOKENIZERS_PARALLELISM`` is only
  a hint; the word counts do not depend on order, but ties are resolved the same
  way every time);
* the model is initialised after ``torch.manual_seed(seed)`` on CPU in fp32;
* everything is written into a temp dir and renamed into place
  (``reprotune.io.atomic_dir``).

Tokenizer conventions follow Llama: ``<unk>`` = 0, ``<s>`` = 1 (bos, added by the
post-processor on encode), ``</s>`` = 2 (eos).  There is no pad token; training pads
with eos.  Special tokens written literally in text (``</s>`` in the oasst and tulu
templates) are matched as the special token.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

from reprotune.io import atomic_dir
from reprotune.twin import _corpus

UNK, BOS, EOS = "<unk>", "<s>", "</s>"

DEFAULTS: dict[str, Any] = {
    "vocab_size": 2048,
    "hidden_size": 64,
    "intermediate_size": 192,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
    "seed": 0,
    "min_frequency": 2,
}


def train_tokenizer(corpus: list[str], vocab_size: int, min_frequency: int = 2):
    """A byte-level BPE ``tokenizers.Tokenizer`` with Llama special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[UNK, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer, length=len(corpus))
    bos_id, eos_id = tok.token_to_id(BOS), tok.token_to_id(EOS)
    assert (tok.token_to_id(UNK), bos_id, eos_id) == (0, 1, 2)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS}:0 $A:0",
        pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1",
        special_tokens=[(BOS, bos_id)],
    )
    return tok


def resolved_spec(spec: dict | None) -> dict:
    out = dict(DEFAULTS)
    for key, value in (spec or {}).items():
        if key in DEFAULTS or key in ("id",):
            out[key] = value
    return out


def build(spec: dict, text_files: list[Path], out_dir: Path) -> dict:
    """Train the tokenizer, initialise the model, save both into ``out_dir``.

    Returns a small summary (vocab size, parameter count, corpus line count).
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    s = resolved_spec(spec)
    corpus = _corpus(list(text_files))
    if not corpus:
        raise ValueError("tinybase: no text found in the given files")
    tok = train_tokenizer(corpus, int(s["vocab_size"]), int(s["min_frequency"]))

    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        add_bos_token=True,
        add_eos_token=False,
        model_max_length=int(s["max_position_embeddings"]),
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )

    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=int(s["hidden_size"]),
        intermediate_size=int(s["intermediate_size"]),
        num_hidden_layers=int(s["num_hidden_layers"]),
        num_attention_heads=int(s["num_attention_heads"]),
        num_key_value_heads=int(s["num_key_value_heads"]),
        max_position_embeddings=int(s["max_position_embeddings"]),
        rms_norm_eps=float(s["rms_norm_eps"]),
        tie_word_embeddings=bool(s["tie_word_embeddings"]),
        bos_token_id=tok.token_to_id(BOS),
        eos_token_id=tok.token_to_id(EOS),
        pad_token_id=None,
        dtype="float32",
    )
    torch.manual_seed(int(s["seed"]))
    model = LlamaForCausalLM(config)
    model.eval()

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        hf_tok.save_pretrained(tmp)
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
    return {
        "vocab_size": tok.get_vocab_size(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "corpus_lines": len(corpus),
    }
