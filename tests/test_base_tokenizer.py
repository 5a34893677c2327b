"""Tokenizers as users have them: fast and slow (SentencePiece) loading, one-line load errors,
exact assistant-only labels from a slow tokenizer, and the label sanity check."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reprotune import bases, base_tokenizer, templates, twin
from reprotune.tokenize import IGNORE_INDEX, TokenizeError, check_labels, encode_dataset, encode_full, piece_offsets

REPO = Path(__file__).resolve().parents[1]
CORPUS = sorted({line for p in (REPO / "fixtures" / "hub").rglob("*.json*") if p.is_file()
                 for line in p.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()})


def rec(*turns, system="", rid="t/0"):
    roles = ["user", "assistant"]
    return {"id": rid, "source": "t", "system": system,
            "messages": [{"role": roles[i % 2], "content": c} for i, c in enumerate(turns)]}


def _tok_dir(tmp_path_factory, base_id: str) -> Path:
    d = tmp_path_factory.mktemp(bases.slug(base_id))
    profile = bases.get(base_id)
    twin.write_tokenizer(CORPUS, profile, d)
    (d / "config.json").write_text(json.dumps({"model_type": profile["config"]["model_type"]}))
    return d


@pytest.fixture(scope="module")
def llama2_dir(tmp_path_factory):
    return _tok_dir(tmp_path_factory, "meta-llama/Llama-2-13b-hf")


@pytest.fixture(scope="module")
def openllama_dir(tmp_path_factory):
    return _tok_dir(tmp_path_factory, "openlm-research/open_llama_13b")


RECORDS = [
    rec("What is 12 + 30?", "It is 42."),
    rec("Say hi", "Hi there!", "And  twice   spaced?", "Two  spaces  here.", system="Be brief."),
    rec("Ünïcödé ✓ and 日本語", "Ja: 日本語 ✓ überall"),
    rec("trailing space ", " leading space"),
]


@pytest.mark.parametrize("name", ["tulu", "oasst", "fashiongpt", "orca_mini", "alpaca"])
def test_slow_labels_equal_fast_labels_where_the_ids_agree(llama2_dir, name):
    fast, slow = base_tokenizer.load(llama2_dir), base_tokenizer.load(llama2_dir, use_fast=False)
    assert fast.is_fast and not slow.is_fast
    t = templates.get(name)
    for r in RECORDS[:1] + RECORDS[2:] + ([RECORDS[1]] if t.multi_turn else []):
        a, b = encode_full(r, t, fast, 10_000), encode_full(r, t, slow, 10_000)
        assert a["input_ids"] == b["input_ids"]
        assert a["labels"] == b["labels"]
        assert any(lab != IGNORE_INDEX for lab in b["labels"])


def test_slow_piece_offsets_cover_the_text_in_order(openllama_dir):
    """OpenLLaMA v1's whitespace-collapsing normalizer: pieces still align with the raw text."""
    slow = base_tokenizer.load(openllama_dir, use_fast=False)
    text = "### User:\nAnd  twice   spaced?\n\n### Response:\nTwo  spaces  here.</s>"
    ids = slow(text)["input_ids"]
    offs = piece_offsets(slow, text, ids)
    assert offs[0] == (0, 0)  # bos, added by the tokenizer
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(offs, offs[1:]))
    assert offs[-1] == (len(text) - 4, len(text))  # the literal </s>
    pieces = slow.convert_ids_to_tokens(ids)
    for (s, e), p in zip(offs[1:], pieces[1:]):
        if not p.startswith("<0x") and p != "\u2581":  # a lone prefix space takes the next character's span
            assert text[s:e].replace(" ", "") == p.replace("\u2581", "").replace(" ", "")


def test_slow_training_labels_are_exactly_the_answers(openllama_dir):
    slow = base_tokenizer.load(openllama_dir, use_fast=False)
    t = templates.get("orca_mini")
    r = rec("Name a colour.", "Blue, like   the sky.", system="You are an AI assistant.")
    enc = encode_full(r, t, slow, 10_000)
    trained = [i for i, lab in enumerate(enc["labels"]) if lab != IGNORE_INDEX]
    assert trained == list(range(trained[0], len(enc["labels"])))  # one run, to the end (eos)
    assert slow.decode(enc["input_ids"][trained[0]:]) == "Blue, like the sky.</s>"  # v1 merges spaces
    assert enc["input_ids"][-1] == slow.eos_token_id


def test_openllama_fast_and_slow_differ_on_spaces_and_legacy(openllama_dir):
    """The auto-converted fast tokenizer is not the SentencePiece one (the OpenLLaMA card's warning)."""
    fast, slow = base_tokenizer.load(openllama_dir), base_tokenizer.load(openllama_dir, use_fast=False)
    assert fast("a  b").input_ids != slow("a  b").input_ids
    assert fast("a b").input_ids == slow("a b").input_ids


def test_legacy_true_puts_a_space_token_after_eos(tmp_path_factory):
    d = _tok_dir(tmp_path_factory, "mistralai/Mistral-7B-v0.1")  # legacy: true, as the real repo
    for tok in (base_tokenizer.load(d), base_tokenizer.load(d, use_fast=False)):
        pieces = tok.convert_ids_to_tokens(tok("a</s>\nb").input_ids)
        assert pieces[:4] == ["<s>", "\u2581a", "</s>", "\u2581"], pieces


