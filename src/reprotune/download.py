"""Fetch pinned dataset / model files from the Hugging Face Hub or a local mirror.

One code path for both: a *backend* lists the repository's files and hands over
one file as a local path; everything else (pattern matching, sha256 pinning,
resumable copying, the manifest, the atomic output) is shared.

Pins, by mode:

* **mirror** (tiny scale, twin bases, or a local full copy of the Hub): every file
  must be listed in the mirror's ``SHA256SUMS`` (``spec["mirror_sums"]`` when given,
  else next to the mirror directory: ``fixtures/SHA256SUMS`` for ``fixtures/hub``;
  paths relative to the mirror, e.g. ``datasets/org/name/file`` or
  ``models/org/name/config.json``) and match it. A fixture edited without
  regenerating ``SHA256SUMS`` stops the build with one line naming the file and
  both hashes. Datasets and models are read the same way
  (``<mirror>/datasets/<repo>/``, ``<mirror>/models/<repo>/``).
* **Hub**: the recipe's ``revision``/``sha256`` when given; where they are open,
  the first download resolves the revision to a commit sha and writes the files'
  hashes into the recipe's lock file (``reprotune.lock``); later downloads use the
  locked commit and verify every file against the lock. ``frozen`` refuses to
  download without a lock entry (or with a stale one).

A file whose sha256 differs from any pin is deleted (our copy, and for the Hub
the cached blob, so a retry downloads it again) and the build stops with
``sha256 mismatch for <file> in <repo>: expected <pin> (<which pin>), got <hash>``.

Model weights are safetensors downstream, always. When the selected files of a
model repo hold PyTorch pickle weights (``pytorch_model.bin`` or
``pytorch_model-0000i-of-0000N.bin``, with or without ``pytorch_model.bin.index.json``)
and no ``*.safetensors``, each shard is converted once, here, with torch's
restricted unpickler (``weights_only=True``, memory-mapped, one shard at a time) to
``model-0000i-of-0000N.safetensors`` (same split; ``model.safetensors`` for a single
``pytorch_model.bin``) plus ``model.safetensors.index.json``; the ``.bin`` files and
their index are then left out of the output. A pickle holding anything but tensors
stops the build with one line. Where safetensors and ``.bin`` weights are both
selected, the ``.bin`` files are not downloaded (a warning says which patterns to
use). Conversion is deterministic (same shard bytes -> same safetensors bytes), so a
lock entry records the converted files' sha256 and a locked rebuild verifies them.

Robustness: files are streamed (1 MiB blocks), never loaded whole. Output is
staged in ``.<out>.partial/`` next to ``out_dir``; each file is copied to
``.<name>.part`` and renamed to its name only once complete and hash-checked, and
the staging directory becomes ``out_dir`` only when every file is there. An
interrupted run leaves the staging directory behind: the next run reuses the
completed files (re-verified against their pins) and continues a ``.part`` file
from where it stopped when its bytes are a prefix of the source (else restarts
it). Hub downloads themselves resume through huggingface_hub's cache
(``.incomplete`` files are continued by ``hf_hub_download``). Converted shards are
written the same way (``.part``, then renamed) and recorded in the staging dir's
``.converted.json`` (with the sha256 of the ``.bin`` they came from), so a rerun
reuses those whose source bytes are unchanged and whose own hash still matches.
The staging dir holds the ``.bin`` shards and the safetensors side by side until
every shard is converted (peak disk: twice the weights, besides the Hub cache or
the mirror).

Output directory layout::

    out_dir/<path in repo>      (one file per matched path; no .bin weights)
    out_dir/manifest.json       {"repo", "revision", "requested_revision"?,
                                 "files": {path: {"sha256", "size"}},        # as fetched
                                 "converted"?: {name: {"sha256", "size",     # written by the
                                                       "source"}}}           # conversion
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import re
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, NamedTuple

from reprotune import lock as lockmod
from reprotune.io import CHUNK, atomic_write_json, canonical_json, read_json, replace_dir

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


def _lock_entry(lock: dict | None, repo: str, repo_type: str, revision: str | None, patterns: list[str],
                frozen: bool, mirror: Path | None) -> tuple[Path | None, str | None, dict | None]:
    """(lock path, key, current entry or None); Hub only: a mirror is pinned by its SHA256SUMS."""
    lpath = Path(lock["path"]) if mirror is None and lock else None
    lkey = lock.get("key") if lock else None
    if mirror is None and frozen and lpath is None:
        raise DownloadError(f"frozen: no lock file given for {repo_type} repo {repo!r}")
    if lpath is None:
        return None, lkey, None
    entry = lockmod.get_entry(lpath, lkey)
    if entry is not None:
        why = lockmod.stale_reason(entry, repo, repo_type, revision, patterns)
        if not why and repo_type == "model":
            why = _converted_stale(entry, f"model repo {repo!r}")
        if why:
            if frozen:
                raise lockmod.LockError(f"frozen: lock entry {lkey!r} in {lpath} is stale ({why}); "
                                        "rerun without frozen to update it")
            log.warning("lock entry %s in %s is stale (%s): resolving again", lkey, lpath, why)
            entry = None
    if entry is None and frozen:
        raise lockmod.LockError(f"frozen: {lpath} has no entry {lkey!r} for {repo_type} repo {repo!r} "
                                "(run the download once without frozen to create it)")
    return lpath, lkey, entry


class _Pins:
    """Every sha256 a file must have: the recipe's pin, the lock entry's, the mirror's SHA256SUMS."""

    def __init__(self, repo: str, backend, recipe_pins: dict, entry: dict | None, lpath: Path | None):
        self.repo, self.backend, self.recipe, self.entry, self.lpath = repo, backend, recipe_pins, entry, lpath

    def wanted(self, path: str) -> list[tuple[str, str]]:
        out = []
        if path in self.recipe:
            out.append((self.recipe[path], "pinned in the recipe"))
        if self.entry is not None:
            out.append((str(self.entry["files"][path]["sha256"]).lower(), f"locked in {self.lpath.name}"))
        if isinstance(self.backend, _MirrorBackend):
            out.append(self.backend.pin(path))
        return out

    def wanted_converted(self, name: str) -> list[tuple[str, str]]:
        """A converted file's pin: the lock entry's ``converted`` (a mirror pins only what it ships)."""
        got = (self.entry or {}).get("converted", {}).get(name)
        return [(str(got["sha256"]).lower(), f"locked in {self.lpath.name}")] if got else []

    def matches(self, path: str, digest: str) -> bool:
        return all(want == digest for want, _ in self.wanted(path))

    def checker(self, path: str) -> Callable[[str, int], None]:
        def check(digest: str, size: int) -> None:
            for want, label in self.wanted(path):
                if want != digest:
                    self.backend.discard(path)
                    raise DownloadError(f"sha256 mismatch for {path} in {self.repo}: expected {want} ({label}), "
                                        f"got {digest}; the corrupt file was deleted")
        return check


