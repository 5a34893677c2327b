import json
from pathlib import Path

import pytest

from reprotune.download import DownloadError, fetch_dataset, fetch_model
from reprotune.io import sha256_bytes


def _write(p: Path, data: bytes) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


@pytest.fixture()
def mirror(tmp_path):
    root = tmp_path / "hub"
    repo = root / "datasets" / "org" / "ds"
    _write(repo / "data" / "train-00000.parquet", b"shard0")
    _write(repo / "data" / "train-00001.parquet", b"shard1")
    _write(repo / "data" / "test-00000.parquet", b"test")
    _write(repo / "README.md", b"# card\n")
    _write(root / "models" / "org" / "m" / "config.json", b"{}")
    _write(root / "models" / "org" / "m" / "model.safetensors", b"weights")
    return root


def test_mirror_copy_glob_and_manifest(mirror, tmp_path):
    out = tmp_path / "out" / "ds"
    spec = {"name": "ds", "repo": "org/ds", "revision": None,
            "files": ["data/train-*.parquet", "README.md"],
            "sha256": {"README.md": sha256_bytes(b"# card\n")}}
    man = fetch_dataset(spec, out, mirror)
    assert sorted(man["files"]) == ["README.md", "data/train-00000.parquet", "data/train-00001.parquet"]
    assert (out / "data" / "train-00001.parquet").read_bytes() == b"shard1"
    assert not (out / "data" / "test-00000.parquet").exists()
    assert man["revision"] == "mirror"
    assert man["repo"] == "org/ds"
    assert man["files"]["data/train-00000.parquet"] == {"sha256": sha256_bytes(b"shard0"), "size": 6}
    text = (out / "manifest.json").read_text()
    assert json.loads(text) == man
    assert text.endswith("\n") and text == json.dumps(man, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    # no temp leftovers next to the output
    assert sorted(p.name for p in out.parent.iterdir()) == ["ds"]
    assert not list(out.rglob("*.part"))
    # re-running gives the same manifest bytes
    fetch_dataset(spec, out, mirror)
    assert (out / "manifest.json").read_text() == text


def test_sha_mismatch_names_file_and_hashes_and_leaves_nothing(mirror, tmp_path):
    out = tmp_path / "out" / "ds"
    bad = "0" * 64
    spec = {"name": "ds", "repo": "org/ds", "files": ["data/train-00000.parquet"],
            "sha256": {"data/train-00000.parquet": bad}}
    with pytest.raises(DownloadError) as ei:
        fetch_dataset(spec, out, mirror)
    msg = str(ei.value)
    assert "\n" not in msg
    assert "data/train-00000.parquet" in msg and bad in msg and sha256_bytes(b"shard0") in msg
    assert not out.exists()
    assert list((tmp_path / "out").iterdir()) == []


def test_missing_pattern_is_named(mirror, tmp_path):
    spec = {"name": "ds", "repo": "org/ds", "files": ["data/train-*.parquet", "data/valid-*.jsonl"]}
    with pytest.raises(DownloadError, match=r"'data/valid-\*\.jsonl'"):
        fetch_dataset(spec, tmp_path / "out", mirror)
    assert not (tmp_path / "out").exists()


def test_missing_repo_in_mirror(mirror, tmp_path):
    with pytest.raises(DownloadError, match="org/nope"):
        fetch_dataset({"name": "x", "repo": "org/nope", "files": ["*"]}, tmp_path / "out", mirror)


def test_fetch_model_from_mirror_all_files(mirror, tmp_path):
    out = tmp_path / "base"
    man = fetch_model({"id": "org/m", "revision": None, "files": None}, out, mirror)
    assert sorted(man["files"]) == ["config.json", "model.safetensors"]
    assert (out / "model.safetensors").read_bytes() == b"weights"


def test_hub_offline_error(tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(DownloadError) as ei:
        fetch_dataset({"name": "ds", "repo": "org/ds", "files": ["*"]}, tmp_path / "out", None)
    msg = str(ei.value)
    assert "org/ds" in msg and "HF_HUB_OFFLINE" in msg and "\n" not in msg
    assert not (tmp_path / "out").exists()
