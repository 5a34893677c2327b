"""Container images: which image each rule runs in, and building/pushing them.

``docker/images.lock`` maps each image of ``docker/`` (``cpu``, ``cuda``) to the
repository and digest it was pushed under. Rules take their ``container:`` from it
as ``docker://<repository>@sha256:<digest>``, so a rebuilt image is a changed
software environment for Snakemake and reruns the jobs that ran in it.

``reprotune images build --registry R`` builds an image with podman (or docker),
tags it by content (the Dockerfile, the lock files it installs and the build args),
pushes it to ``R`` and rewrites the lock with the digest the registry returned.
Until an image has a digest, ``snakemake --use-singularity`` refuses to start with
one line saying so (see :func:`require_built`).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from . import io as rio

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "docker" / "images.lock"
NAMES = ("cpu", "cuda")
GPU_STAGES = ("train", "merge", "evaluate")


class ImagesError(RuntimeError):
    pass


def load(path: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    p = Path(path) if path else LOCK
    try:
        data = json.loads(p.read_text())
        images = data["images"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ImagesError(f"{p}: not a readable images lock ({e.__class__.__name__}: {e})") from None
    for name in NAMES:
        if name not in images:
            raise ImagesError(f"{p}: images.{name} is missing")
        for key in ("dockerfile", "context", "inputs", "repository", "tag", "digest"):
            if key not in images[name]:
                raise ImagesError(f"{p}: images.{name}.{key} is missing")
        d = images[name]["digest"]
        if d is not None and not (isinstance(d, str) and d.startswith("sha256:") and len(d) == 71):
            raise ImagesError(f"{p}: images.{name}.digest must be null or 'sha256:' + 64 hex digits, got {d!r}")
    return images


def image_for(stage: str, recipe: dict) -> str:
    """Tiny builds run on CPU everywhere; at full scale train/merge/evaluate need CUDA."""
    if recipe.get("scale") != "tiny" and stage in GPU_STAGES:
        return "cuda"
    return "cpu"


def is_built(images: dict, name: str) -> bool:
    e = images[name]
    return bool(e.get("repository") and e.get("digest"))


def url(images: dict, name: str) -> str:
    """The rule's ``container:``; a placeholder that cannot be pulled while unbuilt."""
    e = images[name]
    if is_built(images, name):
        return f"docker://{e['repository']}@{e['digest']}"
    return f"docker://reprotune-{name}:unbuilt"


def require_built(images: dict, names, lock_path: str | os.PathLike | None = None) -> None:
    missing = sorted(n for n in set(names) if not is_built(images, n))
    if missing:
        where = Path(lock_path) if lock_path else LOCK
        raise ImagesError(
            f"--use-singularity needs the images {', '.join(missing)} but {where} has no digest for them; "
            f"build and push them first: make images REGISTRY=<registry> IMAGES='{' '.join(missing)}'")


def containers_for(recipe: dict, stages, images: dict) -> dict[str, str]:
    """stage -> container URL, for provenance."""
    return {s: url(images, image_for(s, recipe)) for s in sorted(stages)}


# ----------------------------------------------------------------------------- build
def content_tag(entry: dict, build_args: list[str], root: Path = REPO) -> str:
    h = hashlib.sha256()
    for rel in [entry["dockerfile"], *sorted(entry["inputs"])]:
        h.update(rel.encode() + b"\0" + (root / rel).read_bytes() + b"\0")
    for a in sorted(build_args):
        h.update(b"arg\0" + a.encode() + b"\0")
    return "c-" + h.hexdigest()[:16]


def container_cli() -> str:
    want = os.environ.get("REPROTUNE_CONTAINER_CLI")
    for c in ([want] if want else ["podman", "docker"]):
        if shutil.which(c):
            return c
    raise ImagesError("no container tool found: install podman or docker (or set REPROTUNE_CONTAINER_CLI)")


def _run(cmd: list[str]) -> str:
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if p.returncode != 0:
        raise ImagesError(f"`{' '.join(cmd[:2])} ...` failed with exit status {p.returncode} (its output is above)")
    return p.stdout


def build(names: list[str], registry: str, build_args: list[str] = (), volumes: list[str] = (),
          tls_verify: bool = True, lock_path: str | os.PathLike | None = None, root: Path = REPO,
          push: bool = True) -> dict:
    """Build, tag by content, push and record the digest of each named image."""
    if not registry or registry.strip() != registry or "://" in registry:
        raise ImagesError(f"--registry must be a registry host and path such as ghcr.io/me, got {registry!r}")
    lock_path = Path(lock_path) if lock_path else root / "docker" / "images.lock"
    images = load(lock_path)
    cli = container_cli()
    args = list(build_args)
    for name in names:
        if name not in images:
            raise ImagesError(f"unknown image {name!r}: expected one of {', '.join(NAMES)}")
        e = images[name]
        tag = content_tag(e, args, root)
        repo = f"{registry.rstrip('/')}/reprotune-{name}"
        ref = f"{repo}:{tag}"
        cmd = [cli, "build", "-f", str(root / e["dockerfile"]), "-t", ref]
        if cli == "podman":
            cmd += ["--timestamp", "0"]  # layer times do not depend on the build date
        for a in args:
            cmd += ["--build-arg", a]
        for v in volumes:
            cmd += ["--volume", v]
        cmd.append(str(root / e["context"]))
        _run(cmd)
        digest = None
        if push:
            if cli == "podman":
                with tempfile.TemporaryDirectory() as td:
                    dfile = Path(td) / "digest"
                    _run([cli, "push", f"--tls-verify={'true' if tls_verify else 'false'}",
                          "--digestfile", str(dfile), ref])
                    digest = dfile.read_text().strip()
            else:
                _run([cli, "push", ref])
                out = _run([cli, "image", "inspect", "--format", "{{json .RepoDigests}}", ref])
                digest = next((d.split("@", 1)[1] for d in json.loads(out) if d.startswith(repo + "@")), None)
            if not digest or not digest.startswith("sha256:"):
                raise ImagesError(f"pushed {ref} but could not read its digest")
        e.update(repository=repo, tag=tag, digest=digest)
        rio.atomic_write_json(lock_path, {"images": images})
        print(f"reprotune: {name}: {ref} -> {digest}", file=sys.stderr)
    return images


def main_build(a) -> int:
    build(a.image or list(NAMES), a.registry, a.build_arg or [], a.volume or [],
          tls_verify=not a.insecure, lock_path=a.lock, push=not a.no_push)
    return 0


def main_show(a) -> int:
    images = load(a.lock)
    for n in NAMES:
        print(f"{n}\t{url(images, n)}\t{'built' if is_built(images, n) else 'not built'}")
    return 0
