"""Provenance lock: what exactly went into a build, as deterministic JSON.

``collect(spec, inputs)`` returns a dict; ``write(spec, inputs, out_path)`` writes it
as canonical JSON (``reprotune.io``) to ``results/<recipe>/provenance.json``.

``spec``::

    {"recipe": <resolved recipe dict>,
     "command": [argv of the snakemake invocation or a canonical rebuild command],
     "containers": {rule: image-or-digest or None}}

``inputs`` maps a name to a file or directory, by convention::

    "source:<name>"  -> resources/sources/<recipe>/<name>/   (has manifest.json)
    "base"           -> base model directory
    "adapter:<name>" -> results/<recipe>/adapters/<name>/
    "model"          -> results/<recipe>/model/
    "eval"           -> results/<recipe>/eval/results.json

What is recorded, per input: its path relative to the working directory, the sha256
of every file (directories: sorted relative POSIX paths), an aggregate sha256 of the
directory (sha256 of the ``sha256sum``-style listing), and ``repo``/``revision`` from
a ``manifest.json`` at the top of a directory when there is one. When that manifest
records a conversion (a base model whose pickle ``.bin`` weights were converted to
safetensors on download), the entry also carries ``fetched`` (the repo files as
downloaded, ``.bin`` shards included: ``sha256``, ``size``) and ``converted`` (each
written safetensors file and index: ``sha256``, ``size``, ``source``, the fetched
file it was made from); ``files`` lists what is in the directory. Besides the inputs:

* ``fixtures`` (tiny scale, i.e. the recipe has a ``hub_mirror``): every file of the
  fixture mirror (the tiny base model's tokenizer is trained on all of them, the
  sources are read from them) and of ``fixtures/eval``, by repository-relative path:
  ``sha256``, ``size``, ``pinned`` (its line in ``fixtures/SHA256SUMS``, or null) and
  ``revision`` (the code revision: fixtures are versioned with the code);
* ``code``: ``git describe --always --dirty``, ``git rev-parse HEAD`` (``"unknown"``
  outside git), ``dirty`` (true/false/null), the sha256 of every code file the
  recipe's stages run (``reprotune.plan.code_inputs`` of download, clean, mix,
  train, merge, evaluate, provenance; the card's own code is left out because the
  card is rendered *from* this lock) and ``package_sha256``, a digest of that list;
* ``base_model``: the real base id and revision the recipe names, ``twin`` (true when the build
  trained on its twin, with the profile's path and sha256 and the twin settings);
* ``containers``: image per rule; ``{}`` with ``containers_note`` saying so when the
  rules ran on the host (the default: no ``--use-singularity``);
* the Python version, the versions of the ML stack, the sha256 of the resolved
  recipe's canonical JSON, the (scrubbed) recipe itself and ``command``: the
  canonical rebuild command (``reprotune.plan.rebuild_command``), not the argv of
  this run, which holds machine-specific paths.

What is never recorded: wall-clock times, host names, environment variables,
absolute paths (paths are made relative to the working directory; a path outside it
is recorded as ``external:<name>``) and tokens: every string is scrubbed of anything
that looks like a token (``hf_...``, ``sk-...``, ``ghp_...``, ...; ``TOKEN_RE``), of
the value of every token-like environment variable (a name containing TOKEN, KEY,
SECRET or PASSWORD, a value of 16 or more characters), and values under keys that
name a secret (``token``, ``hf_token``, ``password``, ...) are replaced.

Excluded files: only files matching ``EXCLUDE_PATTERNS`` (in-flight temp files of
``reprotune.io`` atomic writes, ``*.log`` files, which are volatile by nature, and
Snakemake's empty ``.snakemake_timestamp`` marker in directory outputs). They
are not hidden: their relative paths are listed under ``excluded`` of the input.
"""
from __future__ import annotations

import fnmatch
import importlib.metadata as md
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

from .io import atomic_write_json, canonical_json, sha256_bytes, sha256_file

FORMAT = "reprotune.provenance/v1"

PACKAGES = (
    "torch", "transformers", "peft", "accelerate", "datasets", "bitsandbytes",
    "lm_eval", "snakemake", "huggingface_hub", "tokenizers", "safetensors",
    "numpy", "pyarrow", "jinja2", "pyyaml", "jsonschema", "datasketch",
)
CONTAINERS_NONE = ("none: every rule ran on the host Python environment (no --use-singularity); "
                   "no container image was used, so there is no image digest to record")

