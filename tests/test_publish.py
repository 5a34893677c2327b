"""publish: dry run by default, one clear error without a token, token only ever handed to the API."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from reprotune import publish

REPO = Path(__file__).resolve().parents[1]
FAKE = "hf_FAKEtoken0123456789abcdefSECRET"


@pytest.fixture()
def build(tmp_path):
    root = tmp_path / "results" / "rec"
    (root / "model").mkdir(parents=True)
    (root / "model" / "model.safetensors").write_bytes(b"\0" * 1234)
    (root / "model" / "config.json").write_text("{}")
    (root / "model" / ".cache").mkdir()
    (root / "model" / ".cache" / "x").write_text("hidden")
    (root / "README.md").write_text("---\nlicense: mit\n---\n# card\n")
    ad = root / "adapters" / "main"
    ad.mkdir(parents=True)
    (ad / "adapter_config.json").write_text("{}")
    (ad / "adapter_model.safetensors").write_bytes(b"\1" * 99)
    (root / "adapter_cards").mkdir()
    (root / "adapter_cards" / "main.md").write_text("# adapter card\n")
    return tmp_path


def _cli(args, cwd, env_extra=None, drop_token=True):
    import os

    env = {k: v for k, v in os.environ.items() if not (drop_token and k in publish.TOKEN_ENV)}
    env.update(env_extra or {})
    env["PYTHONPATH"] = str(REPO / "src")
    return subprocess.run([sys.executable, "-m", "reprotune", "publish", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)


def test_dry_run_lists_files_with_sizes_and_uploads_nothing(build, monkeypatch):
    calls = []
    monkeypatch.setattr("huggingface_hub.upload_folder", lambda **kw: calls.append(kw))
    lines = []
    plan = publish.publish("rec", "model", "org/name", results=build / "results", echo=lines.append)
    assert plan["files"] == [("README.md", 28), ("config.json", 2), ("model.safetensors", 1234)]
    assert not plan["uploaded"] and calls == []
    assert lines[0].startswith("would upload 3 files") and "org/name" in lines[0]
    assert any(line.split() == ["1,234", "model.safetensors"] for line in lines)
    assert lines[-1].startswith("dry run: nothing uploaded")
    ad = publish.upload_plan("rec", "adapter", results=build / "results")
    assert [n for n, _ in ad["files"]] == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert ad["paths"]["README.md"].name == "main.md"


def test_cli_dry_run_and_yes_without_token(build):
    r = _cli(["--recipe", "rec", "--what", "model", "--repo-id", "org/name"], build)
    assert r.returncode == 0, r.stderr
    assert "would upload 3 files" in r.stdout and "model.safetensors" in r.stdout
    r = _cli(["--recipe", "rec", "--what", "model", "--repo-id", "org/name", "--yes"], build)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "reprotune: error: --yes needs a Hugging Face token in the environment variable HF_TOKEN; nothing uploaded"]
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("args,msg", [
    (["--recipe", "nope", "--what", "model", "--repo-id", "org/name"], "no build of recipe 'nope'"),
    (["--recipe", "rec", "--what", "model", "--repo-id", "justname"], "--repo-id must be ORG/NAME"),
    (["--recipe", "rec", "--what", "adapter", "--adapter", "x", "--repo-id", "o/n"], "no built adapter 'x'"),
])
def test_user_errors_are_one_line(build, args, msg):
    r = _cli(args, build)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and msg in r.stderr, r.stderr


def test_token_goes_to_the_api_and_nowhere_else(build, monkeypatch, capsys, caplog):
    seen = {}

    def fake_create(repo_id, **kw):
        seen["create"] = (repo_id, kw)

    def fake_upload(**kw):
        seen["upload"] = kw
        seen["staged"] = sorted(p.name for p in Path(kw["folder_path"]).iterdir())
        seen["readme"] = (Path(kw["folder_path"]) / "README.md").read_text()

        class Info:
            commit_url = "https://huggingface.co/org/name/commit/abc"
        return Info()

    monkeypatch.setattr("huggingface_hub.create_repo", fake_create)
    monkeypatch.setattr("huggingface_hub.upload_folder", fake_upload)
    monkeypatch.setenv("HF_TOKEN", FAKE)
    caplog.set_level(logging.DEBUG)
    plan = publish.publish("rec", "adapter", "org/name", yes=True, results=build / "results")
    assert plan["uploaded"] and plan["commit_url"].endswith("/abc")
    assert seen["upload"]["token"] == FAKE and seen["create"][1]["token"] == FAKE
    assert seen["upload"]["repo_id"] == "org/name"
    assert seen["staged"] == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert seen["readme"] == "# adapter card\n"
    out = capsys.readouterr()
    assert FAKE not in out.out + out.err and FAKE not in caplog.text
    assert FAKE not in json.dumps(plan, default=str)
    for p in build.rglob("*"):
        if p.is_file():
            assert FAKE.encode() not in p.read_bytes(), p
