"""Small, shared file helpers: atomic writes, canonical JSON, hashing.

Every artifact the pipeline writes goes through these so that a crash never
leaves a complete-looking half file, and so that the same content always gives
the same bytes (sorted keys, fixed separators, trailing newline).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

CHUNK = 1 << 20

# OSError causes that are the user's to fix (full disk, no permission, read-only
# file system, quota): the atomic writers turn them into one ``ArtifactWriteError``.
USER_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EROFS, errno.EDQUOT})


class ArtifactWriteError(OSError):
    """An artifact could not be written (disk full, permission denied, read-only).

    ``str(e)`` is one line naming the artifact path and the cause; the CLI prints it
    as ``reprotune: error: ...`` and exits 2. Nothing is left at the target path
    (the temp file or directory is removed), so no partial artifact exists.
    """

    def __init__(self, path: str | os.PathLike, cause: OSError):
        self.path = _display(path)
        self.cause = cause
        code = errno.errorcode.get(cause.errno, str(cause.errno)) if cause.errno else "OSError"
        reason = cause.strerror or str(cause)
        self.message = f"cannot write {self.path}: {reason} ({code})"
        super().__init__(cause.errno, self.message)

    def __str__(self) -> str:
        return self.message


def _display(path: str | os.PathLike) -> str:
    """The path as the user typed it relative to the working directory, when it is below it."""
    p = Path(os.path.abspath(path))
    try:
        return p.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return str(p)


def _is_user_write_error(e: BaseException) -> bool:
    return isinstance(e, OSError) and not isinstance(e, ArtifactWriteError) and e.errno in USER_WRITE_ERRNOS


@contextlib.contextmanager
def _write_errors(path: Path) -> Iterator[None]:
    """Re-raise disk-full / permission errors as ``ArtifactWriteError`` naming ``path``."""
    try:
        yield
    except OSError as e:
        if _is_user_write_error(e):
            raise ArtifactWriteError(path, e) from e
        raise


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> str:
    """Deterministic JSON text: sorted keys, 2-space indent, UTF-8, newline."""
    return json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def _tmp_sibling(path: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    return Path(name)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    with _write_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _tmp_sibling(path)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, canonical_json(obj))


def jsonl_line(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False) + "\n"


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> int:
    """Stream rows to a temp file, then rename. Returns the row count."""
    path = Path(path)
    n = 0
    with _write_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _tmp_sibling(path)
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                for row in rows:
                    f.write(jsonl_line(row))
                    n += 1
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return n


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def replace_dir(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Move a finished temp directory into place: readable permissions, whatever was at
    ``path`` removed, then one rename (same file system)."""
    tmp, path = Path(tmp), Path(path)
    os.chmod(tmp, 0o755)
    if path.exists():
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temp directory next to ``path``; on success rename it to ``path``.

    On any exception the temp directory is removed and ``path`` is left untouched,
    so a crashed stage never leaves a directory that looks complete. A full disk or
    a permission error -- while creating the temp dir, while the stage writes into
    it, or while renaming it -- is raised as ``ArtifactWriteError`` naming ``path``.
    """
    path = Path(path)
    with _write_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        replace_dir(tmp, path)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if _is_user_write_error(e):
            raise ArtifactWriteError(path, e) from e
        raise


def load_yaml(stream):
    """``yaml.safe_load`` through libyaml's C parser where PyYAML has it (the workflow reads a few
    dozen YAML files -- recipes, schemas, profiles, presets -- every time Snakemake starts: the
    pure-Python parser took most of a dry run's time)."""
    import yaml

    return yaml.load(stream, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
