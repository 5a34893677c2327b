"""Model downloads: pickle .bin shards -> sharded safetensors, from a mirror and from the (fake) Hub."""
import io
import json
import logging
from pathlib import Path

import pytest
import torch

import reprotune.download as dl
from reprotune.download import DownloadError, fetch_model
from reprotune.io import sha256_bytes, sha256_file
from reprotune.lock import read_lock, set_entry
from test_download import FakeHub, write_sums

REPO = "openlm-research/open_llama_13b"
SHARDS = [f"pytorch_model-0000{i}-of-00003.bin" for i in (1, 2, 3)]
CONVERTED = [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A small random LlamaForCausalLM saved the way open_llama_13b ships: 3 pickle shards + index."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    model = LlamaForCausalLM(config)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    names = list(state)
    groups = [names[i::3] for i in range(3)]  # interleaved: the index, not the order, says where a tensor is
    src = tmp_path_factory.mktemp("llama")
    weight_map = {}
    for shard, group in zip(SHARDS, groups):
        with open(src / shard, "wb") as f:  # a file object: the bytes do not depend on the path
            torch.save({k: state[k] for k in group}, f)
        weight_map.update({k: shard for k in group})
    total = sum(t.numel() * t.element_size() for t in state.values())
    (src / dl.BIN_INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    config.save_pretrained(src)
    files = {p.name: p.read_bytes() for p in sorted(src.iterdir())}
    return {"files": files, "state": state, "weight_map": weight_map, "total": total}


def _mirror(root: Path, files: dict[str, bytes], repo: str = REPO) -> Path:
    """A twin-style mirror: root/hub/models/<repo>/..., pins in root/SHA256SUMS."""
    hub = root / "hub"
    for name, data in files.items():
        p = hub / "models" / repo / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    write_sums(hub)
    return hub


def _spec(**over):
    spec = {"id": REPO, "revision": None, "files": ["pytorch_model-*.bin", "*.json"]}
    spec.update(over)
    return spec


def _tree(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_mirror_bin_shards_become_sharded_safetensors(llama, tmp_path, caplog):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    hub = _mirror(tmp_path / "twin", llama["files"])
    out = tmp_path / "base"
    with caplog.at_level(logging.INFO, logger="reprotune.download"):
        man = fetch_model(_spec(), out, hub)
    assert sorted(_tree(out)) == sorted(["config.json", "manifest.json", dl.ST_INDEX, *CONVERTED])
    assert not list(out.rglob("*.bin")) and not list(tmp_path.glob(".*partial"))
    # tensors bitwise equal, same split as the .bin index, format metadata
    seen = {}
    for name in CONVERTED:
        with safe_open(out / name, "pt") as f:
            assert f.metadata() == {"format": "pt"}
            seen.update({k: (name, f.get_tensor(k)) for k in f.keys()})
    assert sorted(seen) == sorted(llama["state"])
    for k, t in llama["state"].items():
        assert seen[k][0] == llama["weight_map"][k].replace("pytorch_model", "model").replace(".bin", ".safetensors")
        assert seen[k][1].dtype == t.dtype and torch.equal(seen[k][1], t)
    index = json.loads((out / dl.ST_INDEX).read_text())
    assert index["metadata"] == {"total_size": llama["total"]}
    assert index["weight_map"] == {k: v[0] for k, v in seen.items()}
    # manifest: what was fetched (the pickles too) and what was written from what
    assert sorted(man["files"]) == sorted([dl.BIN_INDEX, "config.json", *SHARDS])
    assert man["files"][SHARDS[1]] == {"sha256": sha256_bytes(llama["files"][SHARDS[1]]),
                                       "size": len(llama["files"][SHARDS[1]])}
    assert man["converted"] == {
        **{c: {"sha256": sha256_file(out / c), "size": (out / c).stat().st_size, "source": s}
           for c, s in zip(CONVERTED, SHARDS)},
        dl.ST_INDEX: {"sha256": sha256_file(out / dl.ST_INDEX), "size": (out / dl.ST_INDEX).stat().st_size,
                      "source": dl.BIN_INDEX}}
    assert json.loads((out / "manifest.json").read_text()) == man
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("converted ")]
    assert len(lines) == 3 and lines[0].startswith(f"converted {SHARDS[0]} -> {CONVERTED[0]} (")
    assert lines[0].endswith(" MB)") and "tensors, " in lines[0]
    # transformers loads it (from safetensors) and the weights are the ones saved
    model = AutoModelForCausalLM.from_pretrained(out)
    got = model.state_dict()
    assert all(torch.equal(got[k], t) for k, t in llama["state"].items())
    # deterministic: a second fetch elsewhere gives the same bytes, file for file
    again = tmp_path / "again" / "base"
    fetch_model(_spec(), again, hub)
    assert _tree(again) == _tree(out)


def test_cli_model_from_mirror_with_mirror_sums(llama, tmp_path):
    from reprotune.cli import main

    hub = _mirror(tmp_path / "twin", llama["files"])
    sums = tmp_path / "pins" / "open_llama.sums"
    sums.parent.mkdir()
    (hub.parent / "SHA256SUMS").rename(sums)
    out = tmp_path / "resources" / "base" / "openlm-research--open_llama_13b"
    spec = _spec(mirror_sums=str(sums))
    rc = main(["download", "--model", "--spec", json.dumps(spec), "--mirror", str(hub), "--out", str(out)])
    assert rc == 0
    assert sorted(json.loads((out / "manifest.json").read_text())["converted"]) == sorted([*CONVERTED, dl.ST_INDEX])


def test_pickle_with_non_tensor_object_is_one_line_error(llama, tmp_path, capsys):
    from reprotune.cli import main

    files = dict(llama["files"])
    buf = io.BytesIO()
    torch.save({"model.norm.weight": torch.ones(2), "hook": logging.Formatter()}, buf)
    files[SHARDS[2]] = buf.getvalue()
    hub = _mirror(tmp_path / "twin", files)
    out = tmp_path / "base"
    with pytest.raises(DownloadError) as ei:
        fetch_model(_spec(), out, hub)
    msg = str(ei.value)
    assert "\n" not in msg and "\x1b" not in msg
    assert msg.startswith(f"{SHARDS[2]} in {REPO} is not a plain tensor checkpoint: ")
    assert "logging.Formatter" in msg and not out.exists()
    # a pickle that weights_only accepts but that holds more than tensors
    buf = io.BytesIO()
    torch.save({"model.norm.weight": torch.ones(2), "epoch": 3}, buf)
    files[SHARDS[2]] = buf.getvalue()
    hub = _mirror(tmp_path / "twin2", files)
    with pytest.raises(DownloadError, match=r"not a plain tensor checkpoint \('epoch' holds a value of type int, not a dense tensor\)"):
        fetch_model(_spec(), out, hub)
    rc = main(["download", "--model", "--spec", json.dumps(_spec()), "--mirror", str(hub), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"reprotune: error: {SHARDS[2]} in {REPO}") and err.count("\n") == 1


def test_safetensors_model_copied_as_is_and_bin_beside_it_ignored(tmp_path, caplog):
    from safetensors.torch import save

    st = save({"w": torch.arange(6.0).reshape(2, 3)}, metadata={"format": "pt"})
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2, 3)}, buf)
    files = {"model.safetensors": st, "config.json": b"{}", "pytorch_model.bin": buf.getvalue(),
             "tokenizer.model": b"tok"}
    hub = _mirror(tmp_path / "twin", files, repo="org/m")
    out = tmp_path / "base"
    man = fetch_model({"id": "org/m", "files": ["*.safetensors", "*.json", "tokenizer.model"]}, out, hub)
    assert (out / "model.safetensors").read_bytes() == st and "converted" not in man
    with caplog.at_level(logging.WARNING, logger="reprotune.download"):
        man = fetch_model({"id": "org/m", "files": None}, tmp_path / "all", hub)
    assert sorted(man["files"]) == ["config.json", "model.safetensors", "tokenizer.model"]
    assert not (tmp_path / "all" / "pytorch_model.bin").exists()
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "pytorch_model.bin" in warning and "ignored" in warning
    assert 'files: ["*.safetensors", "config.json", "tokenizer.model"]' in warning