def _open_backend(repo: str, repo_type: str, revision: str | None, mirror: Path | None,
                  mirror_sums: Path | None, entry: dict | None):
    if mirror is not None:
        backend = _MirrorBackend(mirror, repo, repo_type, mirror_sums)
        return backend, backend.resolve_revision(revision)
    backend = _HubBackend(repo, repo_type)
    if entry is not None:
        backend.commit = entry["revision"]
        return backend, entry["revision"]
    return backend, backend.resolve_revision(revision)


def _select(patterns: list[str], backend, repo_type: str, where: str) -> list[str]:
    available = backend.list_files()
    try:
        return match_patterns(patterns, available, where)
    except DownloadError as e:
        if repo_type == "model" and any(_pickle_weight(p) for p in available) \
                and not any(p.endswith(".safetensors") for p in available):
            raise DownloadError(f"{e}; the repo ships only pickled weights (pytorch_model*.bin): select "
                                "them ('pytorch_model*.bin', '*.json'), they are converted to safetensors "
                                "on download") from None
        raise


def _fetch_files(stage: Path, paths: list[str], backend, pins: _Pins) -> dict[str, dict]:
    """Copy every path into the staging dir (reusing completed files that still match their pins)."""
    files: dict[str, dict] = {}
    for path in paths:
        dest = _safe_dest(stage, path)
        if dest.is_file() and pins.wanted(path):
            # completed by an interrupted earlier run: reuse only if it still matches its pins
            digest, size = _hash_file(dest)
            if pins.matches(path, digest):
                files[path] = {"sha256": digest, "size": size}
                log.info("reusing completed %s from an earlier interrupted run", path)
                continue
        dest.unlink(missing_ok=True)
        digest, size, resumed = copy_resumable(backend.local_path(path), dest, pins.checker(path))
        if resumed:
            log.info("resumed %s at byte %d of %d", path, resumed, size)
        files[path] = {"sha256": digest, "size": size}
    return files


def _prune_stage(stage: Path, keep: set[Path]) -> None:
    """Delete everything else in the staging dir (files no longer selected, stray parts)."""
    for p in sorted(stage.rglob("*"), reverse=True):
        if p.is_file() and p not in keep:
            p.unlink()
        elif p.is_dir() and not any(p.iterdir()):
            p.rmdir()


