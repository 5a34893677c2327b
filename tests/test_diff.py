"""`reprotune diff A B`: names exactly what differs between two builds' provenance.json."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _tinybuild as tb  # noqa: E402

from reprotune import cli, provenance  # noqa: E402


def _build(root: Path, fixture_row: str, recipe: dict) -> dict:
    """A miniature build tree (a source fetched from a fixture, an adapter) and its provenance."""
    files = {
        "resources/sources/demo/oasst1/manifest.json": json.dumps({"repo": "OpenAssistant/oasst1",
                                                                   "revision": "mirror"}),
        "resources/sources/demo/oasst1/data/train.jsonl": '{"text": "row 0"}\n' + fixture_row,
        "results/demo/adapters/main/adapter_model.safetensors": "weights",
    }
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    spec = {"recipe": recipe, "command": ["snakemake", "--cores", "all"], "containers": {}, "root": str(root)}
    return provenance.collect(spec, {"source:oasst1": root / "resources/sources/demo/oasst1",
                                     "adapter:main": root / "results/demo/adapters/main"})


RECIPE = {"id": "demo", "scale": "tiny",
          "sources": {"oasst1": {"repo": "OpenAssistant/oasst1", "filters": [{"name": "max_chars", "max": 4000}]}}}


def _write(path: Path, prov: dict) -> str:
    path.write_text(json.dumps(prov))
    return str(path)


def test_one_fixture_row_is_named_exactly(tmp_path, capsys):
    a = _build(tmp_path / "a", '{"text": "row 1"}\n', RECIPE)
    b = _build(tmp_path / "b", '{"text": "row 1 edited"}\n', RECIPE)
    rc = cli.main(["diff", _write(tmp_path / "a.json", a), _write(tmp_path / "b.json", b)])
    lines = capsys.readouterr().out.splitlines()
    assert rc == 1
    keys = [line.split(":", 2)[0] + ":" + line.split(":", 2)[1] for line in lines]
    assert keys == ["changed inputs.source:oasst1.files.data/train.jsonl",
                    "changed inputs.source:oasst1.sha256",
                    "changed inputs.source:oasst1.size"], lines


def test_one_recipe_param_is_named_exactly(tmp_path, capsys):
    other = copy.deepcopy(RECIPE)
    other["sources"]["oasst1"]["filters"][0]["max"] = 2000
    a = _build(tmp_path / "a", "", RECIPE)
    b = _build(tmp_path / "b", "", other)
    rc = cli.main(["diff", _write(tmp_path / "a.json", a), _write(tmp_path / "b.json", b)])
    out = capsys.readouterr().out.splitlines()
    assert rc == 1
    assert out[0] == "changed recipe.sources.oasst1.filters[0].max: 4000 -> 2000"
    assert [line.split(":")[0] for line in out] == ["changed recipe.sources.oasst1.filters[0].max",
                                                     "changed recipe_sha256"]


@pytest.mark.slow
def test_identical_builds_print_identical_exit_0():
    _, a, b = tb.verified()
    pa, pb = (r / "results" / tb.RECIPE / "provenance.json" for r in (a, b))
    r = subprocess.run([sys.executable, "-m", "reprotune", "diff", str(pa), str(pb)],
                       capture_output=True, text=True, env=tb.env())
    assert (r.returncode, r.stdout) == (0, "identical\n"), r.stdout + r.stderr
