"""Faults and bad input: disk full / permission denied give one clear line and no partial
artifact; a bad recipe stops the *workflow* (snakemake -n) with one line, no traceback.

Root ignores chmod, so a read-only results dir cannot be simulated with permissions here:
the OS calls the atomic writers make (``tempfile.mkstemp``, ``os.fsync``, ``os.replace``)
are made to fail with the errno a full / read-only / forbidden file system returns.
"""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from reprotune import cli
from reprotune import io as rio
from reprotune.io import ArtifactWriteError

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def _fail_with(code: int):
    def boom(*args, **kwargs):
        raise OSError(code, os.strerror(code))
    return boom


def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


@pytest.mark.parametrize("code,name", [(errno.ENOSPC, "ENOSPC"), (errno.EACCES, "EACCES"), (errno.EROFS, "EROFS")])
@pytest.mark.parametrize("writer", ["json", "text", "jsonl"])
def test_atomic_writers_raise_one_line_and_leave_nothing(tmp_path, monkeypatch, code, name, writer):
    target = tmp_path / "results" / "r" / "out.json"
    target.parent.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(rio.os, "replace", _fail_with(code))
    with pytest.raises(ArtifactWriteError) as ei:
        if writer == "json":
            rio.atomic_write_json(target, {"a": 1})
        elif writer == "text":
            rio.atomic_write_text(target, "x\n")
        else:
            rio.atomic_write_jsonl(target, ({"i": i} for i in range(3)))
    msg = str(ei.value)
    assert msg == f"cannot write results/r/out.json: {os.strerror(code)} ({name})"
    assert ei.value.errno == code and isinstance(ei.value, OSError)
    assert not target.exists()
    assert _leftovers(target.parent) == []  # the temp file is gone too


def test_disk_full_while_writing_and_no_permission_to_create(tmp_path, monkeypatch):
    target = tmp_path / "out.bin"
    monkeypatch.setattr(rio.os, "fsync", _fail_with(errno.ENOSPC))
    with pytest.raises(ArtifactWriteError, match=r"out.bin: No space left on device \(ENOSPC\)$"):
        rio.atomic_write_bytes(target, b"x" * 100)
    assert _leftovers(tmp_path) == []
    monkeypatch.undo()
    monkeypatch.setattr(rio.tempfile, "mkstemp", _fail_with(errno.EACCES))
    with pytest.raises(ArtifactWriteError, match=r"out.bin: Permission denied \(EACCES\)$"):
        rio.atomic_write_bytes(target, b"x")
    assert _leftovers(tmp_path) == []


def test_atomic_dir_disk_full_in_the_stage_body(tmp_path):
    """A stage writing into atomic_dir (e.g. save_pretrained) hits ENOSPC: no dir at the target."""
    target = tmp_path / "results" / "r" / "model"
    with pytest.raises(ArtifactWriteError) as ei:
        with rio.atomic_dir(target) as tmp:
            (tmp / "config.json").write_text("{}")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp / "model.safetensors"))
    assert str(ei.value).endswith("results/r/model: No space left on device (ENOSPC)")
    assert not target.exists()
    assert _leftovers(target.parent) == []


def test_atomic_dir_rename_refused_keeps_old_output(tmp_path, monkeypatch):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    monkeypatch.setattr(rio.os, "replace", _fail_with(errno.EROFS))
    with pytest.raises(ArtifactWriteError, match=r"Read-only file system \(EROFS\)$"):
        with rio.atomic_dir(target) as tmp:
            (tmp / "new.txt").write_text("new")
    assert _leftovers(tmp_path) == []  # the temp dir is gone; the old output went first (rmtree)


def test_other_os_errors_are_not_disguised(tmp_path, monkeypatch):
    monkeypatch.setattr(rio.os, "replace", _fail_with(errno.EIO))
    with pytest.raises(OSError) as ei:
        rio.atomic_write_text(tmp_path / "x.txt", "x")
    assert not isinstance(ei.value, ArtifactWriteError) and ei.value.errno == errno.EIO


def test_cli_prints_one_line_and_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(rio.os, "replace", _fail_with(errno.ENOSPC))
    spec = '{"recipe": {"id": "demo", "scale": "tiny"}, "command": [], "containers": {}}'
    rc = cli.main(["provenance", "--spec", spec, "--out", "results/demo/provenance.json"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err == "reprotune: error: cannot write results/demo/provenance.json: No space left on device (ENOSPC)\n"
    assert not (tmp_path / "results" / "demo" / "provenance.json").exists()
    assert _leftovers(tmp_path / "results" / "demo") == []


def test_cli_subprocess_permission_denied_no_traceback(tmp_path):
    """The same through `python -m reprotune`-style entry: exit 2, one stderr line, nothing written."""
    code = (
        "import errno, os, sys\n"
        "from reprotune import io\n"
        "def deny(*a, **k): raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))\n"
        "io.tempfile.mkstemp = deny\n"
        "from reprotune.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    spec = '{"recipe": {"id": "demo"}, "command": [], "containers": {}}'
    r = subprocess.run([sys.executable, "-c", code, "provenance", "--spec", spec, "--out",
                        "results/demo/provenance.json"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert r.stderr == "reprotune: error: cannot write results/demo/provenance.json: Permission denied (EACCES)\n"
    assert not (tmp_path / "results" / "demo" / "provenance.json").exists()


@pytest.mark.slow
def test_workflow_bad_recipe_one_line_no_traceback(tmp_path):
    """`snakemake -n` on a bad recipe: non-zero exit, one `reprotune: error:` line naming file and key."""
    rdir = tmp_path / "recipes"
    rdir.mkdir()
    data = yaml.safe_load((REPO / "recipes" / "tulu-v2-qlora-70b.yaml").read_text())
    data["adapters"]["main"]["train"]["learning_rate"] = "fast"
    bad = rdir / "tulu-v2-qlora-70b.yaml"
    bad.write_text(yaml.safe_dump(data))
    (tmp_path / "w").mkdir()  # else snakemake says it creates it
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    r = subprocess.run(
        [SNAKEMAKE, "-n", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path / "w"),
         "--configfile", str(REPO / "config.yaml"), "--cores", "1",
         "--config", f"recipes_dir={rdir}", "recipes=[tulu-v2-qlora-70b]"],
        capture_output=True, text=True, env=env, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "Traceback" not in out
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines == [f"reprotune: error: {bad}: key 'adapters.main.train.learning_rate': 'fast' has the wrong "
                     "type (expected number)"], out