# fnmatch patterns on the file *name*; matching files are listed, not hashed.
EXCLUDE_PATTERNS = (".*.tmp-*", "*.log", ".snakemake_timestamp")

HF_TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{20,}")
# token shapes of common services: Hugging Face, OpenAI/Anthropic, GitHub, Slack, AWS
TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_-]{20,}|gh[pousr]_[A-Za-z0-9]{20,}"
                      r"|github_pat_[A-Za-z0-9_]{20,}|xox[abpr]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16}")
SECRET_ENV_RE = re.compile(r"TOKEN|KEY|SECRET|PASSW", re.IGNORECASE)


def secret_env_values(environ: dict[str, str] | None = None) -> list[str]:
    """Values of token-like environment variables (long enough to be a secret), longest first."""
    environ = os.environ if environ is None else environ
    vals = {v for k, v in environ.items() if SECRET_ENV_RE.search(k) and len(v) >= 16 and not v.startswith("/")}
    return sorted(vals, key=lambda v: (-len(v), v))
REDACTED = "<redacted>"
# values under these keys (case-insensitive, "-" read as "_") are never written
SECRET_KEY_NAMES = frozenset({
    "token", "hf_token", "auth_token", "use_auth_token", "access_token", "hub_token",
    "api_key", "apikey", "password", "passwd", "secret", "wandb_api_key",
})


def _is_secret_key(key: str) -> bool:
    return key.strip().lstrip("-").lower().replace("-", "_") in SECRET_KEY_NAMES

PACKAGE_DIR = Path(__file__).resolve().parent
CODE_SUFFIXES = {".py", ".j2", ".yaml", ".yml", ".json", ".txt", ".smk"}


# --------------------------------------------------------------------------- scrubbing
class _Scrubber:
    """Removes tokens and absolute paths (relative to ``root``) from strings."""

    def __init__(self, root: Path):
        self.root = str(root).rstrip("/")
        self.secrets = secret_env_values()

    def text(self, s: str) -> str:
        for secret in self.secrets:
            s = s.replace(secret, REDACTED)
        s = TOKEN_RE.sub(REDACTED, s)
        if self.root and self.root != "/":
            s = s.replace(self.root + "/", "").replace(self.root, ".")
        return s

    def arg(self, s: str) -> str:
        s = self.text(str(s))
        if "=" in s and not s.startswith("/"):
            key, _, val = s.partition("=")
            if _is_secret_key(key):
                return f"{key}={REDACTED}"
            if os.path.isabs(val):
                return f"{key}={Path(val).name}"
        if os.path.isabs(s):
            return Path(s).name
        return s

    def obj(self, value: Any) -> Any:
        if isinstance(value, dict):
            out = {}
            for k, v in value.items():
                key = self.text(str(k))
                if _is_secret_key(str(k)) and v is not None and not isinstance(v, (bool, dict, list)):
                    out[key] = REDACTED
                else:
                    out[key] = self.obj(v)
            return out
        if isinstance(value, (list, tuple)):
            return [self.obj(v) for v in value]
        if isinstance(value, str):
            return self.text(value)
        return value


def _scrub_command(scrubber: _Scrubber, argv: list) -> list[str]:
    out: list[str] = []
    prev = ""
    for a in argv:
        a = str(a)
        out.append(REDACTED if prev.startswith("-") and _is_secret_key(prev) else scrubber.arg(a))
        prev = a
    return out


def scrub(value: Any, root: str | os.PathLike | None = None) -> Any:
    """Public helper: scrub tokens (and ``root`` prefixes) from any JSON-like value."""
    return _Scrubber(Path(root) if root else Path(os.getcwd())).obj(value)


# --------------------------------------------------------------------------- hashing
def _rel(path: Path, root: Path) -> str:
    path = Path(os.path.abspath(path))
    try:
        return path.relative_to(root).as_posix() or "."
    except ValueError:
        return f"external:{path.name}"


def _excluded(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pat) for pat in EXCLUDE_PATTERNS)


def listing_sha256(files: dict[str, str]) -> str:
    """Aggregate digest of a directory: sha256 of ``"<sha256>  <relpath>\\n"`` lines, sorted by path."""
    text = "".join(f"{files[k]}  {k}\n" for k in sorted(files))
    return sha256_bytes(text.encode("utf-8"))