def _fetch(repo: str, repo_type: str, revision: str | None, patterns, pins: dict,
           out_dir: Path, mirror: Path | None, lock: dict | None = None, frozen: bool = False,
           mirror_sums: Path | None = None) -> dict:
    if not repo or not isinstance(repo, str):
        raise DownloadError(f"{repo_type} spec has no repo id")
    patterns = [patterns] if isinstance(patterns, str) else list(patterns or ["*"])
    pins = {k: v.lower() for k, v in dict(pins or {}).items()}
    out_dir = Path(out_dir)
    lpath, lkey, entry = _lock_entry(lock, repo, repo_type, revision, patterns, frozen, mirror)
    backend, resolved = _open_backend(repo, repo_type, revision, mirror, mirror_sums, entry)
    where = f"{repo_type} repo {repo!r}" + (" (mirror)" if mirror is not None else f" at {resolved}")
    paths = sorted(entry["files"]) if entry is not None else _select(patterns, backend, repo_type, where)
    unused = sorted(set(pins) - set(paths))
    if unused:
        raise DownloadError(f"sha256 pinned for file(s) not selected by files patterns in {where}: {', '.join(unused)}")
    paths, conv = _plan_weights(paths, where) if repo_type == "model" else (paths, None)
    for path in paths:
        if path in (MANIFEST, STATE):
            raise DownloadError(f"repo file {path!r} collides with the name of a file written here in {where}")

    stage = staging_dir(out_dir)
    stage.mkdir(parents=True, exist_ok=True)
    pinned = _Pins(repo, backend, pins, entry, lpath)
    files = _fetch_files(stage, paths, backend, pinned)
    keep = set(paths) | ({STATE, *conv.outputs} if conv is not None else set())
    _prune_stage(stage, {_safe_dest(stage, p) for p in keep})
    # mirror mode: "mirror"; Hub: the resolved commit sha. A requested revision
    # (branch, tag or sha) is kept beside it when one was given.
    manifest = {"repo": repo, "revision": resolved, "files": files}
    if revision:
        manifest["requested_revision"] = revision
    if conv is not None:
        manifest["converted"] = _convert(stage, conv, files, pinned)
    atomic_write_json(stage / MANIFEST, manifest)
    replace_dir(stage, out_dir)

    if lpath is not None and entry is None:
        lockmod.set_entry(lpath, lock.get("recipe"), lkey,
                          lockmod.make_entry(repo, repo_type, revision, patterns, resolved, files,
                                             manifest.get("converted")))
        log.info("locked %s of %s at %s in %s", lkey, repo, resolved, lpath)
    return manifest


# --------------------------------------------------------------------------- pickle shards -> safetensors
# A model repo that ships only PyTorch pickle weights (pytorch_model.bin or
# pytorch_model-0000i-of-0000N.bin) is converted here, once: nothing downstream
# ever loads a pickle. Each shard is read with torch.load(weights_only=True,
# mmap=True) (a restricted unpickler: tensors and plain containers only) and
# written as model-0000i-of-0000N.safetensors (same split) with a
# model.safetensors.index.json; the .bin files are then removed from the output.

BIN_INDEX = "pytorch_model.bin.index.json"
ST_INDEX = "model.safetensors.index.json"
# staging dir only: the converted shards an interrupted run finished, and what they came from
STATE = ".converted.json"
_SHARD_RE = re.compile(r"pytorch_model-(\d+)-of-(\d+)\.bin")


def _pickle_weight(path: str) -> bool:
    return path == "pytorch_model.bin" or _SHARD_RE.fullmatch(path) is not None


class _Conversion(NamedTuple):
    shards: tuple[tuple[str, str], ...]  # (.bin path, .safetensors name), in shard order
    bin_index: str | None                # pytorch_model.bin.index.json when selected
    index_dst: str | None                # model.safetensors.index.json; None for one pytorch_model.bin

    @property
    def outputs(self) -> list[str]:
        return [dst for _, dst in self.shards] + ([self.index_dst] if self.index_dst else [])


def _plan_weights(paths: list[str], where: str) -> tuple[list[str], _Conversion | None]:
    """The paths to fetch and, when the weights are pickles only, how to convert them."""
    pickles = [p for p in paths if _pickle_weight(p)]
    if not pickles:
        return paths, None
    if any(p.endswith(".safetensors") for p in paths):
        drop = set(pickles) | {BIN_INDEX}
        kept = [p for p in paths if p not in drop]
        suggest = ["*.safetensors"] + [p for p in kept if not p.endswith(".safetensors")]
        log.warning("%s: both safetensors and pickled .bin weights are selected; the .bin files (%s) are "
                    "ignored (not downloaded). To select only what is used, set files: %s", where,
                    ", ".join(sorted(drop & set(paths))), json.dumps(suggest))
        return kept, None
    return paths, _shard_plan(pickles, BIN_INDEX if BIN_INDEX in paths else None, where)


