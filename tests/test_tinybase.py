"""tinybase.build: byte-identical rebuilds, fast, loadable offline, Llama token conventions."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from reprotune import tinybase
from reprotune.io import sha256_file

WORDS = ("the quick brown fox jumps over the lazy dog while the assistant answers a user "
         "question about models data training tokens and prompts").split()


def _write_inputs(root: Path) -> list[Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(400):
        words = [WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(25)]
        rows.append({"id": i, "messages": [{"role": "user", "content": " ".join(words[:10])},
                                            {"role": "assistant", "content": " ".join(words) + f" {i}"}]})
    (root / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (root / "b.json").write_text(json.dumps([{"conversations": [{"from": "human", "value": "héllo wörld ünïcode"}]}]),
                                 encoding="utf-8")
    pq.write_table(pa.table({"question": [f"what is {w}?" for w in WORDS], "n": list(range(len(WORDS)))}),
                   root / "c.parquet")
    return [root / "a.jsonl", root / "b.json", root / "c.parquet"]


def _hashes(d: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(d.iterdir())}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("tinybase")
    files = _write_inputs(root / "in")
    t0 = time.perf_counter()
    summary = tinybase.build({"vocab_size": 512}, files, root / "one")
    seconds = time.perf_counter() - t0
    return root, files, summary, seconds


def test_rebuild_is_byte_identical(built):
    root, files, _, _ = built
    tinybase.build({"vocab_size": 512}, list(reversed(files)), root / "two")  # input order must not matter
    one, two = _hashes(root / "one"), _hashes(root / "two")
    assert one == two
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json"} <= set(one)
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in one)


def test_fast(built):
    assert built[3] < 10.0


def test_different_seed_changes_weights_only(built):
    root, files, _, _ = built
    tinybase.build({"vocab_size": 512, "seed": 1}, files, root / "seed1")
    a, b = _hashes(root / "one"), _hashes(root / "seed1")
    assert a["tokenizer.json"] == b["tokenizer.json"]
    assert a["model.safetensors"] != b["model.safetensors"]


def test_loadable_and_llama_conventions(built):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, _, summary, _ = built
    out = root / "one"
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert (tok.unk_token, tok.bos_token, tok.eos_token) == ("<unk>", "<s>", "</s>")
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.pad_token is None
    ids = tok("the fox</s>")["input_ids"]
    assert ids[0] == 1 and ids[-1] == 2 and ids.count(1) == 1  # bos added, literal </s> is eos
    assert tok.decode(tok("héllo wörld")["input_ids"], skip_special_tokens=True) == "héllo wörld"
    cfg = model.config
    assert cfg.model_type == "llama"
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers) == (64, 192, 2)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (4, 4)
    assert cfg.tie_word_embeddings is False
    assert cfg.vocab_size == len(tok) == summary["vocab_size"] <= 512
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), cfg.vocab_size)


def test_no_text_is_an_error(tmp_path):
    (tmp_path / "empty.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="no text"):
        tinybase.build({}, [tmp_path / "empty.jsonl"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
