"""The slow (SentencePiece-library) Llama tokenizer, as ``LlamaTokenizer`` was before transformers 5.

transformers 5 keeps a generic ``SentencePieceBackend`` (the SentencePiece library runs
``tokenizer.model``); its Llama-specific part for ``legacy: false`` is gone: text starts with the
``\u2581`` word-boundary prefix once, and chunks after special tokens get none. This subclass
restores exactly that (``legacy: true`` needs nothing: every chunk gets SentencePiece's dummy
prefix, so text right after ``</s>`` begins with an extra ``\u2581`` token, as the real Llama
tokenizers did). Imported only once ``sentencepiece`` is known to be installed.
"""
from __future__ import annotations

from transformers.tokenization_utils_sentencepiece import SPIECE_UNDERLINE, SentencePieceBackend


class SlowLlamaTokenizer(SentencePieceBackend):
    """``LlamaTokenizer`` (slow) semantics on transformers 5's SentencePiece backend."""

    def __init__(self, add_prefix_space: bool = True, **kwargs):
        self.add_prefix_space = bool(add_prefix_space)
        super().__init__(**kwargs)

    def tokenize(self, text, **kwargs):
        if self.legacy or not text:
            return super().tokenize(text, **kwargs)
        text = text.replace(SPIECE_UNDERLINE, " ")
        if self.add_prefix_space:
            text = SPIECE_UNDERLINE + text
        tokens = super().tokenize(text, **kwargs)
        if len(tokens) > 1 and tokens[0] == SPIECE_UNDERLINE and tokens[1] in self.all_special_tokens:
            tokens = tokens[1:]
        return tokens

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """SentencePiece's own decode (byte-fallback pieces become their characters) between
        special tokens, which are written as they are."""
        specials = set(self.all_special_tokens)
        out, run = [], []
        for tok in tokens:
            if tok in specials:
                out.append(self.sp_model.decode(run))
                out.append(tok)
                run = []
            else:
                run.append(tok)
        out.append(self.sp_model.decode(run))
        return "".join(out)