def _shard_plan(pickles: list[str], bin_index: str | None, where: str) -> _Conversion:
    if pickles == ["pytorch_model.bin"]:
        return _Conversion((("pytorch_model.bin", "model.safetensors"),), bin_index, None)
    if "pytorch_model.bin" in pickles:
        raise DownloadError(f"{where}: both pytorch_model.bin and pytorch_model-*-of-*.bin shards are "
                            "selected; select one checkpoint")
    matches = [_SHARD_RE.fullmatch(p) for p in pickles]
    totals = sorted({m[2] for m in matches})
    if len(totals) != 1:
        raise DownloadError(f"{where}: .bin shards of several checkpoints are selected (of {', '.join(totals)})")
    total, width = int(totals[0]), len(totals[0])
    missing = sorted(set(range(1, total + 1)) - {int(m[1]) for m in matches})
    if missing:
        first = f"pytorch_model-{missing[0]:0{width}d}-of-{totals[0]}.bin"
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise DownloadError(f"{where}: shard {first}{more} of the checkpoint is not selected (select every shard)")
    shards = tuple((p, "model" + p[len("pytorch_model"):-len(".bin")] + ".safetensors") for p in sorted(pickles))
    return _Conversion(shards, bin_index, ST_INDEX)


def _converted_stale(entry: dict, where: str) -> str | None:
    """Why a model lock entry does not list the files its conversion writes (None: it does)."""
    _, conv = _plan_weights(sorted(entry["files"]), where)
    want = sorted(conv.outputs) if conv is not None else []
    have = sorted(entry.get("converted") or {})
    return None if want == have else f"converted files are {have} in the lock, {want} now"


def _convert(stage: Path, conv: _Conversion, files: dict, pins: _Pins) -> dict[str, dict]:
    """Convert every shard (reusing those an interrupted run finished), write the index, drop the pickles."""
    state = _read_state(stage)
    converted: dict[str, dict] = {}
    for src, dst in conv.shards:
        rec = _reusable(stage / dst, src, files[src]["sha256"], state.get(dst), pins.wanted_converted(dst))
        if rec is not None:
            log.info("reusing %s converted by an earlier interrupted run", dst)
        else:
            rec = _convert_shard(stage / src, stage / dst, pins)
            state[dst] = {**rec, "source_sha256": files[src]["sha256"]}
            atomic_write_json(stage / STATE, state)
        converted[dst] = rec
    if conv.index_dst:
        converted[conv.index_dst] = _write_index(stage, conv, pins)
    for path in [src for src, _ in conv.shards] + ([conv.bin_index] if conv.bin_index else []):
        (stage / path).unlink()
    (stage / STATE).unlink(missing_ok=True)
    return converted


def _read_state(stage: Path) -> dict:
    try:
        state = read_json(stage / STATE)
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _reusable(path: Path, src: str, src_sha: str, rec: dict | None, locked: list) -> dict | None:
    """An earlier run's converted shard, when it came from these source bytes and is intact."""
    if not rec or rec.get("source") != src or rec.get("source_sha256") != src_sha or not path.is_file():
        return None
    digest, size = _hash_file(path)
    if digest != rec.get("sha256") or any(want != digest for want, _ in locked):
        return None
    return {"sha256": digest, "size": size, "source": src}


def _convert_shard(src_path: Path, dst_path: Path, pins: _Pins) -> dict:
    from safetensors.torch import save_file

    src, dst = src_path.name, dst_path.name
    tensors = _load_plain_tensors(src_path, src, pins.repo)
    part = part_path(dst_path)
    try:
        save_file(_unshared(tensors), str(part), metadata={"format": "pt"})
    except (ValueError, RuntimeError, TypeError) as e:
        part.unlink(missing_ok=True)
        raise DownloadError(f"cannot convert {src} in {pins.repo} to safetensors: {_one_line(e)}") from None
    count = len(tensors)
    del tensors  # one shard in memory at a time
    digest, size = _install(part, dst_path, src, pins)
    log.info("converted %s -> %s (%d tensors, %.1f MB)", src, dst, count, size / 1e6)
    return {"sha256": digest, "size": size, "source": src}