def hash_input(path: str | os.PathLike, root: Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"provenance input does not exist: {_rel(path, root)}")
    entry: dict[str, Any] = {"path": _rel(path, root)}
    if path.is_file():
        entry.update(type="file", sha256=sha256_file(path), size=path.stat().st_size)
        return entry
    files: dict[str, str] = {}
    excluded: list[str] = []
    size = 0
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for name in sorted(filenames):
            full = Path(dirpath) / name
            rel = full.relative_to(path).as_posix()
            if _excluded(name):
                excluded.append(rel)
                continue
            files[rel] = sha256_file(full)
            size += full.stat().st_size
    entry.update(type="dir", files=dict(sorted(files.items())), sha256=listing_sha256(files),
                 size=size, excluded=sorted(excluded))
    manifest = path / "manifest.json"
    if manifest.is_file():
        import json
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            data = None
        if isinstance(data, dict):
            for key in ("repo", "revision"):
                if key in data:
                    entry[key] = data[key]
            if isinstance(data.get("converted"), dict):
                # pickle weights converted on download (the base model): the fetched files,
                # .bin shards included, and each written safetensors file with its source
                entry["fetched"] = data.get("files") or {}
                entry["converted"] = data["converted"]
    return entry


# --------------------------------------------------------------------------- environment
def _git(args: list[str], cwd: Path) -> str:
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C",
                 "GIT_OPTIONAL_LOCKS": "0"},
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    value = out.stdout.strip()
    return value if out.returncode == 0 and value else "unknown"


REPO_DIR = PACKAGE_DIR.parents[1]


def _repo_rel(p: str | os.PathLike) -> str:
    p = Path(os.path.abspath(p))
    try:
        return p.relative_to(REPO_DIR).as_posix()
    except ValueError:
        return f"external:{p.name}"


def stage_code_files(recipe: dict | None) -> list[str]:
    """The code files (absolute paths) of every stage that makes this recipe's artifacts,
    fixtures excluded (see ``fixture_files``). Without a recipe: every package source file."""
    if recipe and recipe.get("sources") is not None and recipe.get("adapters"):
        from . import plan

        files = set(plan.code_inputs("download") + plan.code_inputs("merge") + plan.code_inputs("evaluate")
                    + plan.code_inputs("provenance"))
        if plan.uses_twin(recipe):
            files.update(plan.code_inputs("twin", recipe))
        for src in recipe["sources"]:
            files.update(plan.code_inputs("clean", recipe, src))
        for ad in recipe["adapters"]:
            files.update(plan.code_inputs("train", recipe, ad) + plan.code_inputs("mix", recipe, ad)
                         + plan.code_inputs("tokenize", recipe, ad))
        fixtures = REPO_DIR / "fixtures"
        return sorted(f for f in files if not Path(f).is_relative_to(fixtures))
    return sorted(str(p) for p in PACKAGE_DIR.rglob("*")
                  if p.is_file() and p.suffix in CODE_SUFFIXES and "__pycache__" not in p.parts)


def code_revision(repo_dir: Path | None = None, recipe: dict | None = None) -> dict:
    """Git revision of the code (``unknown`` outside git), dirty flag, and the stages' code files."""
    repo_dir = repo_dir or PACKAGE_DIR
    files = {_repo_rel(f): sha256_file(f) for f in stage_code_files(recipe)}
    describe = _git(["describe", "--always", "--dirty"], repo_dir)
    return {
        "git_describe": describe,
        "git_head": _git(["rev-parse", "HEAD"], repo_dir),
        "dirty": None if describe == "unknown" else describe.endswith("-dirty"),
        "files": dict(sorted(files.items())),
        "package_sha256": listing_sha256(files),
    }


def _pins(fixtures: Path) -> dict[str, str]:
    """``fixtures/SHA256SUMS`` (paths relative to the mirror) as repo-relative path -> sha256."""
    sums = fixtures / "SHA256SUMS"
    out: dict[str, str] = {}
    if sums.is_file():
        for line in sums.read_text(encoding="utf-8").splitlines():
            parts = line.strip().split(None, 1)
            if len(parts) == 2:
                rel = parts[1].lstrip("*")
                base = "fixtures" if rel.startswith(("hub/", "eval/")) else "fixtures/hub"
                out[f"{base}/{rel}"] = parts[0]
    return out


