"""Byte-for-byte reproducibility check: build twice from scratch, compare every artifact.

``python -m reprotune verify [--recipes ID ...] [--keep] [--workdir DIR] [--cores N]``
(also ``make verify``) runs the workflow (this repository's ``Snakefile`` and
``config.yaml``) twice, each time in a fresh, empty ``--directory`` root, then compares
the sha256 of *every* file under the two ``results/`` trees -- data files, rejects,
reports, adapters, checkpoint fingerprints, merged model shards, tokenizer files,
eval JSON, cards, provenance, Snakemake's ``.snakemake_timestamp`` markers. Nothing
under ``results/`` is excluded: run-dependent values (wall times, dates, absolute
paths, host names) belong in ``logs/``, never in ``results/``.

It prints one row per file (``identical`` / ``DIFFERENT`` / ``only in A`` /
``only in B``) and a summary line ``N identical, M different[, K only in one build]``.
Exit status: 0 when every file is identical and both builds hold the same files,
1 otherwise, 2 when a build fails (``VerifyError``: one line naming the build log).

``--compare A B`` skips the builds and compares two existing build roots (each holding
a ``results/``), e.g. two clones built on different machines.

The two builds run one after the other with the same ``--cores``; each job runs
single-threaded (``THREADS = 1`` in ``rules/common.smk``) so the bytes do not depend
on the number of cores either.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .io import atomic_write_text, sha256_file

REPO = Path(__file__).resolve().parents[2]


class VerifyError(RuntimeError):
    pass


@dataclass(frozen=True)
class Row:
    path: str          # relative to results/
    status: str        # identical | DIFFERENT | only in A | only in B
    sha_a: str | None
    sha_b: str | None


def tree_hashes(results_dir: str | os.PathLike) -> dict[str, str]:
    """sha256 of every file under ``results_dir`` (hidden files included), by relative POSIX path."""
    root = Path(results_dir)
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            full = Path(dirpath) / name
            out[full.relative_to(root).as_posix()] = sha256_file(full)
    return dict(sorted(out.items()))


def compare(results_a: str | os.PathLike, results_b: str | os.PathLike) -> list[Row]:
    a, b = tree_hashes(results_a), tree_hashes(results_b)
    rows = []
    for rel in sorted(set(a) | set(b)):
        if rel not in b:
            rows.append(Row(rel, "only in A", a[rel], None))
        elif rel not in a:
            rows.append(Row(rel, "only in B", None, b[rel]))
        else:
            rows.append(Row(rel, "identical" if a[rel] == b[rel] else "DIFFERENT", a[rel], b[rel]))
    return rows


def summary_line(rows: list[Row]) -> str:
    same = sum(r.status == "identical" for r in rows)
    diff = sum(r.status == "DIFFERENT" for r in rows)
    only = sum(r.status.startswith("only") for r in rows)
    line = f"{same} identical, {diff} different"
    if only:
        line += f", {only} only in one build"
    return line


def ok(rows: list[Row]) -> bool:
    return bool(rows) and all(r.status == "identical" for r in rows)


def format_table(rows: list[Row]) -> str:
    width = max([len("status")] + [len(r.status) for r in rows])
    lines = [f"{'status':<{width}}  {'sha256 (A)':<12}  {'sha256 (B)':<12}  artifact (under results/)"]
    for r in rows:
        sa = (r.sha_a or "-")[:12]
        sb = (r.sha_b or "-")[:12] if r.sha_b != r.sha_a else "="
        lines.append(f"{r.status:<{width}}  {sa:<12}  {sb:<12}  {r.path}")
    lines.append(summary_line(rows))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- builds
def _snakemake_exe() -> str:
    here = Path(sys.executable).parent / "snakemake"
    if here.is_file():
        return str(here)
    found = shutil.which("snakemake")
    if not found:
        raise VerifyError("snakemake is not installed (expected next to the Python running reprotune)")
    return found


def build_command(root: Path, recipes: list[str] | None, cores: int, configfile: Path,
                  snakefile: Path | None = None) -> list[str]:
    cmd = [_snakemake_exe(), "--snakefile", str(snakefile or REPO / "Snakefile"), "--directory", str(root),
           "--configfile", str(configfile), "--cores", str(cores)]
    if recipes:
        cmd += ["--config", f"recipes=[{','.join(recipes)}]"]
    return cmd


def _env() -> dict[str, str]:
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    # the rules import reprotune from this checkout (common.smk puts <repo>/src first;
    # `python -m reprotune` in the jobs follows PYTHONPATH)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src")] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def build(root: Path, recipes: list[str] | None, cores: int, configfile: Path, label: str) -> None:
    """One from-scratch build in the empty directory ``root``; its output goes to ``root/verify-build.log``."""
    root.mkdir(parents=True, exist_ok=True)
    if any(root.iterdir()):
        raise VerifyError(f"build {label}: {root} is not empty (a from-scratch build needs an empty root)")
    log_path = root.parent / f"{root.name}.snakemake.log"
    cmd = build_command(root, recipes, cores, configfile)
    print(f"verify: build {label}: {' '.join(cmd)}", flush=True)
    with open(log_path, "w", encoding="utf-8") as logf:
        r = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, env=_env(), cwd=str(REPO))
    if r.returncode != 0:
        raise VerifyError(f"build {label} failed (snakemake exit {r.returncode}); see {log_path} "
                          f"and {root / 'logs'}")


def verify(recipes: list[str] | None = None, *, keep: bool = False, workdir: str | None = None,
           cores: int = 2, configfile: str | None = None, report: str | None = None,
           compare_roots: tuple[str, str] | None = None) -> int:
    """Build twice (or compare two existing roots), print the table; return the exit status."""
    cfg = Path(configfile).resolve() if configfile else REPO / "config.yaml"
    parent = None
    if compare_roots:
        root_a, root_b = (Path(p) for p in compare_roots)
    else:
        if workdir:
            Path(workdir).mkdir(parents=True, exist_ok=True)
        parent = Path(tempfile.mkdtemp(prefix="reprotune-verify-", dir=workdir))
        root_a, root_b = parent / "a", parent / "b"
    try:
        if not compare_roots:
            try:
                build(root_a, recipes, cores, cfg, "A")
                build(root_b, recipes, cores, cfg, "B")
            except VerifyError:
                keep = True  # a failed build's logs are what the user needs next
                raise
        for r in (root_a, root_b):
            if not (r / "results").is_dir():
                raise VerifyError(f"{r} has no results/ directory")
        rows = compare(root_a / "results", root_b / "results")
        table = format_table(rows)
        sys.stdout.write(f"A = {root_a}\nB = {root_b}\n" + table)
        if report:
            atomic_write_text(report, table)
        return 0 if ok(rows) else 1
    finally:
        if parent is not None:
            if keep:
                print(f"verify: builds kept under {parent}", flush=True)
            else:
                shutil.rmtree(parent, ignore_errors=True)