def _install(part: Path, dest: Path, source: str | None, pins: _Pins) -> tuple[str, int]:
    """fsync, hash and check a written ``.part`` against the lock, then rename it into place."""
    with open(part, "rb+") as f:
        os.fsync(f.fileno())
    digest, size = _hash_file(part)
    for want, label in pins.wanted_converted(dest.name):
        if want != digest:
            part.unlink()
            made = f"converted from {source}" if source else "written by the conversion"
            raise DownloadError(f"sha256 mismatch for {dest.name} ({made}) in {pins.repo}: expected {want} "
                                f"({label}), got {digest}; the corrupt file was deleted")
    os.chmod(part, 0o644)
    os.replace(part, dest)
    return digest, size


def _load_plain_tensors(path: Path, name: str, repo: str) -> dict:
    """A pickle checkpoint as {name: tensor}, through torch's restricted unpickler only."""
    import pickle
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        raise DownloadError(f"{name} in {repo} is not a plain tensor checkpoint: torch.load(weights_only=True) "
                            f"refused it ({_refusal(e)})") from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise DownloadError(f"cannot read {name} in {repo} as a PyTorch checkpoint: {_one_line(e)}") from None
    if not isinstance(obj, dict):
        raise DownloadError(f"{name} in {repo} is not a plain tensor checkpoint (it holds a "
                            f"{type(obj).__name__}, not a dict of tensors)")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor) or value.layout != torch.strided:
            what = "sparse" if isinstance(value, torch.Tensor) else f"of type {type(value).__name__}"
            raise DownloadError(f"{name} in {repo} is not a plain tensor checkpoint ({key!r} holds a value "
                                f"{what}, not a dense tensor)")
    return obj


def _unshared(tensors: dict) -> dict:
    """Own, contiguous storage for every tensor that shares it (tied weights) or is a strided view."""
    import torch

    users: dict[int, int] = {}
    for t in tensors.values():
        ptr = t.untyped_storage().data_ptr()
        users[ptr] = users.get(ptr, 0) + 1
    out = {}
    for key, t in tensors.items():
        shared = users[t.untyped_storage().data_ptr()] > 1
        out[key] = t.clone(memory_format=torch.contiguous_format) if shared or not t.is_contiguous() else t
    return out


def _safetensors_sizes(path: Path) -> dict[str, int]:
    """{tensor name: byte size} from a safetensors file's header (the data is not read)."""
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    return {k: v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"}


def _write_index(stage: Path, conv: _Conversion, pins: _Pins) -> dict:
    weight_map: dict[str, str] = {}
    first: dict[str, str] = {}  # tensor -> the .bin shard it was first found in
    total = 0
    for src, dst in conv.shards:
        for tensor, nbytes in _safetensors_sizes(stage / dst).items():
            if tensor in weight_map:
                raise DownloadError(f"tensor {tensor!r} is in two shards of {pins.repo} ({first[tensor]} and {src})")
            weight_map[tensor], first[tensor] = dst, src
            total += nbytes
    if conv.bin_index:
        _check_bin_index(stage / conv.bin_index, weight_map, conv, pins.repo)
    dest = stage / conv.index_dst
    part = part_path(dest)
    part.write_bytes(canonical_json({"metadata": {"total_size": total}, "weight_map": weight_map}).encode("utf-8"))
    digest, size = _install(part, dest, conv.bin_index, pins)
    return {"sha256": digest, "size": size, "source": conv.bin_index}


def _check_bin_index(path: Path, weight_map: dict[str, str], conv: _Conversion, repo: str) -> None:
    """The pickle index must place every tensor in the shard that holds it."""
    try:
        bin_map = read_json(path)["weight_map"]
        if not isinstance(bin_map, dict):
            raise ValueError("weight_map is not an object")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DownloadError(f"{BIN_INDEX} in {repo} is not a weight index ({_one_line(e)})") from None
    to_dst = dict(conv.shards)
    to_src = {dst: src for src, dst in conv.shards}
    want = {t: to_dst.get(f, f) for t, f in bin_map.items()}
    for tensor in sorted(set(want) | set(weight_map)):
        if want.get(tensor) != weight_map.get(tensor):
            got = to_src.get(weight_map.get(tensor), "no shard")
            raise DownloadError(f"{BIN_INDEX} in {repo} does not match the shards: tensor {tensor!r} is in "
                                f"{bin_map.get(tensor, 'no shard')} by the index, in {got} by the shards")


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300] or type(e).__name__


def _refusal(e: BaseException) -> str:
    """The part of torch's weights-only refusal that names the offending object."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(e).splitlines()]
    named = [line for line in lines if "WeightsUnpickler error" in line]
    return _one_line(RuntimeError((named or [line for line in lines if line] or [type(e).__name__])[0]))


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