def fixture_files(recipe: dict | None) -> dict:
    """Tiny scale: every fixture file the build reads, with sha256, size, pin and revision."""
    mirror = (recipe or {}).get("hub_mirror")
    if not mirror:
        return {}
    mirror_dir = Path(mirror) if os.path.isabs(mirror) else REPO_DIR / mirror
    roots = [mirror_dir, REPO_DIR / "fixtures" / "eval"]
    pins = _pins(REPO_DIR / "fixtures")
    revision = _git(["describe", "--always", "--dirty"], PACKAGE_DIR)
    out = {}
    for root in roots:
        if not root.is_dir():
            continue
        for p in sorted(root.rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts and not _excluded(p.name):
                rel = _repo_rel(p)
                out[rel] = {"sha256": sha256_file(p), "size": p.stat().st_size, "pinned": pins.get(rel),
                            "revision": revision}
    return dict(sorted(out.items()))


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        version = None
        for candidate in (name, name.replace("_", "-")):
            try:
                version = md.version(candidate)
                break
            except md.PackageNotFoundError:
                continue
        out[name] = version
    return out


def recipe_sha256(recipe: dict) -> str:
    return sha256_bytes(canonical_json(recipe).encode("utf-8"))


# --------------------------------------------------------------------------- public API
def collect(spec: dict, inputs: dict[str, str | os.PathLike]) -> dict:
    """Build the provenance dict (see module docstring). Deterministic for the same inputs."""
    root = Path(os.path.abspath(spec.get("root") or os.getcwd()))
    scrubber = _Scrubber(root)
    recipe = spec.get("recipe") or {}
    from . import __version__
    containers = {str(k): (scrubber.text(v) if isinstance(v, str) else None)
                  for k, v in sorted((spec.get("containers") or {}).items())}
    prov = {
        "format": FORMAT,
        "recipe_id": recipe.get("id"),
        "scale": recipe.get("scale", "full"),
        "recipe_sha256": recipe_sha256(recipe),
        "recipe": scrubber.obj(recipe),
        "command": _scrub_command(scrubber, spec.get("command") or []),
        "containers": containers,
        "containers_note": None if any(containers.values()) else CONTAINERS_NONE,
        "code": {**code_revision(recipe=recipe), "reprotune": __version__},
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "versions": package_versions(),
        "fixtures": fixture_files(recipe),
        "base_model": base_model_record(recipe),
        "inputs": {name: scrubber.obj(hash_input(path, root)) for name, path in sorted(inputs.items())},
    }
    return prov


def base_model_record(recipe: dict) -> dict:
    """The real base model the recipe names, and whether this build trained on its twin (then the
    profile it was built from, by repository path and sha256)."""
    base = recipe.get("base_model") or {}
    out = {"id": base.get("id"), "revision": base.get("revision"), "twin": base.get("twin") is not None}
    if out["twin"]:
        from . import bases

        path = bases.path(base["id"])
        out["twin_profile"] = {"path": _repo_rel(str(path)), "sha256": sha256_file(path)}
        out["twin_settings"] = base["twin"]
    return out


def write(spec: dict, inputs: dict[str, str | os.PathLike], out_path: str | os.PathLike) -> dict:
    prov = collect(spec, inputs)
    atomic_write_json(out_path, prov)
    return prov


# --------------------------------------------------------------------------- diff
def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for k in sorted(value, key=str):
            _flatten(value[k], f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(value, list) and value and any(isinstance(v, (dict, list)) for v in value):
        for i, v in enumerate(value):
            _flatten(v, f"{prefix}[{i}]", out)
    else:
        out[prefix] = value


def _show(v: Any) -> str:
    if isinstance(v, str):
        return v
    return canonical_json(v).strip().replace("\n", " ")


def diff(a: dict, b: dict) -> list[str]:
    """Human-readable differences between two provenance dicts (sorted, one line each).

    Lines look like ``changed inputs.source:oasst1.files.data/x.parquet: <old> -> <new>``,
    ``added <key>: <value>`` or ``removed <key>: <value>``. An empty list means identical.
    """
    fa: dict[str, Any] = {}
    fb: dict[str, Any] = {}
    _flatten(a, "", fa)
    _flatten(b, "", fb)
    lines = []
    for key in sorted(set(fa) | set(fb)):
        if key not in fb:
            lines.append(f"removed {key}: {_show(fa[key])}")
        elif key not in fa:
            lines.append(f"added {key}: {_show(fb[key])}")
        elif fa[key] != fb[key]:
            lines.append(f"changed {key}: {_show(fa[key])} -> {_show(fb[key])}")
    return lines
