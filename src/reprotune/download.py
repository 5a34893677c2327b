"""Fetch pinned dataset / model files from the Hugging Face Hub or a local mirror.

One code path for both: a *backend* lists the repository's files and hands over
one file as a local path; everything else (pattern matching, sha256 pinning,
resumable copying, the manifest, the atomic output) is shared.

Pins, by mode:

* **mirror** (tiny scale, or a local full copy of the Hub): every file must be
  listed in the mirror's ``SHA256SUMS`` (next to the mirror directory:
  ``fixtures/SHA256SUMS`` for ``fixtures/hub``; paths relative to the mirror,
  e.g. ``datasets/org/name/file``) and match it. A fixture edited without
  regenerating ``SHA256SUMS`` stops the build with one line naming the file and
  both hashes.
* **Hub**: the recipe's ``revision``/``sha256`` when given; where they are open,
  the first download resolves the revision to a commit sha and writes the files'
  hashes into the recipe's lock file (``reprotune.lock``); later downloads use the
  locked commit and verify every file against the lock. ``frozen`` refuses to
  download without a lock entry (or with a stale one).

A file whose sha256 differs from any pin is deleted (our copy, and for the Hub
the cached blob, so a retry downloads it again) and the build stops with
``sha256 mismatch for <file> in <repo>: expected <pin> (<which pin>), got <hash>``.

Robustness: files are streamed (1 MiB blocks), never loaded whole. Output is
staged in ``.<out>.partial/`` next to ``out_dir``; each file is copied to
``.<name>.part`` and renamed to its name only once complete and hash-checked, and
the staging directory becomes ``out_dir`` only when every file is there. An
interrupted run leaves the staging directory behind: the next run reuses the
completed files (re-verified against their pins) and continues a ``.part`` file
from where it stopped when its bytes are a prefix of the source (else restarts
it). Hub downloads themselves resume through huggingface_hub's cache
(``.incomplete`` files are continued by ``hf_hub_download``).

Output directory layout::

    out_dir/<path in repo>      (one file per matched path)
    out_dir/manifest.json       {"repo", "revision", "files": {path: {"sha256", "size"}}}
"""
from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

from reprotune import lock as lockmod
from reprotune.io import CHUNK, atomic_write_json, replace_dir

MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"
log = logging.getLogger(__name__)


class DownloadError(RuntimeError):
    """A fetch failed; the message is one line that names the repo/file at fault."""


# --------------------------------------------------------------------------- Hub calls
# Module-level so that tests can replace them with a fake Hub (no network here).


def hub_resolve(repo: str, repo_type: str, revision: str | None) -> str:
    """The commit sha that ``revision`` (None = the default branch) points at."""
    from huggingface_hub import HfApi

    return HfApi().repo_info(repo, revision=revision, repo_type=repo_type).sha


def hub_list_files(repo: str, repo_type: str, commit: str) -> list[str]:
    from huggingface_hub import HfApi

    return list(HfApi().list_repo_files(repo, repo_type=repo_type, revision=commit))


def hub_download(repo: str, repo_type: str, commit: str, path: str) -> str:
    """Local path of one file (huggingface_hub's cache; interrupted downloads resume)."""
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo, path, repo_type=repo_type, revision=commit)


# --------------------------------------------------------------------------- backends


class _MirrorBackend:
    """A directory laid out like the Hub, pinned by its SHA256SUMS."""

    def __init__(self, mirror: Path, repo: str, repo_type: str, sums: Path | None = None):
        self.mirror = Path(mirror)
        self.root = self.mirror / f"{repo_type}s" / repo
        self.prefix = f"{repo_type}s/{repo}/"
        self.repo = repo
        if not self.root.is_dir():
            raise DownloadError(f"mirror has no {repo_type} repo {repo!r} (looked in {self.root})")
        self.sums_path = Path(sums) if sums is not None else self.mirror.parent / SUMS
        self.sums = read_sums(self.sums_path)

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

    def pin(self, path: str) -> tuple[str, str]:
        key = self.prefix + path
        if key not in self.sums:
            raise DownloadError(f"mirror file {key} is not pinned in {self.sums_path} "
                                "(regenerate the fixtures or add its sha256 line)")
        return self.sums[key], f"pinned in {self.sums_path.name}"

    def local_path(self, path: str) -> Path:
        return self.root / path

    def discard(self, path: str) -> None:
        """Never delete mirror files: the mirror is the pinned input, not a cache."""


