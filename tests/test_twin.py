"""Twin bases: profiles (one YAML per real base), the twin builder (real layout, tokenizer
family, attention shape; deterministic), and the twin served to download_base through a mirror."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from reprotune import bases, download, twin

REPO = Path(__file__).resolve().parents[1]
TEXTS = sorted(p for p in (REPO / "fixtures" / "hub").rglob("*") if p.is_file())


def build(base_id: str, out: Path, steps: int = 3) -> Path:
    twin.build({"profile": bases.get(base_id), "seed": 0, "pretrain": {"steps": steps, "batch_size": 4}},
               TEXTS, out)
    return out / "hub" / "models" / base_id


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("twins")
    return {b: build(b, root / bases.slug(b)) for b in ("meta-llama/Llama-2-70b-hf", "openlm-research/open_llama_13b")}


# ---------------------------------------------------------------------- profiles
def test_every_profile_loads_and_keeps_the_real_attention_ratio():
    assert {"meta-llama/Llama-2-70b-hf", "meta-llama/Llama-2-13b-hf", "openlm-research/open_llama_13b",
            "mistralai/Mistral-7B-v0.1", "Qwen/Qwen2-7B"} <= set(bases.ids())
    for bid in bases.ids():
        p = bases.get(bid)
        full, tw = p["full"], p["twin"]
        assert full["num_attention_heads"] // full["num_key_value_heads"] == \
            tw["num_attention_heads"] // tw["num_key_value_heads"], bid
    assert bases.get("meta-llama/Llama-2-70b-hf")["twin"]["num_key_value_heads"] == 1  # 8:1 GQA
    assert bases.weight_files(bases.get("openlm-research/open_llama_13b")) == [
        "pytorch_model-00001-of-00003.bin", "pytorch_model-00002-of-00003.bin", "pytorch_model-00003-of-00003.bin",
        "pytorch_model.bin.index.json"]


def _profile_error(tmp_path, monkeypatch, edit) -> str:
    data = bases.get("meta-llama/Llama-2-13b-hf")
    edit(data)
    path = tmp_path / "meta-llama--Llama-2-13b-hf.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(bases.BaseProfileError) as e:
        bases._load(path)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_profile_errors_are_one_line_naming_the_key(tmp_path, monkeypatch):
    msg = _profile_error(tmp_path, monkeypatch, lambda d: d["twin"].update(num_key_value_heads=2))
    assert "key 'twin.num_key_value_heads': the twin has 2 query heads per KV head, the real base 1" in msg
    msg = _profile_error(tmp_path, monkeypatch, lambda d: d["twin"].update(hidden_size=96, num_attention_heads=4,
                                                                            num_key_value_heads=4))
    assert "key 'twin.hidden_size': 96 is not a multiple of 64" in msg
    msg = _profile_error(tmp_path, monkeypatch, lambda d: d["tokenizer"].update(files=["tokenizer.json"]))
    assert "key 'tokenizer.files': a sentencepiece_bpe tokenizer ships tokenizer.model, tokenizer_config.json" in msg
    msg = _profile_error(tmp_path, monkeypatch, lambda d: d.update(id="meta-llama/Other"))
    assert "must be the file name" in msg
    msg = _profile_error(tmp_path, monkeypatch, lambda d: d["tokenizer"].update(family="wordpiece"))
    assert "key 'tokenizer.family': 'wordpiece' is not allowed" in msg


def test_unknown_base_names_the_profile_to_add():
    with pytest.raises(bases.BaseProfileError, match=r"no twin profile for base model 'org/none' .* needs "
                                                     r"src/reprotune/bases/org--none.yaml"):
        bases.get("org/none")


# ---------------------------------------------------------------------- the twin
def test_twin_layout_is_the_real_repos(built):
    ol = built["openlm-research/open_llama_13b"]
    names = sorted(p.name for p in ol.iterdir())
    assert names == ["LICENSE", "README.md", "config.json", "generation_config.json",
                     "pytorch_model-00001-of-00003.bin", "pytorch_model-00002-of-00003.bin",
                     "pytorch_model-00003-of-00003.bin", "pytorch_model.bin.index.json",
                     "special_tokens_map.json", "tokenizer.model", "tokenizer_config.json"]
    l70 = built["meta-llama/Llama-2-70b-hf"]
    files = {p.name for p in l70.iterdir()}
    assert {"tokenizer.model", "tokenizer.json", "model.safetensors.index.json", "pytorch_model.bin.index.json"} <= files
    assert len([f for f in files if f.endswith(".safetensors")]) == 15
    assert len([f for f in files if f.endswith(".bin")]) == 15
    assert files == set(bases.repo_files(bases.get("meta-llama/Llama-2-70b-hf")))


def test_twin_config_keeps_the_real_facts(built):
    cfg = json.loads((built["meta-llama/Llama-2-70b-hf"] / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama"
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (8, 1)
    assert cfg["max_position_embeddings"] == 4096 and cfg["rms_norm_eps"] == 1e-05
    assert cfg["rope_parameters"]["rope_theta"] == 10000.0 and cfg["tie_word_embeddings"] is False
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (1, 2, None)
    assert cfg["dtype"] == "float16"
    ol = json.loads((built["openlm-research/open_llama_13b"] / "config.json").read_text())
    assert ol["rms_norm_eps"] == 1e-06 and ol["max_position_embeddings"] == 2048 and ol["pad_token_id"] == 0
    tc = json.loads((built["openlm-research/open_llama_13b"] / "tokenizer_config.json").read_text())
    assert "legacy" not in tc and tc["tokenizer_class"] == "LlamaTokenizer" and tc["add_bos_token"] is True


def test_twin_tokenizer_is_sentencepiece_with_byte_fallback(built):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(built["meta-llama/Llama-2-70b-hf"] / "tokenizer.model"))
    assert [sp.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert sp.piece_to_id("<0x0A>") > 2  # byte fallback pieces
    assert sp.encode("12345", out_type=str) == ["\u2581", "1", "2", "3", "4", "5"]  # split digits, dummy prefix
    assert sp.decode(sp.encode("a  b")) == "a  b"  # Llama-2 keeps runs of spaces
    ol = spm.SentencePieceProcessor(model_file=str(built["openlm-research/open_llama_13b"] / "tokenizer.model"))
    assert ol.decode(ol.encode("a   b")) == "a b"  # OpenLLaMA v1: runs of spaces collapse


def test_twin_loads_with_the_real_classes(built):
    from transformers import AutoConfig, AutoModelForCausalLM

    from reprotune.base_tokenizer import load

    d = built["meta-llama/Llama-2-70b-hf"]
    model = AutoModelForCausalLM.from_pretrained(d)
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype.__str__() == "torch.float16"
    assert model.model.layers[0].self_attn.k_proj.out_features == 32  # one KV head of 32 (8 query heads)
    tok = load(d)
    assert type(tok).__name__ == "LlamaTokenizer" and tok("hi").input_ids[0] == 1
    assert AutoConfig.from_pretrained(d).num_key_value_heads == 1


@pytest.mark.parametrize("base_id,model_class,tok_files", [
    ("mistralai/Mistral-7B-v0.1", "MistralForCausalLM", {"tokenizer.model", "tokenizer.json"}),
    ("Qwen/Qwen2-7B", "Qwen2ForCausalLM", {"vocab.json", "merges.txt", "tokenizer.json"}),
])
def test_other_families_build(tmp_path, base_id, model_class, tok_files):
    from transformers import AutoModelForCausalLM

    from reprotune.base_tokenizer import load

    d = build(base_id, tmp_path / "t", steps=1)
    assert tok_files <= {p.name for p in d.iterdir()}
    model = AutoModelForCausalLM.from_pretrained(d)
    tok = load(d)
    assert type(model).__name__ == model_class
    assert model.config.vocab_size >= len(tok)
    if base_id.startswith("Qwen"):
        assert model.config.vocab_size > len(tok)  # embedding rows beyond the tokenizer, as the real base
        assert tok.bos_token is None and tok.eos_token == "<|endoftext|>"
        assert tok.convert_tokens_to_ids("<|im_end|>") == len(tok) - 1  # the real added tokens, last
        assert model.model.layers[0].self_attn.q_proj.bias is not None  # Qwen2: q/k/v bias


def test_twin_is_deterministic_and_pretraining_lowers_the_loss(tmp_path):
    a = build("meta-llama/Llama-2-13b-hf", tmp_path / "a", steps=30)
    b = build("meta-llama/Llama-2-13b-hf", tmp_path / "b", steps=30)
    assert (tmp_path / "a" / "SHA256SUMS").read_bytes() == (tmp_path / "b" / "SHA256SUMS").read_bytes()
    info = json.loads((tmp_path / "a" / "twin_info.json").read_text())
    assert info["pretrain"]["final_loss_mean10"] < info["pretrain"]["first_loss"] - 1.0
    assert a.exists() and b.exists()


def test_twin_served_through_the_mirror_is_converted_from_bin(built, tmp_path):
    """download_base reads the twin like any mirror; the .bin-only base becomes safetensors."""
    src = built["openlm-research/open_llama_13b"]
    root = src.parents[3]
    out = tmp_path / "base"
    spec = {"id": "openlm-research/open_llama_13b", "revision": None,
            "files": ["pytorch_model-*.bin", "*.json", "tokenizer.model"], "sha256": {},
            "mirror_sums": str(root / "SHA256SUMS")}
    manifest = download.fetch_model(spec, out, root / "hub")
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.endswith(".bin")]
    assert "model-00002-of-00003.safetensors" in names and "model.safetensors.index.json" in names
    assert "tokenizer.json" not in names and "tokenizer.model" in names
    assert sorted(manifest["converted"]) == ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                                              "model-00003-of-00003.safetensors", "model.safetensors.index.json"]
    # a twin file edited after its pins were written is caught like a fixture
    tampered = tmp_path / "mirror"
    shutil.copytree(root, tampered)
    cfg = tampered / "hub" / "models" / "openlm-research" / "open_llama_13b" / "config.json"
    cfg.write_text(cfg.read_text().replace("2048", "4096"))
    with pytest.raises(download.DownloadError, match=r"sha256 mismatch for config.json"):
        download.fetch_model({**spec, "mirror_sums": str(tampered / "SHA256SUMS")}, tmp_path / "b2", tampered / "hub")
