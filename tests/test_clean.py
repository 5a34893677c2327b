"""clean_source on bad input: every malformed row is a counted reject; a wrong file is one line."""
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from reprotune.clean import clean_source
from reprotune.io import read_json, read_jsonl, sha256_file


def _raw_dir(tmp_path, name: str, files: dict[str, bytes]) -> Path:
    """A downloaded-source directory (files + manifest.json) as the download stage leaves it."""
    d = tmp_path / "raw" / name
    d.mkdir(parents=True)
    man = {}
    for rel, data in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(data)
        man[rel] = {"sha256": sha256_file(d / rel), "size": len(data)}
    (d / "manifest.json").write_text(json.dumps({"repo": "org/x", "revision": "mirror", "files": man}))
    return d


def test_malformed_jsonl_rows_are_counted_rejects(tmp_path):
    good = {"instruction": "", "input": "Say hi.", "output": "Hi."}
    lines = [
        json.dumps(good).encode(),
        json.dumps({"instruction": "", "input": "Count."}).encode(),                  # missing key
        json.dumps({"instruction": "", "input": 3, "output": "x"}).encode(),          # wrong type
        json.dumps({"instruction": "", "input": "Q?", "output": None}).encode(),      # null text
        b'{"instruction": "", "input": "Caf\xe9 au lait?", "output": "Oui."}',        # bad UTF-8 (latin-1 byte)
        json.dumps({"instruction": "", "input": "Bad escape", "output": "\udcff"}).encode(),  # lone surrogate
        b"[1, 2]",                                                                      # not an object
        json.dumps({"instruction": "", "input": "Say bye.", "output": "Bye."}).encode(),
        json.dumps(good).encode()[:-9],                                                # truncated last line
    ]
    raw = _raw_dir(tmp_path, "dolphin", {"data.jsonl": b"\n".join(lines) + b"\n"})
    spec = {"name": "dolphin", "format": "dolphin", "files": ["*.jsonl"], "options": {},
            "filters": [{"name": "empty_turns"}, {"name": "exact_dedup"}]}
    report = clean_source(spec, raw, tmp_path / "clean")
    assert report == {
        "source": "dolphin", "format": "dolphin", "files": ["data.jsonl"], "rows_read": 9,
        "reader_rejects": {"bad_json": 1, "bad_type": 2, "bad_utf8": 2, "missing_field": 1, "null_field": 1},
        "filters": [{"name": "empty_turns", "in": 2, "out": 2, "dropped": 0},
                    {"name": "exact_dedup", "in": 2, "out": 2, "dropped": 0}],
        "rows_kept": 2,
    }
    rejects = list(read_jsonl(tmp_path / "clean" / "rejects.jsonl"))
    assert [(r["id"], r["reason"]) for r in rejects] == [
        ("dolphin/1", "missing_field"), ("dolphin/2", "bad_type"), ("dolphin/3", "null_field"),
        ("dolphin/4", "bad_utf8"), ("dolphin/5", "bad_utf8"), ("dolphin/6", "bad_type"), ("dolphin/8", "bad_json")]
    assert "Caf\ufffd au lait?" in rejects[3]["row"]  # the raw line, bad byte shown as U+FFFD
    # every output file is valid UTF-8 JSON lines
    for f in ("records.jsonl", "rejects.jsonl"):
        (tmp_path / "clean" / f).read_bytes().decode("utf-8")
    assert [r["id"] for r in read_jsonl(tmp_path / "clean" / "records.jsonl")] == ["dolphin/0", "dolphin/7"]


def test_bad_utf8_and_non_alternating_rows_in_json_array(tmp_path):
    conv_ok = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]
    body = json.dumps([
        {"id": "a", "conversations": conv_ok},
        {"id": "b", "conversations": [{"from": "human", "value": "BADBYTE"}, {"from": "gpt", "value": "x"}]},
        {"id": "c", "conversations": [{"from": "human", "value": "q"}, {"from": "human", "value": "q2"},
                                      {"from": "gpt", "value": "a"}]},
        {"id": "d", "conversations": conv_ok + [{"from": "human", "value": "more"}]},
    ]).encode().replace(b"BADBYTE", b"\xff\xfe")
    raw = _raw_dir(tmp_path, "sam", {"samantha.json": body})
    spec = {"name": "sam", "format": "sharegpt", "files": ["*.json"], "options": {}, "filters": []}
    report = clean_source(spec, raw, tmp_path / "clean")
    assert report["reader_rejects"] == {"bad_utf8": 1, "last_not_assistant": 1, "non_alternating": 1}
    assert report["rows_read"] == 4 and report["rows_kept"] == 1
    assert [(r["id"], r["reason"]) for r in read_jsonl(tmp_path / "clean" / "rejects.jsonl")] == [
        ("sam/1", "bad_utf8"), ("sam/c", "non_alternating"), ("sam/d", "last_not_assistant")]