def test_encode_dataset_with_the_slow_tokenizer(llama2_dir):
    fast, slow = base_tokenizer.load(llama2_dir), base_tokenizer.load(llama2_dir, use_fast=False)
    t = templates.get("tulu")
    recs = [rec(f"question {i}?", f"answer number {i}.", rid=f"t/{i}") for i in range(40)]
    rf, sf = encode_dataset(recs, t, fast, 64)
    rs, ss = encode_dataset(recs, t, slow, 64)
    assert rf == rs and sf == ss and sf["kept"] == 40


# ---------------------------------------------------------------------- load errors
def test_slow_needs_tokenizer_model(tmp_path, llama2_dir):
    d = tmp_path / "base"
    shutil.copytree(llama2_dir, d)
    (d / "tokenizer.model").unlink()
    with pytest.raises(base_tokenizer.TokenizerLoadError, match=r"use_fast false needs a SentencePiece tokenizer.model"):
        base_tokenizer.load(d, use_fast=False)


def test_no_tokenizer_files(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(base_tokenizer.TokenizerLoadError, match=r"no tokenizer files"):
        base_tokenizer.load(tmp_path)


def test_bad_tokenizer_config_is_one_line(tmp_path, openllama_dir):
    d = tmp_path / "base"
    shutil.copytree(openllama_dir, d)
    (d / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(base_tokenizer.TokenizerLoadError) as e:
        base_tokenizer.load(d, use_fast=False)
    assert "\n" not in str(e.value) and str(d) in str(e.value)


NO_SENTENCEPIECE = """
import sys
sys.modules["sentencepiece"] = None  # as on a machine without the package
from reprotune.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_tokenizer_model_only_without_sentencepiece_is_one_line(tmp_path, openllama_dir):
    """A base that ships only tokenizer.model, on a machine without sentencepiece: one line, exit 2."""
    clean = tmp_path / "clean" / "s"
    clean.mkdir(parents=True)
    (clean / "records.jsonl").write_text(json.dumps(rec("Q", "A", rid="s/0")) + "\n")
    spec = {"recipe": "r", "adapter": "a", "seed": 0, "mix": {"s": {"fraction": 1.0}}, "validation": {},
            "template": "orca_mini", "tokenizer": {"use_fast": True}}
    r = subprocess.run([sys.executable, "-c", NO_SENTENCEPIECE, "mix", "--spec", json.dumps(spec),
                        "--clean", f"s={clean}", "--tokenizer", str(openllama_dir), "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("reprotune: error:")]
    assert errors == [f"reprotune: error: cannot load the tokenizer of {openllama_dir}: tokenizer.model without "
                      "tokenizer.json needs the 'sentencepiece' package (not installed; it is in envs/cpu.lock: "
                      "make venv)"], r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------- label sanity
class _ShiftedOffsets:
    """A broken fast tokenizer: its offsets point one token too early, so labels miss the answers."""

    backend_tokenizer = None  # no Rust shortcut: encode_dataset reads this tokenizer's offsets

    def __init__(self, tok):
        self._tok = tok
        self.is_fast = True

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __call__(self, text, **kw):
        enc = self._tok(text, **kw)
        if "offset_mapping" in enc:
            offs = list(enc["offset_mapping"])
            enc["offset_mapping"] = offs[1:] + [(len(text), len(text))]
        return enc


class _OnlySpecialOffsets(_ShiftedOffsets):
    """Offsets are (0, 0) for every ordinary token: only the literal </s> lands inside an answer."""

    def __call__(self, text, **kw):
        enc = self._tok(text, **kw)
        if "offset_mapping" in enc:
            ids = enc["input_ids"]
            enc["offset_mapping"] = [(s, e) if i == self._tok.eos_token_id else (0, 0)
                                     for i, (s, e) in zip(ids, enc["offset_mapping"])]
        return enc


def test_label_sanity_stops_a_tokenizer_that_trains_only_end_of_turn(llama2_dir):
    fast = base_tokenizer.load(llama2_dir)
    broken = _OnlySpecialOffsets(fast)
    recs = [rec(f"question {i}?", f"the answer is {i}.", rid=f"t/{i}") for i in range(5)]
    with pytest.raises(TokenizeError, match=r"template 'tulu' with this tokenizer trains no assistant content: "
                                            r"0 of \d+ answer characters are trained .*row t/0: trained tokens "
                                            r"decode to '</s>"):
        encode_dataset(recs, templates.get("tulu"), broken, 64)


def test_label_sanity_stops_offsets_that_miss_the_answers(llama2_dir):
    broken = _ShiftedOffsets(base_tokenizer.load(llama2_dir))
    recs = [rec(f"question {i}?", f"the answer is {i}.", rid=f"t/{i}") for i in range(5)]
    with pytest.raises(TokenizeError, match=r"trains tokens outside the answers: row t/0"):
        encode_dataset(recs, templates.get("oasst"), broken, 64)


def test_label_sanity_passes_real_rows_and_short_answers(llama2_dir):
    fast = base_tokenizer.load(llama2_dir)
    t = templates.get("tulu")
    rows = [(r["id"], *_sample(r, t, fast)) for r in RECORDS]
    check_labels(rows, fast, "tulu")  # no error


def _sample(r, t, tok):
    from _tokens import trainable_spans

    segs = t.render_segments(r, tok.eos_token)
    enc = encode_full(r, t, tok, 10_000)
    return enc["text"], trainable_spans(segs), enc["input_ids"], enc["labels"]
