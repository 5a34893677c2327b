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
    write_sums(root)
    return root


def write_sums(root: Path) -> None:
    """SHA256SUMS beside the mirror, like fixtures/SHA256SUMS beside fixtures/hub."""
    lines = sorted(f"{sha256_bytes(p.read_bytes())}  {p.relative_to(root).as_posix()}"
                   for p in root.rglob("*") if p.is_file())
    (root.parent / "SHA256SUMS").write_text("".join(line + "\n" for line in lines))


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
    assert "pinned in the recipe" in msg and "deleted" in msg
    assert not out.exists()
    # the corrupt copy is gone (no final file, no .part); only the empty staging dir may stay
    assert [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == []


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


# ----------------------------------------------------------------------------- mirror pins (SHA256SUMS)
def test_mirror_file_changed_without_sums_update_stops(mirror, tmp_path):
    (mirror / "datasets/org/ds/data/train-00001.parquet").write_bytes(b"edited")
    spec = {"name": "ds", "repo": "org/ds", "files": ["data/train-*.parquet"]}
    with pytest.raises(DownloadError) as ei:
        fetch_dataset(spec, tmp_path / "out" / "ds", mirror)
    msg = str(ei.value)
    assert msg == (f"sha256 mismatch for data/train-00001.parquet in org/ds: expected {sha256_bytes(b'shard1')} "
                   f"(pinned in SHA256SUMS), got {sha256_bytes(b'edited')}; the corrupt file was deleted")
    assert not (tmp_path / "out" / "ds").exists()
    assert (mirror / "datasets/org/ds/data/train-00001.parquet").read_bytes() == b"edited"  # mirror untouched


def test_mirror_file_missing_from_sums_or_no_sums(mirror, tmp_path):
    _write(mirror / "datasets/org/ds/data/train-00002.parquet", b"new shard")
    spec = {"name": "ds", "repo": "org/ds", "files": ["data/train-*.parquet"]}
    with pytest.raises(DownloadError, match=r"mirror file datasets/org/ds/data/train-00002\.parquet is not pinned"):
        fetch_dataset(spec, tmp_path / "out", mirror)
    (mirror.parent / "SHA256SUMS").unlink()
    with pytest.raises(DownloadError, match="SHA256SUMS not found"):
        fetch_dataset(spec, tmp_path / "out", mirror)


def test_repo_fixture_mirror_is_pinned(tmp_path):
    """The real fixture mirror verifies against fixtures/SHA256SUMS (the repo's pin)."""
    hub = Path(__file__).resolve().parents[1] / "fixtures" / "hub"
    man = fetch_dataset({"name": "puffin", "repo": "LDJnr/Puffin", "files": ["*.json"], "frozen": True},
                        tmp_path / "puffin", hub)
    sums = dict(reversed(line.split("  ", 1)) for line in (hub.parent / "SHA256SUMS").read_text().splitlines())
    assert man["files"]["LDJnr_Puffin.json"]["sha256"] == sums["datasets/LDJnr/Puffin/LDJnr_Puffin.json"]


# ----------------------------------------------------------------------------- resumable copy
def test_part_file_with_matching_prefix_is_continued(tmp_path):
    from reprotune.download import copy_resumable, part_path

    src = tmp_path / "src.bin"
    data = bytes(range(256)) * 40
    src.write_bytes(data)
    dest = tmp_path / "out" / "f.bin"
    dest.parent.mkdir()
    part_path(dest).write_bytes(data[:3000])
    digest, size, resumed = copy_resumable(src, dest)
    assert (digest, size, resumed) == (sha256_bytes(data), len(data), 3000)
    assert dest.read_bytes() == data and not part_path(dest).exists()


def test_part_file_with_wrong_bytes_or_too_long_is_restarted(tmp_path):
    from reprotune.download import copy_resumable, part_path

    src = tmp_path / "src.bin"
    src.write_bytes(b"abcdefghij")
    dest = tmp_path / "f.bin"
    part_path(dest).write_bytes(b"abcX")
    assert copy_resumable(src, dest) == (sha256_bytes(b"abcdefghij"), 10, 0)
    assert dest.read_bytes() == b"abcdefghij"
    dest.unlink()
    part_path(dest).write_bytes(b"abcdefghijKLM")
    assert copy_resumable(src, dest)[2] == 0 and dest.read_bytes() == b"abcdefghij"


def test_failed_check_deletes_part_and_never_creates_dest(tmp_path):
    from reprotune.download import copy_resumable, part_path

    src = tmp_path / "src.bin"
    src.write_bytes(b"payload")
    dest = tmp_path / "f.bin"

    def check(digest, size):
        raise DownloadError("bad")

    with pytest.raises(DownloadError):
        copy_resumable(src, dest, check)
    assert not dest.exists() and not part_path(dest).exists()


def test_interrupted_download_resumes(mirror, tmp_path, monkeypatch):
    """A crash half-way leaves the staging dir; the next run reuses finished files and continues the .part."""
    import reprotune.download as dl

    big = bytes((i * 7) % 251 for i in range(3 * 1024))
    _write(mirror / "datasets/org/ds/data/train-00001.parquet", big)
    write_sums(mirror)
    monkeypatch.setattr(dl, "CHUNK", 1024)
    real_open = open
    calls = {"n": 0}

    class Boom(Exception):
        pass

    class FlakyWriter:
        def __init__(self, f):
            self.f = f

        def write(self, b):
            calls["n"] += 1
            if calls["n"] == 3:  # second block of the second file
                raise Boom()
            return self.f.write(b)

        def __getattr__(self, k):
            return getattr(self.f, k)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return self.f.__exit__(*a)

    def flaky_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        return FlakyWriter(f) if "w" in mode or "a" in mode else f

    out = tmp_path / "out" / "ds"
    spec = {"name": "ds", "repo": "org/ds", "files": ["data/train-*.parquet"]}
    monkeypatch.setattr("builtins.open", flaky_open)
    with pytest.raises(Boom):
        fetch_dataset(spec, out, mirror)
    monkeypatch.setattr("builtins.open", real_open)
    stage = dl.staging_dir(out)
    assert not out.exists()
    assert (stage / "data/train-00000.parquet").read_bytes() == b"shard0"
    part = dl.part_path(stage / "data/train-00001.parquet")
    assert part.read_bytes() == big[:1024]
    resumed = []
    orig = dl.copy_resumable
    monkeypatch.setattr(dl, "copy_resumable", lambda *a, **k: resumed.append(orig(*a, **k)) or resumed[-1])
    man = fetch_dataset(spec, out, mirror)
    assert [r[2] for r in resumed] == [1024]  # shard0 reused as is, shard1 continued at byte 1024
    assert (out / "data/train-00001.parquet").read_bytes() == big
    assert man["files"]["data/train-00001.parquet"] == {"sha256": sha256_bytes(big), "size": len(big)}
    assert not stage.exists() and not list(out.rglob(".*.part"))


# ----------------------------------------------------------------------------- Hub with a fake backend, locks
class FakeHub:
    """Stands in for the Hub: one repo, branch main -> commit, files in a local 'cache'."""

    def __init__(self, root: Path, files: dict[str, bytes], commit: str = "a" * 40):
        self.root, self.commit, self.calls = root, commit, []
        self.files = dict(files)

    def install(self, monkeypatch):
        import reprotune.download as dl

        monkeypatch.setattr(dl, "hub_resolve", self.resolve)
        monkeypatch.setattr(dl, "hub_list_files", self.list_files)
        monkeypatch.setattr(dl, "hub_download", self.download)
        return self

    def resolve(self, repo, repo_type, revision):
        self.calls.append(("resolve", revision))
        return self.commit

    def list_files(self, repo, repo_type, commit):
        self.calls.append(("list", commit))
        return sorted(self.files)

    def download(self, repo, repo_type, commit, path):
        self.calls.append(("download", commit, path))
        blob = self.root / "blobs" / path.replace("/", "__")
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(self.files[path])
        return str(blob)


def _hub_spec(tmp_path, **over):
    spec = {"name": "ds", "repo": "org/ds", "revision": None, "files": ["data/*.parquet"], "sha256": {},
            "lock": {"path": str(tmp_path / "recipes" / "r.lock.json"), "key": "sources/ds", "recipe": "r"}}
    spec.update(over)
    return spec


def test_first_hub_download_writes_lock_and_later_ones_verify(tmp_path, monkeypatch):
    from reprotune.lock import get_entry, read_lock

    hub = FakeHub(tmp_path / "cache", {"data/a.parquet": b"AAA", "data/b.parquet": b"BB", "README.md": b"x"})
    hub.install(monkeypatch)
    spec = _hub_spec(tmp_path)
    man = fetch_dataset(spec, tmp_path / "out1", None)
    assert man["revision"] == "a" * 40
    lock = read_lock(spec["lock"]["path"])
    assert lock == {"version": 1, "recipe": "r", "sources": {"ds": {
        "repo": "org/ds", "repo_type": "dataset", "requested_revision": None, "patterns": ["data/*.parquet"],
        "revision": "a" * 40,
        "files": {"data/a.parquet": {"sha256": sha256_bytes(b"AAA"), "size": 3},
                  "data/b.parquet": {"sha256": sha256_bytes(b"BB"), "size": 2}}}}}
    text = Path(spec["lock"]["path"]).read_text()
    assert text == json.dumps(lock, sort_keys=True, indent=2) + "\n"

    # the branch moves on the Hub: a later build still uses the locked commit, no resolve/list call
    hub.commit, hub.calls = "b" * 40, []
    man2 = fetch_dataset(spec, tmp_path / "out2", None)
    assert man2 == man
    assert [c[0] for c in hub.calls] == ["download", "download"] and all(c[1] == "a" * 40 for c in hub.calls)
    assert Path(spec["lock"]["path"]).read_text() == text

    # the locked file changes on the Hub: one-line error naming the file and both hashes; copy + cache deleted
    hub.files["data/b.parquet"] = b"tampered"
    with pytest.raises(DownloadError) as ei:
        fetch_dataset(spec, tmp_path / "out3", None)
    assert str(ei.value) == (f"sha256 mismatch for data/b.parquet in org/ds: expected {sha256_bytes(b'BB')} "
                             f"(locked in r.lock.json), got {sha256_bytes(b'tampered')}; the corrupt file was deleted")
    assert not (tmp_path / "out3").exists()
    assert not (tmp_path / "cache/blobs/data__b.parquet").exists()
    assert [p.name for p in (tmp_path / ".out3.partial").rglob("*") if p.is_file()] == ["a.parquet"]
    assert get_entry(spec["lock"]["path"], "sources/ds")["files"]["data/b.parquet"]["size"] == 2


def test_lock_keeps_other_entries_and_base_model(tmp_path, monkeypatch):
    from reprotune.download import fetch_model
    from reprotune.lock import read_lock

    FakeHub(tmp_path / "cache", {"data/a.parquet": b"AAA", "config.json": b"{}"}).install(monkeypatch)
    fetch_dataset(_hub_spec(tmp_path), tmp_path / "o1", None)
    fetch_dataset(_hub_spec(tmp_path, name="other", lock={**_hub_spec(tmp_path)["lock"], "key": "sources/other"}),
                  tmp_path / "o2", None)
    fetch_model({"id": "org/m", "revision": "main", "files": ["*.json"],
                 "lock": {**_hub_spec(tmp_path)["lock"], "key": "base_model"}}, tmp_path / "base", None)
    lock = read_lock(tmp_path / "recipes" / "r.lock.json")
    assert sorted(lock["sources"]) == ["ds", "other"]
    assert lock["base_model"]["repo"] == "org/m" and lock["base_model"]["repo_type"] == "model"
    assert lock["base_model"]["requested_revision"] == "main"
    assert list(lock["base_model"]["files"]) == ["config.json"]


def test_frozen_refuses_without_lock_and_with_stale_lock(tmp_path, monkeypatch):
    from reprotune.lock import LockError

    hub = FakeHub(tmp_path / "cache", {"data/a.parquet": b"AAA"}).install(monkeypatch)
    with pytest.raises(LockError) as ei:
        fetch_dataset(_hub_spec(tmp_path, frozen=True), tmp_path / "o", None)
    assert "frozen" in str(ei.value) and "r.lock.json" in str(ei.value) and "sources/ds" in str(ei.value)
    assert hub.calls == [] and not (tmp_path / "o").exists()

    fetch_dataset(_hub_spec(tmp_path), tmp_path / "o", None)  # creates the lock
    fetch_dataset(_hub_spec(tmp_path, frozen=True), tmp_path / "o", None)  # now fine
    with pytest.raises(LockError, match=r"stale \(files are \['data/\*\.parquet'\] in the lock, \['data/a\.parquet'\]"):
        fetch_dataset(_hub_spec(tmp_path, frozen=True, files=["data/a.parquet"]), tmp_path / "o", None)
    # not frozen: a stale entry is resolved again and rewritten
    hub.commit = "c" * 40
    fetch_dataset(_hub_spec(tmp_path, revision="v2"), tmp_path / "o", None)
    from reprotune.lock import get_entry

    e = get_entry(tmp_path / "recipes" / "r.lock.json", "sources/ds")
    assert (e["requested_revision"], e["revision"]) == ("v2", "c" * 40)


def test_recipe_pin_checked_on_hub_and_lock_not_written_on_failure(tmp_path, monkeypatch):
    FakeHub(tmp_path / "cache", {"data/a.parquet": b"AAA"}).install(monkeypatch)
    spec = _hub_spec(tmp_path, sha256={"data/a.parquet": "f" * 64})
    with pytest.raises(DownloadError, match="pinned in the recipe"):
        fetch_dataset(spec, tmp_path / "o", None)
    assert not (tmp_path / "recipes" / "r.lock.json").exists()


def test_cli_prints_one_line_for_mismatch(mirror, tmp_path, capsys):
    from reprotune.cli import main

    spec = {"name": "ds", "repo": "org/ds", "files": ["README.md"], "sha256": {"README.md": "0" * 64}}
    rc = main(["download", "--spec", json.dumps(spec), "--mirror", str(mirror), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("reprotune: error: sha256 mismatch for README.md in org/ds: expected " + "0" * 64)
    assert err.count("\n") == 1