class _HubBackend:
    """The Hugging Face Hub, pinned to one resolved commit."""

    def __init__(self, repo: str, repo_type: str):
        self.repo = repo
        self.repo_type = repo_type
        self.commit: str | None = None
        self._local: dict[str, Path] = {}

    def _call(self, what: str, fn: Callable, *args):
        try:
            return fn(*args)
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
        sha = self._call("resolve revision " + repr(revision or "main"), hub_resolve,
                         self.repo, self.repo_type, revision)
        if not sha or not isinstance(sha, str):
            raise DownloadError(f"the Hub gave no commit sha for {self.repo_type} repo {self.repo!r}")
        self.commit = sha
        return sha

    def list_files(self) -> list[str]:
        return sorted(self._call("list files", hub_list_files, self.repo, self.repo_type, self.commit))

    def local_path(self, path: str) -> Path:
        p = Path(self._call(f"download {path!r}", hub_download, self.repo, self.repo_type, self.commit, path))
        self._local[path] = p
        return p

    def discard(self, path: str) -> None:
        """Delete a corrupt cached file (the blob behind the snapshot link) so a retry refetches it."""
        p = self._local.pop(path, None)
        if p is None:
            return
        blob = Path(os.path.realpath(p))
        for q in {blob, p}:
            try:
                q.unlink()
            except OSError:
                pass


# --------------------------------------------------------------------------- shared logic


def read_sums(path: Path) -> dict[str, str]:
    """``<sha256>  <path>`` lines (sha256sum format) -> {path: sha256}."""
    if not Path(path).is_file():
        raise DownloadError(f"mirror pin file {path} not found (every mirror file must be pinned by sha256)")
    out: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            digest, sep, rel = line.partition("  ")
            digest = digest.strip().lower()
            if not sep or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise DownloadError(f"{path}:{n}: not a '<sha256>  <path>' line")
            out[rel.lstrip("*")] = digest
    return out


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


