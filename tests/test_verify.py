"""`reprotune verify`: two from-scratch builds of one recipe are byte-identical under results/.

The full check (all five recipes) is `make verify`; the suite runs it on tulu-v2-qlora-70b.
The table logic is also tested on synthetic trees so that a difference is seen to fail.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _tinybuild as tb  # noqa: E402

from reprotune import verify  # noqa: E402


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / "results" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def test_compare_table_and_exit_status(tmp_path, capsys):
    a = _tree(tmp_path / "a", {"r/x.json": b"1", "r/m/.snakemake_timestamp": b"", "r/same.txt": b"s"})
    b = _tree(tmp_path / "b", {"r/x.json": b"2", "r/m/.snakemake_timestamp": b"", "r/new.txt": b"n",
                               "r/same.txt": b"s"})
    rc = verify.verify(compare_roots=(str(a), str(b)), report=str(tmp_path / "report.txt"))
    out = capsys.readouterr().out
    assert rc == 1
    rows = {line.split()[-1]: line.split()[0] for line in out.splitlines()[3:-1]}
    assert rows == {"r/m/.snakemake_timestamp": "identical", "r/new.txt": "only", "r/same.txt": "identical",
                    "r/x.json": "DIFFERENT"}
    assert out.splitlines()[-1] == "2 identical, 1 different, 1 only in one build"
    assert (tmp_path / "report.txt").read_text().splitlines()[-1] == out.splitlines()[-1]
    # identical trees -> 0; a file in only one build alone is enough to fail
    assert verify.verify(compare_roots=(str(a), str(a))) == 0
    c = _tree(tmp_path / "c", {"r/x.json": b"1", "r/m/.snakemake_timestamp": b"", "r/same.txt": b"s",
                               "r/extra": b""})
    assert verify.verify(compare_roots=(str(a), str(c))) == 1


def test_failed_build_is_one_line_error(tmp_path, capsys):
    from reprotune import cli

    rc = cli.main(["verify", "--recipes", "no-such-recipe", "--workdir", str(tmp_path), "--cores", "1"])
    err = capsys.readouterr().err
    assert rc == 2
    assert re.fullmatch(r"reprotune: error: build A failed \(snakemake exit \d+\); see \S+a\.snakemake\.log "
                        r"and \S+/a/logs\n", err), err
    assert "file not found" in next(tmp_path.glob("*/a.snakemake.log")).read_text()


@pytest.mark.slow
def test_two_builds_of_one_recipe_are_byte_identical():
    r, a, b = tb.verified()
    assert r.returncode == 0, r.stdout[-5000:]
    lines = r.stdout.splitlines()
    summary = lines[-2] if lines[-1].startswith("verify: builds kept") else lines[-1]
    n = len(verify.tree_hashes(a / "results"))
    assert summary == f"{n} identical, 0 different"
    # everything is compared: weights, tokenizer, eval JSON, card, provenance, markers
    names = set(verify.tree_hashes(a / "results"))
    rid = tb.RECIPE
    for rel in ("adapters/main/adapter_model.safetensors", "model/model.safetensors", "model/tokenizer.json",
                "eval/results.json", "eval/summary.json", "README.md", "provenance.json",
                "data/main/train.jsonl", "clean/tulu_v2_mix/rejects.jsonl", "model/.snakemake_timestamp"):
        assert f"{rid}/{rel}" in names, rel
    # lm-eval's run-dependent sidecar lives in logs/, not results/
    assert not any(n.endswith(".runinfo.json") for n in names)
    assert (a / "logs" / rid / "evaluate.runinfo.json").is_file()
