"""Where a stage runs: one line at the top of every rule log.

It says which Python ran the stage and whether it ran inside a container (and which
kind), so a log shows that `--use-singularity` really moved the job into the image.
Logs only: nothing here goes into an artifact.
"""
from __future__ import annotations

import os
import platform
import sys


def container_kind() -> str:
    if os.path.exists("/run/.containerenv"):
        return "podman (/run/.containerenv)"
    if os.environ.get("APPTAINER_CONTAINER") or os.environ.get("SINGULARITY_CONTAINER") \
            or os.path.isdir("/.singularity.d"):
        return "apptainer (/.singularity.d)"
    if os.path.exists("/.dockerenv"):
        return "docker (/.dockerenv)"
    return "none"


def describe(stage: str) -> str:
    return (f"reprotune {stage}: python {platform.python_version()} ({sys.executable}), "
            f"uid {os.getuid()}, container: {container_kind()}, slurm job: {os.environ.get('SLURM_JOB_ID', 'none')}")


def log_runtime(stage: str) -> None:
    """Print :func:`describe` to stderr when a rule runs the stage (the rules set
    REPROTUNE_RUNTIME_LOG=1; their stderr is the rule log)."""
    if os.environ.get("REPROTUNE_RUNTIME_LOG") == "1":
        print(describe(stage), file=sys.stderr, flush=True)