def test_safetensors_pattern_on_a_bin_only_repo_says_what_to_select(llama, tmp_path):
    hub = _mirror(tmp_path / "twin", llama["files"])
    with pytest.raises(DownloadError) as ei:
        fetch_model(_spec(files=["*.safetensors", "*.json"]), tmp_path / "base", hub)
    msg = str(ei.value)
    assert msg.startswith("pattern '*.safetensors' matches no file in model repo") and "pytorch_model*.bin" in msg


def test_incomplete_shard_selection_and_unpinned_mirror_file(llama, tmp_path):
    hub = _mirror(tmp_path / "twin", llama["files"])
    with pytest.raises(DownloadError, match=r"shard pytorch_model-00002-of-00003\.bin of the checkpoint is not selected"):
        fetch_model(_spec(files=["pytorch_model-00001-*.bin", "pytorch_model-00003-*.bin", "*.json"]),
                    tmp_path / "base", hub)
    (hub / "models" / REPO / "generation_config.json").write_text("{}")
    with pytest.raises(DownloadError) as ei:
        fetch_model(_spec(), tmp_path / "base", hub)
    assert str(ei.value).startswith(f"mirror file models/{REPO}/generation_config.json is not pinned in ")
    assert "SHA256SUMS" in str(ei.value) and not (tmp_path / "base").exists()