def test_schema_mismatch_stops_the_source_with_one_cli_line(tmp_path, capsys):
    from reprotune.cli import main

    buf = pa.BufferOutputStream()
    pq.write_table(pa.table({"id": ["1"], "prompt": ["q"], "response": ["a"]}), buf)
    raw = _raw_dir(tmp_path, "orca", {"data/train.parquet": buf.getvalue().to_pybytes()})
    spec = {"name": "orca", "format": "openorca", "files": ["data/*.parquet"], "options": {}, "filters": []}
    rc = main(["clean", "--spec", json.dumps(spec), "--input", str(raw), "--out", str(tmp_path / "clean")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err == (f"reprotune: error: {raw / 'data/train.parquet'}: missing columns ['question', 'system_prompt']; "
                   "unexpected columns ['prompt']\n")
    assert not (tmp_path / "clean").exists()


def test_clean_with_base_tokenizer_length_filter(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    (tmp_path / "base").mkdir()
    tok.save(str(tmp_path / "base" / "tokenizer.json"))
    rows = [{"instruction": "", "input": "a,b,c,d", "output": "e"}, {"instruction": "", "input": "a b", "output": "c"}]
    raw = _raw_dir(tmp_path, "d", {"x.jsonl": "".join(json.dumps(r) + "\n" for r in rows).encode()})
    spec = {"name": "d", "format": "dolphin", "files": ["*.jsonl"], "options": {},
            "filters": [{"name": "length", "max_tokens": 4, "tokenizer": "base"}],
            "tokenizer_dir": str(tmp_path / "base")}
    report = clean_source(spec, raw, tmp_path / "clean")
    assert report["filters"] == [{"name": "length", "in": 2, "out": 1, "dropped": 1}]  # 8 tokens vs 3 tokens
    assert read_json(tmp_path / "clean" / "report.json") == report


def test_record_line_is_jsonl_line():
    """The direct writer of normalized chat records gives exactly ``jsonl_line``'s text
    (escapes, non-ASCII, separators, key order), and other shapes fall back to it."""
    import random

    from reprotune.clean import record_line
    from reprotune.io import jsonl_line

    rng = random.Random(5)
    pool = [chr(c) for c in range(0x20)] + list('"\\/ abcXYZ019{}[]:,\x7f') + [
        "\u00e9", "\u2028", "\u2029", "\ufeff", "\u4f60", "\U0001F600", "\U00010348", "\udcff"]

    def s(k=12):
        return "".join(rng.choice(pool) for _ in range(rng.randrange(0, k)))

    class Str(str):
        pass

    class Dict(dict):
        pass

    checked = 0
    for i in range(400):
        msgs = [{"role": rng.choice(["user", "assistant"]), "content": s(40)} for _ in range(rng.randrange(0, 4))]
        rec = {"id": s(), "source": s(), "system": s(), "messages": msgs}
        if i % 3 == 0:
            rec["input"] = s()
        variants = [rec, dict(reversed(list(rec.items())))]  # key order in the dict does not matter
        if i % 7 == 0:  # shapes the direct writer leaves to jsonl_line
            variants += [{**rec, "extra": 1}, {**rec, "id": 3}, {**rec, "system": None}, {**rec, "input": 0},
                         {**rec, "messages": tuple(msgs)}, {**rec, "messages": [{"role": "user"}]},
                         {**rec, "messages": [{"role": "user", "content": "x", "name": "n"}]},
                         {**rec, "messages": [Dict(role="user", content="x")]}, {**rec, "source": Str("s")},
                         {"id": s(), "source": s(), "text": s()}, {}]
        for v in variants:
            try:
                expected = jsonl_line(v)
            except ValueError:  # json.dumps cannot write it either
                continue
            assert record_line(v) == expected, v
            checked += 1
    assert checked > 800


def test_openhermes_clean_source_counts(tmp_path):
    """The OpenHermes-2.5 fixture through the generic conversations layout and content filters."""
    hub_file = Path(__file__).resolve().parents[1] / "fixtures/hub/datasets/teknium/OpenHermes-2.5/openhermes2_5.json"
    raw = _raw_dir(tmp_path, "openhermes", {"openhermes2_5.json": hub_file.read_bytes()})
    spec = {"name": "openhermes", "format": "conversations", "files": ["openhermes2_5.json"],
            "options": {"id_key": "id"},
            "filters": [{"name": "empty_turns"}, {"name": "refusals"}, {"name": "exact_dedup"}]}
    report = clean_source(spec, raw, tmp_path / "clean")
    assert report == {
        "source": "openhermes", "format": "conversations", "files": ["openhermes2_5.json"], "rows_read": 38,
        "reader_rejects": {"bad_type": 1, "empty_conversation": 1, "last_not_assistant": 1, "null_field": 1,
                           "system_not_first": 1, "unknown_role": 1},
        "filters": [{"name": "empty_turns", "in": 32, "out": 31, "dropped": 1},
                    {"name": "refusals", "in": 31, "out": 30, "dropped": 1},
                    {"name": "exact_dedup", "in": 30, "out": 28, "dropped": 2}],
        "rows_kept": 28,
    }
    rejects = list(read_jsonl(tmp_path / "clean" / "rejects.jsonl"))
    assert [(r["id"], r["reason"]) for r in rejects][6:] == [
        ("openhermes/4", "filter:refusals"), ("openhermes/9", "filter:empty_turns"),
        ("openhermes/36", "filter:exact_dedup"), ("openhermes/77787563f#2", "filter:exact_dedup")]
