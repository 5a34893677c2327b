"""provenance.collect/write/diff: hashes, determinism, no paths/tokens/env leaks."""
from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path

import pytest

from reprotune import provenance
from reprotune.io import canonical_json

FAKE_TOKEN = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz0123"
ENV_TOKEN = "hf_" + "ZyXwVuTsRqPoNmLkJiHgFeDcBa9876"
PLAIN_SECRET = "plain-secret-value-42"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def build(tmp_path, monkeypatch):
    """A small build tree in a temp working directory; returns (spec, inputs, contents)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_TOKEN", ENV_TOKEN)
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", ENV_TOKEN)
    files = {
        "resources/sources/demo/oasst1/manifest.json":
            json.dumps({"repo": "OpenAssistant/oasst1", "revision": "fe8c2f4a1b"}).encode(),
        "resources/sources/demo/oasst1/data/train-00000-of-00001.parquet": b"PAR1 fake parquet bytes PAR1",
        "resources/base/tiny/config.json": b'{"model_type": "llama"}',
        "resources/base/tiny/model.safetensors": bytes(range(256)) * 4,
        "results/demo/adapters/main/adapter_model.safetensors": b"\x00\x01adapter",
        "results/demo/adapters/main/adapter_config.json": b'{"r": 8}',
        "results/demo/adapters/main/train.log": b"step 1 at 12:00:01 on host-7\n",
        "results/demo/eval/results.json": b'{"results": {}}',
    }
    for rel, data in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    recipe = {
        "id": "demo", "scale": "tiny",
        "card": {"title": "Demo", "notes": [f"pasted by mistake: {FAKE_TOKEN}"]},
        "base_model": {"id": "tiny", "revision": None},
        "sources": {"oasst1": {"repo": "OpenAssistant/oasst1", "revision": None,
                               "options": {"hf_token": PLAIN_SECRET, "pad_token": "</s>"}}},
        "hub_mirror": str(tmp_path / "fixtures" / "hub"),
    }
    spec = {
        "recipe": recipe,
        "command": [str(tmp_path / ".venv/bin/snakemake"), "--cores", "2", "--configfile",
                    str(tmp_path / "config.yaml"), "--config", f"token={PLAIN_SECRET}",
                    "--token", PLAIN_SECRET, f"--hub-token={FAKE_TOKEN}"],
        "containers": {"train": "docker://ghcr.io/x/reprotune@sha256:" + "a" * 64, "card": None},
    }
    inputs = {
        "source:oasst1": Path("resources/sources/demo/oasst1"),
        "base": tmp_path / "resources/base/tiny",  # absolute on purpose
        "adapter:main": Path("results/demo/adapters/main"),
        "eval": Path("results/demo/eval/results.json"),
    }
    return spec, inputs, files


def _strings(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, str):
        yield obj


def test_sha256_values_are_correct(build):
    spec, inputs, files = build
    prov = provenance.collect(spec, inputs)
    src = prov["inputs"]["source:oasst1"]
    assert src["type"] == "dir"
    assert src["path"] == "resources/sources/demo/oasst1"
    assert src["revision"] == "fe8c2f4a1b" and src["repo"] == "OpenAssistant/oasst1"
    expected = {
        "data/train-00000-of-00001.parquet": _sha(files["resources/sources/demo/oasst1/data/train-00000-of-00001.parquet"]),
        "manifest.json": _sha(files["resources/sources/demo/oasst1/manifest.json"]),
    }
    assert src["files"] == expected
    listing = "".join(f"{expected[k]}  {k}\n" for k in sorted(expected))
    assert src["sha256"] == _sha(listing.encode())

    ev = prov["inputs"]["eval"]
    assert ev == {"path": "results/demo/eval/results.json", "type": "file",
                  "sha256": _sha(files["results/demo/eval/results.json"]),
                  "size": len(files["results/demo/eval/results.json"])}
    base = prov["inputs"]["base"]
    assert base["path"] == "resources/base/tiny"
    assert base["files"]["model.safetensors"] == _sha(files["resources/base/tiny/model.safetensors"])
    # volatile logs are excluded by the documented pattern, and listed, not hidden
    ad = prov["inputs"]["adapter:main"]
    assert "train.log" not in ad["files"] and ad["excluded"] == ["train.log"]
    assert set(ad["files"]) == {"adapter_model.safetensors", "adapter_config.json"}

    assert prov["recipe_sha256"] == _sha(canonical_json(spec["recipe"]).encode())
    assert set(prov["versions"]) == set(provenance.PACKAGES)
    assert prov["versions"]["huggingface_hub"]  # installed in the venv
    assert prov["python"].count(".") == 2
    assert set(prov["code"]) >= {"git_describe", "git_head", "package_sha256"}


def test_deterministic_across_calls(build, tmp_path):
    spec, inputs, _ = build
    a = provenance.collect(spec, inputs)
    b = provenance.collect(copy.deepcopy(spec), dict(inputs))
    assert a == b
    provenance.write(spec, inputs, tmp_path / "p1.json")
    provenance.write(spec, inputs, tmp_path / "p2.json")
    assert (tmp_path / "p1.json").read_bytes() == (tmp_path / "p2.json").read_bytes()
    assert (tmp_path / "p1.json").read_text() == canonical_json(a)


def test_no_absolute_paths_env_or_tokens(build, tmp_path):
    spec, inputs, _ = build
    out = tmp_path / "results/demo/provenance.json"
    provenance.write(spec, inputs, out)
    text = out.read_text()
    prov = json.loads(text)
    assert str(tmp_path) not in text
    for s in _strings(prov):
        assert not s.startswith("/"), s
    # tokens: from the recipe, the command and the environment
    for secret in (FAKE_TOKEN, ENV_TOKEN, PLAIN_SECRET):
        assert secret not in text
    assert "<redacted>" in text
    # pad_token is not a secret and is kept
    assert prov["recipe"]["sources"]["oasst1"]["options"]["pad_token"] == "</s>"
    # command: absolute paths made relative / reduced to a name
    assert prov["command"][0] == ".venv/bin/snakemake"
    assert prov["command"][4] == "config.yaml"
    assert prov["recipe"]["hub_mirror"] == "fixtures/hub"
    # nothing from the environment
    for key in ("HOME", "USER", "HOSTNAME", "PATH"):
        val = os.environ.get(key)
        if val and len(val) > 3 and val != "/":
            assert val not in text
    for banned in ("date", "time", "hostname", "env"):
        assert banned not in prov


def test_diff_reports_changed_file_hash(build, tmp_path):
    spec, inputs, _ = build
    before = provenance.collect(spec, inputs)
    assert provenance.diff(before, before) == []
    data = tmp_path / "resources/sources/demo/oasst1/data/train-00000-of-00001.parquet"
    data.write_bytes(b"PAR1 different bytes PAR1")
    after = provenance.collect(spec, inputs)
    lines = provenance.diff(before, after)
    old = before["inputs"]["source:oasst1"]["files"]["data/train-00000-of-00001.parquet"]
    new = _sha(b"PAR1 different bytes PAR1")
    assert f"changed inputs.source:oasst1.files.data/train-00000-of-00001.parquet: {old} -> {new}" in lines
    assert any(l.startswith("changed inputs.source:oasst1.sha256:") for l in lines)
    # added / removed keys
    after2 = copy.deepcopy(after)
    del after2["inputs"]["eval"]
    after2["containers"]["merge"] = "img"
    lines2 = provenance.diff(after, after2)
    assert any(l.startswith("removed inputs.eval.sha256:") for l in lines2)
    assert "added containers.merge: img" in lines2


def test_missing_input_raises(build):
    spec, inputs, _ = build
    with pytest.raises(FileNotFoundError):
        provenance.collect(spec, {**inputs, "model": Path("results/demo/model")})


def test_code_revision_outside_git(tmp_path):
    rev = provenance.code_revision(tmp_path)
    assert rev["git_describe"] == "unknown" and rev["git_head"] == "unknown"
    assert len(rev["package_sha256"]) == 64


def test_path_outside_working_dir_is_not_absolute(build, tmp_path_factory):
    spec, inputs, _ = build
    other = tmp_path_factory.mktemp("elsewhere") / "weights.bin"
    other.write_bytes(b"w")
    prov = provenance.collect(spec, {"extra": other})
    assert prov["inputs"]["extra"]["path"] == "external:weights.bin"


# --------------------------------------------------------------------------- issue 7: what the lock holds
REPO = Path(__file__).resolve().parents[1]
TULU_FIXTURE = "fixtures/hub/datasets/allenai/tulu-v2-sft-mixture/data/train-00000-of-00003-99ee8754042a69f6.parquet"


def _tiny_tulu():
    from reprotune.recipe import load_recipe

    return load_recipe(REPO / "recipes" / "tulu-v2-qlora-70b.yaml", REPO / "overlays" / "tiny.yaml")


def test_fixture_files_recorded_with_sha256_pin_and_revision(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = _tiny_tulu()
    prov = provenance.collect({"recipe": recipe, "command": [], "containers": {}}, {})
    fx = prov["fixtures"]
    entry = fx[TULU_FIXTURE]
    assert entry["sha256"] == _sha((REPO / TULU_FIXTURE).read_bytes())
    pins = dict(line.split()[::-1] for line in (REPO / "fixtures/SHA256SUMS").read_text().splitlines() if line.strip())
    assert entry["pinned"] == pins[TULU_FIXTURE.removeprefix("fixtures/hub/")]
    assert entry["revision"] == prov["code"]["git_describe"]
    # every mirror file (the tiny base trains on all of them) and the eval fixtures
    expected = {p.relative_to(REPO).as_posix() for root in ("fixtures/hub", "fixtures/eval")
                for p in (REPO / root).rglob("*") if p.is_file()}
    assert set(fx) == expected
    # full scale: no fixtures
    full = dict(recipe, hub_mirror=None)
    assert provenance.collect({"recipe": full}, {})["fixtures"] == {}


def test_code_files_dirty_flag_and_no_card_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    prov = provenance.collect({"recipe": _tiny_tulu(), "command": [], "containers": {}}, {})
    code = prov["code"]
    assert code["dirty"] is (code["git_describe"].endswith("-dirty")) or code["git_describe"] == "unknown"
    files = code["files"]
    for rel in ("src/reprotune/train.py", "src/reprotune/templates/chat/tulu.jinja", "src/reprotune/sources/presets/tulu_v2.yaml",
                    "src/reprotune/sources/conversations.py", "src/reprotune/twin.py",
                "src/reprotune/merge.py", "src/reprotune/evaluate.py", "src/reprotune/provenance.py"):
        assert files[rel] == _sha((REPO / rel).read_bytes()), rel
    assert not any("/card/" in f or f.endswith("templates/chat/fashiongpt.jinja") for f in files)
    assert code["package_sha256"] == provenance.listing_sha256(files)


def test_containers_none_is_said_explicitly():
    prov = provenance.collect({"recipe": {"id": "x"}, "containers": {}}, {})
    assert prov["containers"] == {}
    assert "no container image was used" in prov["containers_note"]
    img = "docker://ghcr.io/x/reprotune@sha256:" + "b" * 64
    prov = provenance.collect({"recipe": {"id": "x"}, "containers": {"train": img}}, {})
    assert prov["containers"] == {"train": img} and prov["containers_note"] is None


@pytest.mark.slow
def test_real_build_lock():
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _tinybuild as tb
    from reprotune import plan

    _, a, _ = tb.verified()
    prov = json.loads((a / "results" / tb.RECIPE / "provenance.json").read_text())
    recipe = prov["recipe"]
    assert prov["command"] == plan.rebuild_command(recipe, "overlays/tiny.yaml")
    assert set(prov["inputs"]) == {"source:tulu_v2_mix", "base", "adapter:main", "model", "eval"}
    src = prov["inputs"]["source:tulu_v2_mix"]
    assert (src["repo"], src["revision"]) == ("allenai/tulu-v2-sft-mixture", "mirror")
    assert prov["fixtures"][TULU_FIXTURE]["sha256"] == prov["fixtures"][TULU_FIXTURE]["pinned"]
    assert prov["containers"] == {} and prov["containers_note"]
    assert prov["python"] and prov["versions"]["torch"]
