"""The tokenize stage (reprotune.dataset): rows byte for byte the in-process encoding, packing
included; bytes independent of the worker count and chunk size; train reads it memory-mapped."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from reprotune import bases, base_tokenizer, dataset, templates, twin
from reprotune.io import read_jsonl
from reprotune.tokenize import encode_dataset, pack

REPO = Path(__file__).resolve().parents[1]
CORPUS = sorted({line for p in (REPO / "fixtures" / "hub" / "datasets" / "allenai").rglob("*.json*")
                 for line in p.read_text(errors="replace").splitlines() if line.strip()} | {"hello world"})


def _records(n: int):
    for i in range(n):
        turns = [{"role": "user", "content": f"question {i}: what is {i} plus {i % 7}?" + " more" * (i % 9)},
                 {"role": "assistant", "content": f"{i} plus {i % 7} is {i + i % 7}." + " yes" * (i % 11)}]
        if i % 5 == 0:
            turns += [{"role": "user", "content": "and twice that?"}, {"role": "assistant", "content": "double."}]
        yield {"id": f"s/{i}", "source": "s", "system": "Be brief." if i % 3 else "", "messages": turns}
    yield {"id": "t/0", "source": "t", "text": "plain text is trained on every token " * 3}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("dataset")
    base = root / "base"
    base.mkdir()
    twin.write_tokenizer(CORPUS, bases.get("meta-llama/Llama-2-13b-hf"), base)
    (base / "config.json").write_text(json.dumps({"model_type": "llama"}))
    data = root / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records(600)))
    (data / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in list(_records(30))[:20]))
    return root


def _spec(packing: bool, max_length: int = 96) -> dict:
    return dataset.spec_for({"recipe": "r", "adapter": "a", "template": "tulu",
                             "train": {"method": "lora", "lora": {"r": 2, "alpha": 4}, "learning_rate": 1e-3,
                                       "per_device_batch_size": 2, "max_length": max_length, "packing": packing}})


def _tree(d: Path) -> dict[str, str]:
    return {p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def _expected(env, packing: bool, max_length: int = 96):
    tok = base_tokenizer.load(env / "base")
    rows, stats = encode_dataset(read_jsonl(env / "data" / "train.jsonl"), templates.get("tulu"), tok, max_length)
    return rows, stats, (pack(rows, max_length) if packing else None)


@pytest.mark.parametrize("packing", [False, True])
def test_rows_are_the_in_process_encoding(env, tmp_path, packing):
    out = tmp_path / "tokens"
    report = dataset.build(_spec(packing), env / "data", env / "base", out)
    rows, stats, packed = _expected(env, packing)
    assert report["train"] == stats and stats["truncated"] > 0 and stats["dropped_no_trainable"] > 0
    assert stats["kept"] == len(rows) > 300
    tokens = dataset.load(out)
    assert tokens.stats == stats and tokens.spec == _spec(packing)
    assert tokens.rows.cache_files  # memory-mapped Arrow files, not an in-memory table
    assert tokens.rows.features["input_ids"].feature.dtype == "int32"
    got = tokens.rows[:]
    want = packed[0] if packing else rows
    assert len(got["input_ids"]) == len(want)
    for key in (("input_ids", "labels", "position_ids", "seq_lens") if packing else ("input_ids", "labels")):
        assert got[key] == [r[key] for r in want], key
    assert got["length"] == [len(r["input_ids"]) for r in want]
    if packing:
        assert report["packing"] == packed[1] and tokens.packing == packed[1]
    assert tokens.probe == [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows[:dataset.PROBE_ROWS]]
    val = dataset.load(out).rows  # the train split; val is written beside it
    assert (out / "val").is_dir() and 0 < report["val"]["kept"] <= 20 and len(val) == len(want)


@pytest.fixture(scope="module")
def qwen_env(tmp_path_factory):
    """A byte-level BPE base (the Qwen2 twin's tokenizer: labels from byte lengths, NFC) and rows with
    multi-byte characters, runs of spaces and decomposed ones NFC would change (those go by offsets)."""
    root = tmp_path_factory.mktemp("dataset-qwen")
    base = root / "base"
    base.mkdir()
    twin.write_tokenizer(CORPUS, bases.get("Qwen/Qwen2-7B"), base)
    (base / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    def extra(i):
        answer = ("cafe\u0301 " if i % 4 == 0 else "") + "\U0001F642  ok" * (i % 5)
        return {"id": f"u/{i}", "source": "u", "system": "",
                "messages": [{"role": "user", "content": f"caf\u00e9 {i}   \u65e5\u672c?" + " x" * (i % 40)},
                             {"role": "assistant", "content": answer}]}

    (root / "data").mkdir()
    (root / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*_records(300), *map(extra, range(120))]))
    return root


@pytest.mark.parametrize("packing", [False, True])
def test_byte_level_rows_are_the_in_process_encoding(qwen_env, tmp_path, packing):
    from reprotune import tokenize

    report = dataset.build(_spec(packing), qwen_env / "data", qwen_env / "base", tmp_path / "tokens")
    tok = base_tokenizer.load(qwen_env / "base")
    assert tokenize.byte_spans(tok) is not None
    rows, stats = encode_dataset(read_jsonl(qwen_env / "data" / "train.jsonl"), templates.get("tulu"), tok, 96)
    assert report["train"] == stats and stats["truncated"] > 0 and stats["kept"] == len(rows) > 200
    want = pack(rows, 96)[0] if packing else rows
    got = dataset.load(tmp_path / "tokens").rows[:]
    for key in (("input_ids", "labels", "position_ids", "seq_lens") if packing else ("input_ids", "labels")):
        assert got[key] == [r[key] for r in want], key
    assert got["length"] == [len(r["input_ids"]) for r in want]


def test_bytes_do_not_depend_on_workers_or_chunks(env, tmp_path):
    one = dataset.build(_spec(True), env / "data", env / "base", tmp_path / "one", threads=1)
    two = dataset.build(_spec(True), env / "data", env / "base", tmp_path / "two", threads=2, chunk_bytes=4096)
    assert len(dataset.line_chunks(env / "data" / "train.jsonl", 4096)) > 4  # several chunks, in two processes
    assert one == two
    assert _tree(tmp_path / "one") == _tree(tmp_path / "two")
    again = dataset.build(_spec(True), env / "data", env / "base", tmp_path / "again", threads=2, chunk_bytes=4096)
    assert _tree(tmp_path / "again") == _tree(tmp_path / "one") and again == one


def test_line_chunks_cover_the_file_at_line_ends(env):
    path = env / "data" / "train.jsonl"
    data = path.read_bytes()
    chunks = dataset.line_chunks(path, 1000)
    assert chunks[0][0] == 0 and chunks[-1][1] == len(data)
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
    assert all(data[e - 1:e] == b"\n" for _, e in chunks)


def test_missing_data_and_foreign_dirs_are_one_line(env, tmp_path):
    with pytest.raises(dataset.DatasetError, match=r"missing training data: .*train.jsonl \(run the mix stage first\)"):
        dataset.build(_spec(False), tmp_path, env / "base", tmp_path / "out")
    with pytest.raises(dataset.DatasetError, match=r"is not a tokenized dataset \(no stats.json"):
        dataset.load(env / "data")


def test_train_refuses_tokens_built_with_other_settings(env, tmp_path):
    from reprotune.train import TrainError, load_rows

    out = tmp_path / "tokens"
    dataset.build(_spec(False), env / "data", env / "base", out)
    spec = {"template": "tulu", "train": {"method": "lora", "lora": {"r": 2, "alpha": 4}, "learning_rate": 1e-3,
                                          "per_device_batch_size": 2, "max_length": 64}}
    with pytest.raises(TrainError, match=r"was tokenized with other settings \(max_length: 96 there, 64 here\); "
                                         r"rerun the tokenize stage"):
        load_rows(out, spec)
    spec["train"]["max_length"] = 96
    assert len(load_rows(out, spec).rows) == dataset.load(out).stats["kept"]


@pytest.mark.parametrize("line", [
    b'{"a": 1, "b": [1.5, "x\\u00e9", null, true]}', b'  {"a": "\xc3\xa9"}\r', b'\t[1, 2]  ',
    '{"a": "é ✓"}'.encode("utf-8-sig"), '{"a": 1}'.encode("utf-16"), '{"a": "b"}'.encode("utf-32-le"),
    b'{"s": "\\ud800"}', b'{"s": "\xed\xa0\x80"}', b'{"n": NaN, "i": -Infinity}', b'{"big": 123456789012345678901234567890}',
    b'{"a": 1} x', b'{"a": 1}{"b": 2}', b'\x0c{"a": 1}', b'{"a": 1}\x0b', b'{"a": ', b'{"a": "\xff"}', b'"just a string"',
    b'{"dup": 1, "dup": 2}', b'{"a": "tab\there"}',
])
def test_loads_is_json_loads(line):
    """The tokenize stage's line parser gives json.loads' value, or its error, on any line."""
    from reprotune.dataset import _loads

    try:
        want = ("ok", json.loads(line))
    except ValueError as e:
        want = (type(e), str(e))
    try:
        got = ("ok", _loads(line))
    except ValueError as e:
        got = (type(e), str(e))
    assert repr(got) == repr(want)  # repr: NaN is not equal to itself
