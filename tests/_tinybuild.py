"""Shared, session-cached tiny builds for the issue-7 tests (not a test module).

One copy of the repository sources (Snakefile, rules/, src/, schemas/, recipes/,
overlays/, config.yaml, fixtures/, configs/ -- not .venv) is made per test session;
``verified()`` runs ``python -m reprotune verify --recipes tulu-v2-qlora-70b --keep``
*from that copy* (PYTHONPATH = copy/src, so the rules and the jobs import the copy's
reprotune, not the editable install) with fake secrets in the environment, once.
test_verify, test_security, test_diff and test_reruns share those two builds; the
reruns test edits the copy and restores each file (bytes and mtime) afterwards.
"""
from __future__ import annotations

import atexit
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = "tulu-v2-qlora-70b"
COPY_ITEMS = ("Snakefile", "rules", "src", "schemas", "recipes", "overlays", "config.yaml", "fixtures", "configs", "docker")
# fake secrets: the shapes real ones have (hf_ + 34 alphanumerics, sk-...)
FAKE_HF_TOKEN = "hf_" + "FaKe0123456789abcdefghijKLMNOPqrstuv"[:34]
FAKE_OPENAI_KEY = "sk-" + "proj-FAKE9876543210zyxwvutsrqponmlkjih"
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


@functools.lru_cache(maxsize=None)
def session_dir() -> Path:
    d = Path(tempfile.mkdtemp(prefix="reprotune-issue7-"))
    atexit.register(shutil.rmtree, d, True)
    return d


@functools.lru_cache(maxsize=None)
def repo_copy() -> Path:
    dst = session_dir() / "repo"
    dst.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in COPY_ITEMS:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=ignore)  # copy2: mtimes kept
        elif src.exists():
            shutil.copy2(src, dst / name)
    return dst


def env(copy: Path | None = None) -> dict[str, str]:
    copy = copy or repo_copy()
    e = dict(os.environ)
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}"
    e["PYTHONPATH"] = str(copy / "src")
    e["HF_HUB_OFFLINE"] = "1"
    e["HF_DATASETS_OFFLINE"] = "1"
    e["HF_TOKEN"] = FAKE_HF_TOKEN
    e["OPENAI_API_KEY"] = FAKE_OPENAI_KEY
    return e


@functools.lru_cache(maxsize=None)
def verified() -> tuple[subprocess.CompletedProcess, Path, Path]:
    """Run the verify CLI on one recipe from the repo copy; return (process, root A, root B)."""
    copy = repo_copy()
    work = session_dir() / "verify"
    r = subprocess.run(
        [sys.executable, "-m", "reprotune", "verify", "--recipes", RECIPE, "--keep", "--cores", "2",
         "--workdir", str(work)],
        cwd=copy, env=env(copy), capture_output=True, text=True, timeout=1200)
    m = re.search(r"^verify: builds kept under (.+)$", r.stdout, re.M)
    if not m:
        raise AssertionError(f"verify did not keep its builds (exit {r.returncode}):\n{r.stdout[-3000:]}\n"
                             f"{r.stderr[-3000:]}")
    parent = Path(m.group(1))
    return r, parent / "a", parent / "b"


def snakemake(copy: Path, workdir: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [SNAKEMAKE, "--snakefile", str(copy / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(copy / "config.yaml"), "--cores", "2", "--config", f"recipes=[{RECIPE}]", *args]
    return subprocess.run(cmd, cwd=copy, env=env(copy), capture_output=True, text=True, timeout=timeout)