def part_path(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.part")


def _hash_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


def _prefix_hash(src: Path, part: Path, n: int):
    """sha256 state over the first ``n`` bytes when ``part`` equals ``src``'s first n bytes, else None."""
    h = hashlib.sha256()
    with open(src, "rb") as fs, open(part, "rb") as fp:
        left = n
        while left > 0:
            a = fs.read(min(CHUNK, left))
            b = fp.read(min(CHUNK, left))
            if not a or a != b:
                return None
            h.update(a)
            left -= len(a)
    return h


def copy_resumable(src: Path, dest: Path, check: Callable[[str, int], None] | None = None) -> tuple[str, int, int]:
    """Stream ``src`` to ``dest`` through ``.<name>.part``; return (sha256, size, bytes resumed).

    An existing ``.part`` whose bytes are a prefix of ``src`` is continued, any
    other is restarted. ``check(sha256, size)`` runs before the rename and may
    raise; the ``.part`` is then deleted and ``dest`` is never created. On any
    other error (interruption) the ``.part`` stays for the next attempt.
    """
    src, dest = Path(src), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    src_size = src.stat().st_size
    h = None
    resumed = 0
    if part.exists():
        n = part.stat().st_size
        if 0 < n <= src_size:
            h = _prefix_hash(src, part, n)
            resumed = n if h is not None else 0
        if h is None:
            part.unlink()
    if h is None:
        h = hashlib.sha256()
    size = resumed
    with open(src, "rb") as fin, open(part, "ab" if resumed else "wb") as fout:
        fin.seek(resumed)
        for block in iter(lambda: fin.read(CHUNK), b""):
            h.update(block)
            fout.write(block)
            size += len(block)
        fout.flush()
        os.fsync(fout.fileno())
    digest = h.hexdigest()
    if size != src_size:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{src} changed size while being copied ({src_size} -> {size} bytes)")
    if check is not None:
        try:
            check(digest, size)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
    os.chmod(part, 0o644)
    os.replace(part, dest)
    return digest, size, resumed


def staging_dir(out_dir: Path) -> Path:
    return out_dir.parent / f".{out_dir.name}.partial"


def _fetch(repo: str, repo_type: str, revision: str | None, patterns, pins: dict,
           out_dir: Path, mirror: Path | None, lock: dict | None = None, frozen: bool = False,
           mirror_sums: Path | None = None) -> dict:
    if not repo or not isinstance(repo, str):
        raise DownloadError(f"{repo_type} spec has no repo id")
    if isinstance(patterns, str):
        patterns = [patterns]
    patterns = list(patterns or ["*"])
    pins = {k: v.lower() for k, v in dict(pins or {}).items()}
    out_dir = Path(out_dir)

    # ---- lock entry (Hub only: a mirror is pinned by its SHA256SUMS)
    entry = None
    lpath = Path(lock["path"]) if mirror is None and lock else None
    lkey = lock.get("key") if lock else None
    if mirror is None and frozen and lpath is None:
        raise DownloadError(f"frozen: no lock file given for {repo_type} repo {repo!r}")
    if lpath is not None:
        entry = lockmod.get_entry(lpath, lkey)
        if entry is not None:
            why = lockmod.stale_reason(entry, repo, repo_type, revision, patterns)
            if why:
                if frozen:
                    raise lockmod.LockError(f"frozen: lock entry {lkey!r} in {lpath} is stale ({why}); "
                                            "rerun without frozen to update it")
                log.warning("lock entry %s in %s is stale (%s): resolving again", lkey, lpath, why)
                entry = None
        if entry is None and frozen:
            raise lockmod.LockError(f"frozen: {lpath} has no entry {lkey!r} for {repo_type} repo {repo!r} "
                                    "(run the download once without frozen to create it)")

    if mirror is not None:
        backend = _MirrorBackend(mirror, repo, repo_type, mirror_sums)
        resolved = backend.resolve_revision(revision)
    else:
        backend = _HubBackend(repo, repo_type)
        if entry is not None:
            resolved = backend.commit = entry["revision"]
        else:
            resolved = backend.resolve_revision(revision)
    where = f"{repo_type} repo {repo!r}" + (" (mirror)" if mirror is not None else f" at {resolved}")
    if entry is not None:
        paths = sorted(entry["files"])
    else:
        paths = match_patterns(patterns, backend.list_files(), where)

    unused = sorted(set(pins) - set(paths))
    if unused:
        raise DownloadError(f"sha256 pinned for file(s) not selected by files patterns in {where}: {', '.join(unused)}")

    def wanted(path: str) -> list[tuple[str, str]]:
        out = []
        if path in pins:
            out.append((pins[path], "pinned in the recipe"))
        if entry is not None:
            out.append((str(entry["files"][path]["sha256"]).lower(), f"locked in {lpath.name}"))
        if mirror is not None:
            out.append(backend.pin(path))
        return out

    def checker(path: str):
        def check(digest: str, size: int) -> None:
            for want, label in wanted(path):
                if want != digest:
                    backend.discard(path)
                    raise DownloadError(f"sha256 mismatch for {path} in {repo}: expected {want} ({label}), "
                                        f"got {digest}; the corrupt file was deleted")
        return check

    for path in paths:
        if path == MANIFEST:
            raise DownloadError(f"repo file {path!r} collides with the manifest name in {where}")
    stage = staging_dir(out_dir)
    stage.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict] = {}
    for path in paths:
        dest = _safe_dest(stage, path)
        check = checker(path)
        if dest.is_file() and wanted(path):
            # completed by an interrupted earlier run: reuse only if it still matches its pins
            digest, size = _hash_file(dest)
            if all(want == digest for want, _ in wanted(path)):
                files[path] = {"sha256": digest, "size": size}
                log.info("reusing completed %s from an earlier interrupted run", path)
                continue
        dest.unlink(missing_ok=True)
        digest, size, resumed = copy_resumable(backend.local_path(path), dest, check)
        if resumed:
            log.info("resumed %s at byte %d of %d", path, resumed, size)
        files[path] = {"sha256": digest, "size": size}

    # anything else in the staging dir (files no longer selected, stray parts) goes
    keep = {_safe_dest(stage, p) for p in paths}
    for p in sorted(stage.rglob("*"), reverse=True):
        if p.is_file() and p not in keep:
            p.unlink()
        elif p.is_dir() and not any(p.iterdir()):
            p.rmdir()
    # mirror mode: "mirror"; Hub: the resolved commit sha. A requested revision
    # (branch, tag or sha) is kept beside it when one was given.
    manifest = {"repo": repo, "revision": resolved, "files": files}
    if revision:
        manifest["requested_revision"] = revision
    atomic_write_json(stage / MANIFEST, manifest)
    replace_dir(stage, out_dir)

    if lpath is not None and entry is None:
        lockmod.set_entry(lpath, lock.get("recipe"), lkey,
                          lockmod.make_entry(repo, repo_type, revision, patterns, resolved, files))
        log.info("locked %s of %s at %s in %s", lkey, repo, resolved, lpath)
    return manifest


def _common_args(spec: dict, mirror) -> dict:
    return {
        "lock": spec.get("lock"),
        "frozen": bool(spec.get("frozen", False)),
        "mirror": Path(mirror) if mirror is not None else None,
        "mirror_sums": Path(spec["mirror_sums"]) if spec.get("mirror_sums") else None,
    }


def fetch_dataset(spec: dict, out_dir: Path, mirror: Path | None) -> dict:
    """Fetch the files of one dataset source; return the manifest written to ``out_dir``.

    spec: ``{"name", "repo": "org/name", "revision": str|None, "files": [path|glob],
    "sha256": {path: hex}, "lock"?: {"path", "key", "recipe"}, "frozen"?: bool,
    "mirror_sums"?: path}``.
    """
    return _fetch(spec.get("repo"), "dataset", spec.get("revision"), spec.get("files"),
                  spec.get("sha256"), Path(out_dir), **_common_args(spec, mirror))


def fetch_model(spec: dict, out_dir: Path, mirror: Path | None) -> dict:
    """Fetch a base model's files; spec: ``{"id", "revision", "files", "sha256"?, "lock"?, "frozen"?}``.

    ``files`` absent or empty means every file in the repository.
    """
    return _fetch(spec.get("id"), "model", spec.get("revision"), spec.get("files"),
                  spec.get("sha256"), Path(out_dir), **_common_args(spec, mirror))
