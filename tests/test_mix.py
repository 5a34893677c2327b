import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reprotune import sources
from reprotune.clean import CleanError, clean_source
from reprotune.download import fetch_dataset
from reprotune.io import atomic_write_json, atomic_write_jsonl, read_json, read_jsonl
from reprotune.mix import MixError, mix

REPO_ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- a tiny test reader
def _read_test_qa(files, options=None, source=None):
    """jsonl rows {"q", "a"[, "sys"]}; rows without "q" are rejects (reason missing_q)."""
    source = source or "test_qa"
    i = 0
    for f in files:
        for line in Path(f).read_text().splitlines():
            row = json.loads(line)
            rid = f"{source}/{i}"
            i += 1
            if not isinstance(row.get("q"), str):
                yield {"id": rid, "source": source, "reason": "missing_q", "row": row}
                continue
            yield {"id": rid, "source": source, "system": row.get("sys", ""),
                   "messages": [{"role": "user", "content": row["q"]},
                                {"role": "assistant", "content": row.get("a", "")}]}


@pytest.fixture(autouse=True)
def _test_reader(monkeypatch):
    """Register the test-only reader for this module's tests only."""
    monkeypatch.setitem(sources._REGISTRY, "test_qa", _read_test_qa)


def _mirror(tmp_path):
    repo = tmp_path / "hub" / "datasets" / "org" / "qa"
    (repo / "data").mkdir(parents=True)
    a = [{"q": "Hello?", "a": "Hi there."}, {"q": "Hello?", "a": "Hi there."},   # dup
         {"q": "Who are you?", "a": "As an AI language model, I am nobody."},    # refusal
         {"x": 1},                                                               # reader reject
         {"q": "Name?", "a": ""}]                                                # empty turn
    b = [{"q": "2+2?", "a": "4"}, {"nope": True}, {"q": "Capital of France?", "a": "Paris."}]
    (repo / "data" / "part-0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in a))
    (repo / "data" / "part-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in b))
    (repo / "README.md").write_text("card\n")
    from reprotune.io import sha256_file

    hub = tmp_path / "hub"
    (tmp_path / "SHA256SUMS").write_text("".join(
        f"{sha256_file(p)}  {p.relative_to(hub).as_posix()}\n" for p in sorted(hub.rglob("*")) if p.is_file()))
    return hub


def test_clean_source_end_to_end(tmp_path):
    mirror = _mirror(tmp_path)
    raw = tmp_path / "resources" / "sources" / "r" / "qa"
    fetch_dataset({"name": "qa", "repo": "org/qa", "revision": None, "files": ["data/*.jsonl", "README.md"],
                   "sha256": {}}, raw, mirror)
    spec = {"name": "qa", "format": "test_qa", "files": ["data/part-*.jsonl"], "options": {},
            "filters": [{"name": "empty_turns"}, {"name": "refusals"}, {"name": "exact_dedup"}]}
    out = tmp_path / "results" / "r" / "clean" / "qa"
    report = clean_source(spec, raw, out)
    assert report == {
        "source": "qa", "format": "test_qa", "files": ["data/part-0.jsonl", "data/part-1.jsonl"],
        "rows_read": 8, "reader_rejects": {"missing_q": 2},
        "filters": [{"name": "empty_turns", "in": 6, "out": 5, "dropped": 1},
                    {"name": "refusals", "in": 5, "out": 4, "dropped": 1},
                    {"name": "exact_dedup", "in": 4, "out": 3, "dropped": 1}],
        "rows_kept": 3,
    }
    assert read_json(out / "report.json") == report
    kept = list(read_jsonl(out / "records.jsonl"))
    assert [r["id"] for r in kept] == ["qa/0", "qa/5", "qa/7"]
    rej = list(read_jsonl(out / "rejects.jsonl"))
    assert [(r["id"], r["reason"]) for r in rej] == [
        ("qa/3", "missing_q"), ("qa/6", "missing_q"),
        ("qa/1", "filter:exact_dedup"), ("qa/2", "filter:refusals"), ("qa/4", "filter:empty_turns")]
    # deterministic bytes on rerun
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    clean_source(spec, raw, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    with pytest.raises(CleanError, match="nothing-\\*"):
        clean_source(dict(spec, files=["nothing-*"]), raw, tmp_path / "x")


# ----------------------------------------------------------------------------- mix
def _clean_dir(root: Path, name: str, n: int, system: str = "") -> Path:
    d = root / "clean" / name
    rows = [{"id": f"{name}/{i}", "source": name, "system": system,
             "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(n)]
    atomic_write_jsonl(d / "records.jsonl", rows)
    atomic_write_json(d / "report.json", {
        "source": name, "format": "x", "rows_read": n + 3, "reader_rejects": {"bad": 3},
        "filters": [{"name": "empty_turns", "in": n, "out": n, "dropped": 0}], "rows_kept": n})
    return d


@pytest.fixture()
def cleaned(tmp_path):
    return {"alpha": _clean_dir(tmp_path, "alpha", 60), "beta": _clean_dir(tmp_path, "beta", 40),
            "gamma": _clean_dir(tmp_path, "gamma", 10)}


def _spec(**kw):
    spec = {"recipe": "r", "adapter": "main", "seed": 42,
            "mix": {"alpha": {"fraction": 0.5}, "beta": {"count": 25}, "gamma": {"fraction": 1.0}},
            "validation": {"size": 0}, "system_messages": None}
    spec.update(kw)
    return spec


def test_mix_same_seed_same_bytes_and_report(cleaned, tmp_path):
    r1 = mix(_spec(), cleaned, tmp_path / "m1")
    r2 = mix(_spec(), cleaned, tmp_path / "m2")
    for f in ("train.jsonl", "val.jsonl", "data_report.json"):
        assert (tmp_path / "m1" / f).read_bytes() == (tmp_path / "m2" / f).read_bytes()
    assert r1 == r2 == read_json(tmp_path / "m1" / "data_report.json")
    assert (tmp_path / "m1" / "val.jsonl").read_bytes() == b""
    a = r1["sources"]["alpha"]
    assert a == {"rows_read": 63, "rows_cleaned": 60,
                 "cleaning": {"reader_rejects": {"bad": 3},
                              "filters": [{"name": "empty_turns", "in": 60, "out": 60, "dropped": 0}]},
                 "requested": {"fraction": 0.5}, "available": 60, "taken": 30, "shortfall": 0,
                 "train": 30, "val": 0}
    assert r1["totals"] == {"train": 30 + 25 + 10, "val": 0}
    train = list(read_jsonl(tmp_path / "m1" / "train.jsonl"))
    assert len(train) == 65 and len({r["id"] for r in train}) == 65
    # sampled rows are a subset; the combined set is shuffled (not grouped by source)
    assert [r["source"] for r in train] != sorted(r["source"] for r in train)


def test_mix_different_seed_different_order(cleaned, tmp_path):
    mix(_spec(), cleaned, tmp_path / "a")
    mix(_spec(seed=7), cleaned, tmp_path / "b")
    a = (tmp_path / "a" / "train.jsonl").read_bytes()
    b = (tmp_path / "b" / "train.jsonl").read_bytes()
    assert a != b
    # gamma is taken whole under both seeds: same rows, different order
    ga = [r["id"] for r in read_jsonl(tmp_path / "a" / "train.jsonl") if r["source"] == "gamma"]
    gb = [r["id"] for r in read_jsonl(tmp_path / "b" / "train.jsonl") if r["source"] == "gamma"]
    assert sorted(ga) == sorted(gb) and ga != gb


def test_mix_source_sample_independent_of_other_sources(cleaned, tmp_path):
    r1 = mix(_spec(), cleaned, tmp_path / "a")
    only = {"alpha": cleaned["alpha"]}
    mix(_spec(mix={"alpha": {"fraction": 0.5}}), only, tmp_path / "b")
    ids_a = sorted(r["id"] for r in read_jsonl(tmp_path / "a" / "train.jsonl") if r["source"] == "alpha")
    ids_b = sorted(r["id"] for r in read_jsonl(tmp_path / "b" / "train.jsonl"))
    assert ids_a == ids_b and r1["sources"]["alpha"]["taken"] == 30


def test_fraction_rounding_and_count_shortfall(cleaned, tmp_path):
    rep = mix(_spec(mix={"alpha": {"fraction": 0.01}, "beta": {"count": 100}, "gamma": {"fraction": 0.0}}),
              cleaned, tmp_path / "m")
    assert rep["sources"]["alpha"]["taken"] == 1      # 1% of 60 = 0.6 -> 1
    assert rep["sources"]["beta"]["taken"] == 40
    assert rep["sources"]["beta"]["shortfall"] == 60
    assert rep["sources"]["beta"]["requested"] == {"count": 100}
    assert rep["sources"]["gamma"]["taken"] == 0
    rep = mix(_spec(mix={"alpha": {"fraction": 0.004}}), cleaned, tmp_path / "m2")
    assert rep["sources"]["alpha"]["taken"] == 1      # 0.24 rounds to 0, but at least 1
    rep = mix(_spec(mix={"alpha": {"fraction": 0.125}}), cleaned, tmp_path / "m3")
    assert rep["sources"]["alpha"]["taken"] == 8      # round(7.5) == 8 (banker's rounding)


def test_max_val_per_source(cleaned, tmp_path):
    spec = _spec(mix={"alpha": {"fraction": 1.0, "max_val": 5}, "beta": {"count": 20, "max_val": 50},
                      "gamma": {"fraction": 1.0}}, validation=None)
    rep = mix(spec, cleaned, tmp_path / "m")
    s = rep["sources"]
    assert (s["alpha"]["train"], s["alpha"]["val"]) == (55, 5)
    assert (s["beta"]["train"], s["beta"]["val"]) == (0, 20)
    assert (s["gamma"]["train"], s["gamma"]["val"]) == (10, 0)
    val = list(read_jsonl(tmp_path / "m" / "val.jsonl"))
    train = list(read_jsonl(tmp_path / "m" / "train.jsonl"))
    assert len(val) == 25 and rep["totals"] == {"train": 65, "val": 25}
    assert not ({r["id"] for r in val} & {r["id"] for r in train})
    # val is grouped by source, in file order
    alpha_val = [int(r["id"].split("/")[1]) for r in val if r["source"] == "alpha"]
    assert alpha_val == sorted(alpha_val) and [r["source"] for r in val][:5] == ["alpha"] * 5
    # with a global fraction, max_val caps it
    spec["validation"] = {"fraction": 0.5}
    s = mix(spec, cleaned, tmp_path / "m2")["sources"]
    assert (s["alpha"]["val"], s["beta"]["val"], s["gamma"]["val"]) == (5, 10, 5)


def test_global_validation_size_proportional(cleaned, tmp_path):
    spec = _spec(mix={"alpha": {"fraction": 1.0}, "beta": {"fraction": 1.0}, "gamma": {"fraction": 1.0}},
                 validation={"size": 11})
    s = mix(spec, cleaned, tmp_path / "m")["sources"]
    assert (s["alpha"]["val"], s["beta"]["val"], s["gamma"]["val"]) == (6, 4, 1)
    assert sum(v["train"] + v["val"] for v in s.values()) == 110


def test_system_messages_assigned_to_empty_only(tmp_path):
    dirs = {"a": _clean_dir(tmp_path, "a", 30), "b": _clean_dir(tmp_path, "b", 5, system="fixed")}
    msgs = [f"You are helper #{i}." for i in range(16)]
    spec = _spec(mix={"a": {"fraction": 1.0}, "b": {"fraction": 1.0}},
                 system_messages={"assign_to_empty": True, "messages": msgs})
    rep = mix(spec, dirs, tmp_path / "m")
    train = list(read_jsonl(tmp_path / "m" / "train.jsonl"))
    assert all(r["system"] in msgs for r in train if r["source"] == "a")
    assert all(r["system"] == "fixed" for r in train if r["source"] == "b")
    assert len({r["system"] for r in train if r["source"] == "a"}) > 1
    assert rep["sources"]["a"]["system_messages_assigned"] == 30
    mix(spec, dirs, tmp_path / "m2")
    assert (tmp_path / "m" / "train.jsonl").read_bytes() == (tmp_path / "m2" / "train.jsonl").read_bytes()
    mix(_spec(mix={"a": {"fraction": 1.0}}), dirs, tmp_path / "m3")
    assert all(r["system"] == "" for r in read_jsonl(tmp_path / "m3" / "train.jsonl"))


def test_mix_subprocess_matches_in_process(cleaned, tmp_path):
    spec = _spec(mix={"alpha": {"fraction": 0.7, "max_val": 4}, "beta": {"count": 30}, "gamma": {"fraction": 0.5}},
                 validation={"size": 3})
    mix(spec, cleaned, tmp_path / "inproc")
    args = json.dumps({"spec": spec, "dirs": {k: str(v) for k, v in cleaned.items()},
                       "out": str(tmp_path / "sub")})
    code = ("import json,sys; from pathlib import Path; from reprotune.mix import mix; "
            "a=json.loads(sys.argv[1]); mix(a['spec'], {k: Path(v) for k,v in a['dirs'].items()}, Path(a['out']))")
    env = dict(os.environ, PYTHONHASHSEED="123",
               PYTHONPATH=str(REPO_ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run([sys.executable, "-c", code, args], check=True, env=env, timeout=60)
    for f in ("train.jsonl", "val.jsonl", "data_report.json"):
        assert (tmp_path / "inproc" / f).read_bytes() == (tmp_path / "sub" / f).read_bytes(), f
    assert (tmp_path / "sub" / "val.jsonl").read_bytes() != b""


def test_mix_errors(cleaned, tmp_path):
    with pytest.raises(MixError, match="delta"):
        mix(_spec(mix={"delta": {"fraction": 1.0}}), cleaned, tmp_path / "m")
    with pytest.raises(MixError, match="exactly one"):
        mix(_spec(mix={"alpha": {"fraction": 1.0, "count": 3}}), cleaned, tmp_path / "m")
    with pytest.raises(MixError, match="fraction"):
        mix(_spec(mix={"alpha": {"fraction": 1.5}}), cleaned, tmp_path / "m")
    assert not (tmp_path / "m").exists()
