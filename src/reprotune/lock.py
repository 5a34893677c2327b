"""Recipe lock files: the revisions and file hashes a full-scale download resolved.

A recipe may leave ``revision`` and ``sha256`` open (the real Hub cannot be
queried from every machine that writes recipes). The first full-scale download
of a source resolves the revision to a commit sha, hashes every file and records
both in ``<recipes_dir>/<recipe id>.lock.json`` (next to the recipe, like a
package lock). Later downloads read the entry and verify against it; with
``frozen: true`` in the workflow config a missing or stale entry stops the build.

Layout (canonical JSON)::

    {"version": 1, "recipe": "<id>",
     "sources": {"<source>": ENTRY, ...},
     "base_model": ENTRY | absent}

    ENTRY = {"repo": "org/name", "repo_type": "dataset"|"model",
             "requested_revision": str | null,   # what the recipe asked for
             "patterns": [...],                   # the recipe's files patterns, sorted
             "revision": "<40-hex commit sha>",
             "files": {path: {"sha256": hex, "size": int}},     # as fetched from the repo
             "converted": {name: {"sha256": hex, "size": int,   # model repos with pickle weights
                                  "source": path | null}}}      # only: the safetensors written

``converted`` lists each ``model-0000i-of-0000N.safetensors`` (or ``model.safetensors``)
written from a ``.bin`` shard (``source``) and the ``model.safetensors.index.json``
(``source``: ``pytorch_model.bin.index.json``, or null when the repo has none). A
locked rebuild verifies the converted files against these hashes too.

An entry is *stale* when its repo, requested revision or patterns differ from the
recipe's (the recipe was edited after locking), or, for a model, when its
``converted`` names differ from what converting its files writes (a lock written
before the conversion existed).

Several download jobs of one recipe may run at once; updates take an exclusive
``flock`` on the lock file's directory, re-read the file, change one entry and
rename a fresh file into place.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from reprotune.io import atomic_write_json, read_json

VERSION = 1


class LockError(RuntimeError):
    """A lock file is unreadable, stale under ``frozen``, or missing under ``frozen``."""


def lock_path(recipes_dir: str | os.PathLike, recipe_id: str) -> Path:
    return Path(recipes_dir) / f"{recipe_id}.lock.json"


def _split(key: str) -> tuple[str, str | None]:
    """``"sources/<name>"`` -> ("sources", name); ``"base_model"`` -> ("base_model", None)."""
    if key == "base_model":
        return key, None
    kind, sep, name = key.partition("/")
    if kind != "sources" or not sep or not name:
        raise LockError(f"bad lock key {key!r} (expected 'sources/<name>' or 'base_model')")
    return kind, name


def read_lock(path: str | os.PathLike) -> dict | None:
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = read_json(path)
    except (OSError, ValueError) as e:
        raise LockError(f"{path}: cannot read lock file ({e})") from None
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise LockError(f"{path}: not a version-{VERSION} reprotune lock file")
    return data


def get_entry(path: str | os.PathLike, key: str) -> dict | None:
    data = read_lock(path)
    if data is None:
        return None
    kind, name = _split(key)
    if name is None:
        return data.get(kind)
    return (data.get(kind) or {}).get(name)


def make_entry(repo: str, repo_type: str, requested: str | None, patterns: list[str],
               revision: str, files: dict, converted: dict | None = None) -> dict:
    """A lock entry; ``converted`` (model repos whose pickle weights were converted to
    safetensors): {written file: {"sha256", "size", "source"}}."""
    entry = {
        "repo": repo,
        "repo_type": repo_type,
        "requested_revision": requested,
        "patterns": sorted(patterns),
        "revision": revision,
        "files": {p: {"sha256": files[p]["sha256"], "size": files[p]["size"]} for p in sorted(files)},
    }
    if converted:
        entry["converted"] = {p: {k: converted[p][k] for k in ("sha256", "size", "source")}
                              for p in sorted(converted)}
    return entry


def stale_reason(entry: dict, repo: str, repo_type: str, requested: str | None, patterns: list[str]) -> str | None:
    """Why ``entry`` does not describe this request any more (None: it does)."""
    if entry.get("repo") != repo or entry.get("repo_type", repo_type) != repo_type:
        return f"repo is {entry.get('repo')!r} in the lock, {repo!r} in the recipe"
    if entry.get("requested_revision") != requested:
        return (f"revision is {entry.get('requested_revision')!r} in the lock, "
                f"{requested!r} in the recipe")
    if sorted(entry.get("patterns") or []) != sorted(patterns):
        return f"files are {sorted(entry.get('patterns') or [])} in the lock, {sorted(patterns)} in the recipe"
    rev = entry.get("revision")
    if not isinstance(rev, str) or not rev:
        return "the lock entry has no revision"
    if not isinstance(entry.get("files"), dict) or not entry["files"]:
        return "the lock entry lists no files"
    return None


@contextlib.contextmanager
def _locked_dir(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def set_entry(path: str | os.PathLike, recipe_id: str | None, key: str, entry: dict) -> None:
    """Write one entry (under an exclusive lock; other entries are kept)."""
    path = Path(path)
    kind, name = _split(key)
    with _locked_dir(path.parent):
        data = read_lock(path) or {"version": VERSION, "recipe": recipe_id, "sources": {}}
        if recipe_id is not None and data.get("recipe") not in (None, recipe_id):
            raise LockError(f"{path}: lock file belongs to recipe {data.get('recipe')!r}, not {recipe_id!r}")
        if name is None:
            data[kind] = entry
        else:
            data.setdefault(kind, {})[name] = entry
        atomic_write_json(path, data)
