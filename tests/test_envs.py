"""The hash-locked environments (envs/*.in -> envs/*.lock): what each installs, and what not."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pins(path: Path) -> dict[str, str]:
    """name -> version of a lock (or of the `name==version` lines of a spec)."""
    text = path.read_text()
    return {m.group(1).lower().replace("_", "-"): m.group(2)
            for m in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+?)(?: \\)?$", text, re.M)}


@pytest.mark.parametrize("extra", ["slurm"])
def test_extra_locks_hold_only_their_own_packages(extra):
    """Installed with --no-deps on top of .venv: they name their spec's packages only, never
    torch nor anything of envs/cpu.lock, so they cannot replace what .venv has."""
    lock, spec, cpu = pins(ROOT / f"envs/{extra}.lock"), pins(ROOT / f"envs/{extra}.in"), pins(ROOT / "envs/cpu.lock")
    assert lock == spec and lock
    assert not set(lock) & set(cpu)
    assert "--hash=sha256:" in (ROOT / f"envs/{extra}.lock").read_text()


def test_slurm_plugins_are_not_in_the_default_environments():
    for env in ("cpu", "cuda"):
        assert not [p for p in pins(ROOT / f"envs/{env}.lock") if p.startswith("snakemake-executor-plugin")], env
