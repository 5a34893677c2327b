"""Snakemake reruns exactly what changed.

A built copy of the repository (tests/_tinybuild.py: build A of the verify test, made
with the copy's Snakefile and code) is edited one thing at a time; `snakemake -n`
must schedule exactly the downstream jobs. Each edit is undone (bytes and mtime)
before the next one. Note: the twin base's tokenizer and pre-training read every file of the
fixture mirror, so a fixture edit also reruns twin_base, download_base and their descendants
(with one source, a fixture row of this recipe reruns every job); a template edit reruns mix
too (data_report.json counts the rows the fast and slow tokenizers encode differently, rendered
with the template).
"""
from __future__ import annotations

import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _tinybuild as tb  # noqa: E402

from reprotune.io import sha256_file  # noqa: E402

pytestmark = pytest.mark.slow

R = tb.RECIPE
SRC = "tulu_v2_mix"
TULU_FIXTURE = "fixtures/hub/datasets/allenai/tulu-v2-sft-mixture/data/train-00000-of-00003-99ee8754042a69f6.parquet"

CARD_ON = {"card", "report_assets"}  # report_assets (rules/report.smk) reads the card
TRAIN_ON = {"tokenize[main]", "train[main]", "merge", "evaluate", "provenance"} | CARD_ON
TEMPLATE_ON = {"mix[main]"} | TRAIN_ON
CLEAN_ON = {f"clean_source[{SRC}]", "mix[main]"} | TRAIN_ON
EVERYTHING = {"twin_base", "download_base", f"download_source[{SRC}]"} | CLEAN_ON


def planned_jobs(copy: Path, workdir: Path) -> set[str]:
    """Jobs of a dry run as ``rule[adapter or source]`` (recipe wildcard dropped: one recipe)."""
    r = tb.snakemake(copy, workdir, "-n")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    jobs, rule = set(), None
    for line in r.stdout.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line)
        if m:
            rule = m.group(1)
            if rule != "all":
                jobs.add(rule)
            continue
        m = re.match(r"^\s+wildcards: (.*)$", line)
        if m and rule and rule != "all":
            wc = dict(kv.split("=", 1) for kv in m.group(1).split(", "))
            extra = wc.get("adapter") or wc.get("source")
            if extra:
                jobs.discard(rule)
                jobs.add(f"{rule}[{extra}]")
    return jobs


@contextmanager
def edited(path: Path, change):
    """Apply ``change(path)``; afterwards restore the exact bytes and mtime."""
    data, st = path.read_bytes(), path.stat()
    try:
        change(path)
        yield
    finally:
        path.write_bytes(data)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _replace(old: str, new: str):
    def change(p: Path):
        text = p.read_text(encoding="utf-8")
        assert text.count(old) == 1, (p, old)
        p.write_text(text.replace(old, new), encoding="utf-8")
    return change


@pytest.fixture(scope="module")
def built():
    r, a, _ = tb.verified()
    assert r.returncode in (0, 1), r.stdout[-2000:]
    copy = tb.repo_copy()
    assert planned_jobs(copy, a) == set(), "a fresh build must have nothing to do"
    return copy, a


def test_template_string_reruns_train_onwards(built):
    copy, work = built
    with edited(copy / "src/reprotune/templates/chat/tulu.jinja", _replace("(Tulu 2, open-instruct)", "(Tulu 2)")):
        assert planned_jobs(copy, work) == TEMPLATE_ON
    assert planned_jobs(copy, work) == set()


def test_cleaning_parameter_reruns_clean_of_that_source_onwards(built):
    copy, work = built
    with edited(copy / f"recipes/{R}.yaml", _replace("- {name: empty_turns}", "- {name: empty_turns, include_system: true}")):
        assert planned_jobs(copy, work) == CLEAN_ON


def test_card_template_reruns_only_the_card(built):
    copy, work = built
    with edited(copy / "src/reprotune/card/templates/model_card.md.j2", _replace("## Provenance\n", "## Provenance (edited)\n")):
        assert planned_jobs(copy, work) == CARD_ON


def _edit_parquet_fixture_row(p: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pq.read_table(p)
    rows = t.to_pylist()
    rows[0]["messages"][0]["content"] += " (edited)"
    pq.write_table(pa.Table.from_pylist(rows, schema=t.schema), p)


def _repin(copy: Path, rel: str):
    sums = copy / "fixtures" / "SHA256SUMS"
    key = rel.removeprefix("fixtures/hub/")
    lines = [f"{sha256_file(copy / rel)}  {key}" if line.endswith("  " + key) else line
             for line in sums.read_text().splitlines()]
    sums.write_text("\n".join(lines) + "\n")


def test_fixture_row_of_this_source_reruns_download_onwards(built):
    copy, work = built
    sums = copy / "fixtures" / "SHA256SUMS"
    with edited(sums, lambda p: None), edited(copy / TULU_FIXTURE, _edit_parquet_fixture_row):
        _repin(copy, TULU_FIXTURE)
        assert planned_jobs(copy, work) == EVERYTHING
    assert planned_jobs(copy, work) == set()
