"""Lock files: entries, staleness, concurrent updates, plan plumbing."""
import json
import multiprocessing as mp

import pytest

from reprotune import lock, plan


def _entry(rev="a" * 40, files=None):
    return lock.make_entry("org/ds", "dataset", None, ["data/*.parquet"], rev,
                           files or {"data/x.parquet": {"sha256": "1" * 64, "size": 3}})


def test_set_and_get_entry_canonical(tmp_path):
    p = tmp_path / "r.lock.json"
    assert lock.read_lock(p) is None and lock.get_entry(p, "sources/ds") is None
    lock.set_entry(p, "r", "sources/ds", _entry())
    lock.set_entry(p, "r", "base_model", lock.make_entry("org/m", "model", "main", ["*.json"], "b" * 40,
                                                         {"config.json": {"sha256": "2" * 64, "size": 2}}))
    data = json.loads(p.read_text())
    assert p.read_text() == json.dumps(data, sort_keys=True, indent=2) + "\n"
    assert data["version"] == 1 and data["recipe"] == "r"
    assert lock.get_entry(p, "sources/ds")["revision"] == "a" * 40
    assert lock.get_entry(p, "base_model")["requested_revision"] == "main"
    with pytest.raises(lock.LockError, match="belongs to recipe 'r'"):
        lock.set_entry(p, "other", "sources/ds", _entry())
    with pytest.raises(lock.LockError, match="bad lock key"):
        lock.get_entry(p, "weird")


def test_bad_lock_file_is_one_line_error(tmp_path):
    p = tmp_path / "r.lock.json"
    p.write_text("{not json")
    with pytest.raises(lock.LockError, match="cannot read lock file"):
        lock.read_lock(p)
    p.write_text('{"version": 99}')
    with pytest.raises(lock.LockError, match="not a version-1"):
        lock.read_lock(p)


def test_stale_reasons():
    e = _entry()
    assert lock.stale_reason(e, "org/ds", "dataset", None, ["data/*.parquet"]) is None
    assert "repo" in lock.stale_reason(e, "org/other", "dataset", None, ["data/*.parquet"])
    assert "revision is None in the lock, 'v1'" in lock.stale_reason(e, "org/ds", "dataset", "v1", ["data/*.parquet"])
    assert "files are" in lock.stale_reason(e, "org/ds", "dataset", None, ["*.parquet"])
    assert "no files" in lock.stale_reason({**e, "files": {}}, "org/ds", "dataset", None, ["data/*.parquet"])


def _writer(args):
    path, i = args
    lock.set_entry(path, "r", f"sources/s{i}", _entry(rev=f"{i:040d}"))


def test_concurrent_updates_keep_every_entry(tmp_path):
    p = str(tmp_path / "r.lock.json")
    with mp.get_context("fork").Pool(4) as pool:
        pool.map(_writer, [(p, i) for i in range(12)])
    assert sorted(lock.read_lock(p)["sources"]) == sorted(f"s{i}" for i in range(12))


def test_plan_download_spec_lock_and_frozen():
    recipe = {"id": "r", "sources": {"ds": {"repo": "org/ds", "files": ["a"], "revision": None}},
              "base_model": {"id": "org/m", "files": ["*.json"]}}
    lf = plan.lock_file("recipes", "r")
    assert lf.endswith("/recipes/r.lock.json")
    spec = plan.download_spec(recipe, "ds", lf, True)
    assert spec["lock"] == {"path": lf, "key": "sources/ds", "recipe": "r"} and spec["frozen"] is True
    assert plan.base_download_spec(recipe, lf, False)["lock"]["key"] == "base_model"
    # mirror mode: pinned by SHA256SUMS, the spec is unchanged
    mirrored = {**recipe, "hub_mirror": "fixtures/hub"}
    assert plan.download_spec(mirrored, "ds", lf, True) == plan.download_spec(recipe, "ds")
    assert "lock" not in plan.download_spec(recipe, "ds")
    assert plan.mirror_pin_file(mirrored).endswith("/fixtures/SHA256SUMS")


def test_mirror_pins_are_this_repos_lines_only():
    recipe = {"id": "r", "hub_mirror": "fixtures/hub",
              "sources": {"p": {"repo": "LDJnr/Puffin"}, "o": {"repo": "Open-Orca/OpenOrca"}}}
    assert list(plan.mirror_pins(recipe, "p")) == ["datasets/LDJnr/Puffin/LDJnr_Puffin.json"]
    assert sorted(plan.mirror_pins(recipe, "o")) == ["datasets/Open-Orca/OpenOrca/1M-GPT4-Augmented.parquet",
                                                     "datasets/Open-Orca/OpenOrca/3_5M-GPT3_5-Augmented.parquet"]
    assert all(len(v) == 64 for v in plan.mirror_pins(recipe, "o").values())
    assert plan.mirror_pins({**recipe, "hub_mirror": None}, "p") == {}


def test_model_entry_records_converted_files(tmp_path):
    files = {"pytorch_model.bin": {"sha256": "1" * 64, "size": 10}, "config.json": {"sha256": "2" * 64, "size": 2}}
    converted = {"model.safetensors": {"sha256": "3" * 64, "size": 9, "source": "pytorch_model.bin", "extra": 1}}
    e = lock.make_entry("org/m", "model", None, ["*"], "a" * 40, files, converted)
    assert e["files"] == files
    assert e["converted"] == {"model.safetensors": {"sha256": "3" * 64, "size": 9, "source": "pytorch_model.bin"}}
    assert "converted" not in lock.make_entry("org/m", "model", None, ["*"], "a" * 40, files)
    p = tmp_path / "r.lock.json"
    lock.set_entry(p, "r", "base_model", e)
    assert lock.get_entry(p, "base_model") == e
