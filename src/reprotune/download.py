"""Fetch pinned dataset / model files from the Hugging Face Hub or a local mirror.

One code path for both: a *backend* lists the repository's files and fetches one
file to a local stream; everything else (pattern matching, sha256 pinning,
the manifest, atomic output) is shared.

The mirror is laid out like the Hub: ``<mirror>/datasets/<org>/<name>/<path>``
for datasets and ``<mirror>/models/<org>/<name>/<path>`` for models.

Output directory layout::

    out_dir/<path in repo>      (one file per matched path)
    out_dir/manifest.json       {"repo", "revision", "files": {path: {"sha256", "size"}}}
"""
from __future__ import annotations

import fnmatch
import hashlib
import os
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

from reprotune.io import CHUNK, atomic_dir, atomic_write_json

MANIFEST = "manifest.json"


class DownloadError(RuntimeError):
    """A fetch failed; the message is one line that names the repo/file at fault."""


# --------------------------------------------------------------------------- backends


class _MirrorBackend:
    """A directory laid out like the Hub."""

    def __init__(self, mirror: Path, repo: str, repo_type: str):
        self.root = Path(mirror) / f"{repo_type}s" / repo
        self.repo = repo
        if not self.root.is_dir():
            raise DownloadError(f"mirror has no {repo_type} repo {repo!r} (looked in {self.root})")

    def resolve_revision(self, revision: str | None) -> str:
        return "mirror"

    def list_files(self) -> list[str]:
        out = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if d != ".git")
            for name in filenames:
                rel = (Path(dirpath) / name).relative_to(self.root)
                out.append(PurePosixPath(*rel.parts).as_posix())
        return sorted(out)

    def local_path(self, path: str) -> Path:
        return self.root / path


class _HubBackend:
    """The Hugging Face Hub, pinned to one resolved commit."""

    def __init__(self, repo: str, repo_type: str):
        self.repo = repo
        self.repo_type = repo_type
        self.commit: str | None = None

    def _call(self, what: str, fn: Callable, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DownloadError:
            raise
        except Exception as exc:  # network, offline mode, 404, auth ...
            msg = " ".join(str(exc).split()) or type(exc).__name__
            offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
            hint = " (HF_HUB_OFFLINE is set: use a mirror or unset it)" if offline else ""
            raise DownloadError(
                f"cannot {what} for {self.repo_type} repo {self.repo!r} on the Hub{hint}: "
                f"{type(exc).__name__}: {msg}"
            ) from exc

    def resolve_revision(self, revision: str | None) -> str:
        from huggingface_hub import HfApi

        info = self._call(
            "resolve revision " + repr(revision or "main"),
            HfApi().repo_info, self.repo, revision=revision, repo_type=self.repo_type,
        )
        self.commit = info.sha
        if not self.commit:
            raise DownloadError(f"the Hub gave no commit sha for {self.repo_type} repo {self.repo!r}")
        return self.commit

    def list_files(self) -> list[str]:
        from huggingface_hub import HfApi

        files = self._call(
            "list files", HfApi().list_repo_files, self.repo,
            repo_type=self.repo_type, revision=self.commit,
        )
        return sorted(files)

    def local_path(self, path: str) -> Path:
        from huggingface_hub import hf_hub_download

        return Path(self._call(
            f"download {path!r}", hf_hub_download, self.repo, path,
            repo_type=self.repo_type, revision=self.commit,
        ))


# --------------------------------------------------------------------------- shared logic


def match_patterns(patterns: Iterable[str], available: Iterable[str], what: str) -> list[str]:
    """Sorted unique paths matching any pattern; a pattern matching nothing is an error."""
    available = sorted(available)
    chosen: set[str] = set()
    for pat in patterns:
        hits = [p for p in available if p == pat or fnmatch.fnmatchcase(p, pat)]
        if not hits:
            raise DownloadError(f"pattern {pat!r} matches no file in {what}")
        chosen.update(hits)
    return sorted(chosen)


def _safe_dest(root: Path, path: str) -> Path:
    parts = PurePosixPath(path).parts
    if not parts or PurePosixPath(path).is_absolute() or ".." in parts:
        raise DownloadError(f"refusing unsafe repo path {path!r}")
    return root.joinpath(*parts)


def _copy_hashed(src: Path, dest: Path) -> tuple[str, int]:
    """Stream ``src`` to ``dest`` via a temp name; return (sha256, size)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    h = hashlib.sha256()
    size = 0
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            for block in iter(lambda: fin.read(CHUNK), b""):
                h.update(block)
                fout.write(block)
                size += len(block)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return h.hexdigest(), size


def _fetch(repo: str, repo_type: str, revision: str | None, patterns, pins: dict,
           out_dir: Path, mirror: Path | None) -> dict:
    if not repo or not isinstance(repo, str):
        raise DownloadError(f"{repo_type} spec has no repo id")
    if isinstance(patterns, str):
        patterns = [patterns]
    patterns = list(patterns or ["*"])
    pins = dict(pins or {})

    backend = _MirrorBackend(mirror, repo, repo_type) if mirror is not None else _HubBackend(repo, repo_type)
    resolved = backend.resolve_revision(revision)
    where = f"{repo_type} repo {repo!r}" + (" (mirror)" if mirror is not None else f" at {resolved}")
    paths = match_patterns(patterns, backend.list_files(), where)

    unused = sorted(set(pins) - set(paths))
    if unused:
        raise DownloadError(f"sha256 pinned for file(s) not selected by files patterns in {where}: {', '.join(unused)}")

    files: dict[str, dict] = {}
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        for path in paths:
            if path == MANIFEST:
                raise DownloadError(f"repo file {path!r} collides with the manifest name in {where}")
            dest = _safe_dest(tmp, path)
            digest, size = _copy_hashed(backend.local_path(path), dest)
            want = pins.get(path)
            if want is not None and want.lower() != digest:
                dest.unlink(missing_ok=True)
                raise DownloadError(
                    f"sha256 mismatch for {path} in {repo}: expected {want.lower()}, got {digest}"
                )
            files[path] = {"sha256": digest, "size": size}
        # mirror mode: "mirror"; Hub: the resolved commit sha. A requested revision
        # (branch, tag or sha) is kept beside it when one was given.
        manifest = {"repo": repo, "revision": resolved, "files": files}
        if revision:
            manifest["requested_revision"] = revision
        atomic_write_json(tmp / MANIFEST, manifest)
    return manifest


def fetch_dataset(spec: dict, out_dir: Path, mirror: Path | None) -> dict:
    """Fetch the files of one dataset source; return the manifest written to ``out_dir``.

    spec: ``{"name", "repo": "org/name", "revision": str|None, "files": [path|glob],
    "sha256": {path: hex}}``.
    """
    return _fetch(spec.get("repo"), "dataset", spec.get("revision"), spec.get("files"),
                  spec.get("sha256"), Path(out_dir), Path(mirror) if mirror is not None else None)


def fetch_model(spec: dict, out_dir: Path, mirror: Path | None) -> dict:
    """Fetch a base model's files; spec: ``{"id", "revision", "files", "sha256"?}``.

    ``files`` absent or empty means every file in the repository.
    """
    return _fetch(spec.get("id"), "model", spec.get("revision"), spec.get("files"),
                  spec.get("sha256"), Path(out_dir), Path(mirror) if mirror is not None else None)