def _interrupt_third_conversion(monkeypatch, spec, out, hub) -> list[str]:
    """Run a fetch that dies while converting the third shard; return the list that records conversions."""
    real = dl._convert_shard
    calls = []

    def dies_on_third(src, dst, pins):
        calls.append(src.name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(src, dst, pins)

    monkeypatch.setattr(dl, "_convert_shard", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        fetch_model(spec, out, hub)
    stage = dl.staging_dir(out)
    assert not out.exists()
    assert sorted(p.name for p in stage.glob("*.safetensors")) == CONVERTED[:2]
    assert all((stage / s).is_file() for s in SHARDS)
    calls.clear()
    return calls


def test_interrupted_conversion_resumes(llama, tmp_path, monkeypatch):
    hub = _mirror(tmp_path / "twin", llama["files"])
    out = tmp_path / "base"
    calls = _interrupt_third_conversion(monkeypatch, _spec(), out, hub)
    # a converted shard damaged in the staging dir is converted again, not reused
    (dl.staging_dir(out) / CONVERTED[1]).write_bytes(b"damaged")
    man = fetch_model(_spec(), out, hub)
    assert calls == [SHARDS[1], SHARDS[2]]
    assert not dl.staging_dir(out).exists() and not list(out.glob("*.bin")) and not (out / dl.STATE).exists()
    monkeypatch.undo()
    fresh = tmp_path / "fresh"
    assert fetch_model(_spec(), fresh, hub) == man and _tree(fresh) == _tree(out)


def test_converted_shard_of_a_changed_source_is_not_reused(llama, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    hub = _mirror(tmp_path / "twin", llama["files"])
    out = tmp_path / "base"
    calls = _interrupt_third_conversion(monkeypatch, _spec(), out, hub)
    # the mirror is regenerated (new pins) before the rerun: shard 1 now holds other values
    shard = torch.load(io.BytesIO(llama["files"][SHARDS[0]]), weights_only=True)
    changed = {k: v + 1 for k, v in shard.items()}
    buf = io.BytesIO()
    torch.save(changed, buf)
    (hub / "models" / REPO / SHARDS[0]).write_bytes(buf.getvalue())
    write_sums(hub)
    fetch_model(_spec(), out, hub)
    assert calls == [SHARDS[0], SHARDS[2]]
    got = load_file(out / CONVERTED[0])
    assert sorted(got) == sorted(changed) and all(torch.equal(got[k], v) for k, v in changed.items())


def test_shared_storage_and_views_are_saved_as_own_tensors(tmp_path):
    from safetensors.torch import load_file

    w = torch.arange(12.0).reshape(3, 4)
    state = {"embed.weight": w, "lm_head.weight": w, "half": torch.arange(8.0)[::2]}
    src = tmp_path / "pytorch_model.bin"
    torch.save(state, src)
    hub = _mirror(tmp_path / "twin", {"pytorch_model.bin": src.read_bytes(), "config.json": b"{}"}, repo="org/tied")
    man = fetch_model({"id": "org/tied"}, tmp_path / "base", hub)
    assert sorted(_tree(tmp_path / "base")) == ["config.json", "manifest.json", "model.safetensors"]
    assert man["converted"]["model.safetensors"]["source"] == "pytorch_model.bin"
    got = load_file(tmp_path / "base" / "model.safetensors")
    assert sorted(got) == sorted(state) and all(torch.equal(got[k], v) for k, v in state.items())


# ----------------------------------------------------------------------------- Hub with a lock
def _hub_spec(tmp_path, **over):
    lock = {"path": str(tmp_path / "recipes" / "r.lock.json"), "key": "base_model", "recipe": "r"}
    return _spec(lock=lock, **over)


def test_hub_lock_records_both_and_locked_rebuild_verifies_converted(llama, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    hub = FakeHub(tmp_path / "cache", {**llama["files"], "README.md": b"x"}).install(monkeypatch)
    man = fetch_model(_hub_spec(tmp_path), tmp_path / "o1", None)
    entry = read_lock(tmp_path / "recipes" / "r.lock.json")["base_model"]
    assert entry["files"] == man["files"] and SHARDS[0] in entry["files"]
    assert entry["converted"] == man["converted"] and sorted(entry["converted"]) == sorted([*CONVERTED, dl.ST_INDEX])
    # frozen rebuild: locked commit, every file and every converted file verified, same bytes
    hub.commit = "b" * 40
    assert fetch_model(_hub_spec(tmp_path, frozen=True), tmp_path / "o2", None) == man
    assert _tree(tmp_path / "o2") == _tree(tmp_path / "o1")

    # the conversion yields other bytes than the lock says (a changed converter): caught, nothing installed
    def other_bytes(tensors, filename, metadata=None):
        save_file(tensors, filename, metadata={**metadata, "converter": "changed"})

    monkeypatch.setattr("safetensors.torch.save_file", other_bytes)
    with pytest.raises(DownloadError) as ei:
        fetch_model(_hub_spec(tmp_path, frozen=True), tmp_path / "o3", None)
    msg = str(ei.value)
    want = entry["converted"][CONVERTED[0]]["sha256"]
    assert msg.startswith(f"sha256 mismatch for {CONVERTED[0]} (converted from {SHARDS[0]}) in {REPO}: "
                          f"expected {want} (locked in r.lock.json), got ")
    assert "deleted" in msg and "\n" not in msg and not (tmp_path / "o3").exists()
    assert not (dl.staging_dir(tmp_path / "o3") / CONVERTED[0]).exists()


def test_tampered_converted_file_in_staging_is_not_reused_under_lock(llama, tmp_path, monkeypatch):
    """A staged converted shard whose bytes (and record) were altered fails its lock pin and is redone."""
    FakeHub(tmp_path / "cache", llama["files"]).install(monkeypatch)
    man = fetch_model(_hub_spec(tmp_path), tmp_path / "o1", None)
    stage = dl.staging_dir(tmp_path / "o2")
    real = dl._convert_shard

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(dl, "_convert_shard", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fetch_model(_hub_spec(tmp_path, frozen=True), tmp_path / "o2", None)
    # forge a "finished" converted shard: other bytes, a state record that agrees with them
    (stage / CONVERTED[0]).write_bytes(b"forged")
    state = {CONVERTED[0]: {"sha256": sha256_bytes(b"forged"), "size": 6, "source": SHARDS[0],
                            "source_sha256": man["files"][SHARDS[0]]["sha256"]}}
    (stage / dl.STATE).write_text(json.dumps(state))
    converted = []
    monkeypatch.setattr(dl, "_convert_shard", lambda src, dst, pins: converted.append(dst.name) or real(src, dst, pins))
    assert fetch_model(_hub_spec(tmp_path, frozen=True), tmp_path / "o2", None) == man
    assert converted == CONVERTED  # the forged one was converted again
    assert _tree(tmp_path / "o2") == _tree(tmp_path / "o1")


def test_lock_without_converted_files_is_stale(llama, tmp_path, monkeypatch):
    from reprotune.lock import LockError, make_entry

    FakeHub(tmp_path / "cache", llama["files"]).install(monkeypatch)
    man = fetch_model(_hub_spec(tmp_path), tmp_path / "o1", None)
    lock_path = tmp_path / "recipes" / "r.lock.json"
    old = make_entry(REPO, "model", None, _spec()["files"], "a" * 40, man["files"])  # as written before conversion
    set_entry(lock_path, "r", "base_model", old)
    with pytest.raises(LockError, match=r"stale \(converted files are \[\] in the lock, \['model-00001"):
        fetch_model(_hub_spec(tmp_path, frozen=True), tmp_path / "o2", None)
    fetch_model(_hub_spec(tmp_path), tmp_path / "o2", None)  # not frozen: locked again, with converted
    assert read_lock(lock_path)["base_model"]["converted"] == man["converted"]


def test_torch_save_bytes_depend_on_file_name_only_through_the_archive_prefix(tmp_path):
    """What the twin builder needs: torch.save is deterministic, but a path's stem is written into the zip."""
    state = {"a": torch.arange(4.0), "b": torch.ones(2, dtype=torch.float16)}
    for name in ("x.bin", "y.bin"):
        torch.save(state, tmp_path / name)
        with open(tmp_path / f"fobj-{name}", "wb") as f:
            torch.save(state, f)
    (tmp_path / "d").mkdir()
    torch.save({k: v.clone() for k, v in state.items()}, tmp_path / "d" / "x.bin")
    read = lambda n: (tmp_path / n).read_bytes()  # noqa: E731
    assert read("x.bin") == read("d/x.bin")          # same name, same tensors: identical
    assert read("x.bin") != read("y.bin")            # another name: other bytes (archive prefix)
    assert read("fobj-x.bin") == read("fobj-y.bin")  # a file object: always "archive/", identical


def test_bin_index_that_disagrees_with_the_shards_stops(llama, tmp_path):
    index = json.loads(llama["files"][dl.BIN_INDEX])
    name = sorted(index["weight_map"])[0]
    real = index["weight_map"][name]
    index["weight_map"][name] = next(s for s in SHARDS if s != real)
    hub = _mirror(tmp_path / "twin", {**llama["files"], dl.BIN_INDEX: json.dumps(index).encode()})
    with pytest.raises(DownloadError) as ei:
        fetch_model(_spec(), tmp_path / "base", hub)
    assert str(ei.value) == (f"{dl.BIN_INDEX} in {REPO} does not match the shards: tensor {name!r} is in "
                             f"{index['weight_map'][name]} by the index, in {real} by the shards")
    assert not (tmp_path / "base").exists()


def test_provenance_of_a_converted_base_shows_both_sides(llama, tmp_path):
    from reprotune import provenance

    hub = _mirror(tmp_path / "twin", llama["files"])
    out = tmp_path / "resources" / "base" / "openlm-research--open_llama_13b"
    man = fetch_model(_spec(), out, hub)
    entry = provenance.hash_input(out, tmp_path)
    assert entry["path"] == "resources/base/openlm-research--open_llama_13b"
    assert (entry["repo"], entry["revision"]) == (REPO, "mirror")
    assert entry["fetched"] == man["files"] and SHARDS[0] in entry["fetched"]
    assert entry["converted"][CONVERTED[2]] == {**man["converted"][CONVERTED[2]], "source": SHARDS[2]}
    assert entry["files"][CONVERTED[2]] == man["converted"][CONVERTED[2]]["sha256"]
    assert not any(f.endswith(".bin") for f in entry["files"])
    plain = provenance.hash_input(hub / "models" / REPO, tmp_path)  # no manifest: no such keys
    assert "fetched" not in plain and "converted" not in plain


def test_index_without_bin_index_and_a_fetched_safetensors_index(llama, tmp_path):
    files = {k: v for k, v in llama["files"].items() if k != dl.BIN_INDEX}
    hub = _mirror(tmp_path / "twin", {**files, dl.ST_INDEX: b'{"weight_map": {}}'})
    out = tmp_path / "base"
    man = fetch_model(_spec(files=["pytorch_model-*.bin", "config.json"]), out, hub)
    assert man["converted"][dl.ST_INDEX]["source"] is None
    assert json.loads((out / dl.ST_INDEX).read_text())["weight_map"] == {
        k: v.replace("pytorch_model", "model").replace(".bin", ".safetensors") for k, v in llama["weight_map"].items()}
    # a repo's own safetensors index (Llama-2 ships one beside its .bin) is fetched, recorded, and replaced
    man = fetch_model(_spec(), out, hub)
    assert man["files"][dl.ST_INDEX]["sha256"] == sha256_bytes(b'{"weight_map": {}}')
    assert man["converted"][dl.ST_INDEX]["sha256"] == sha256_file(out / dl.ST_INDEX)
    assert json.loads((out / dl.ST_INDEX).read_text())["metadata"] == {"total_size": llama["total"]}
