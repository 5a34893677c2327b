"""`snakemake --report` on a tiny temp build of one recipe, and the card checks of
test_cards_per_recipe on that build's real artifacts."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from reprotune import plan
from reprotune.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
RID = "tulu-v2-qlora-70b"
sys.path.insert(0, str(Path(__file__).parent))
import test_cards_per_recipe as cards  # noqa: E402


def _snakemake(work: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ.get('PATH', '')}"}
    return subprocess.run(
        [str(REPO / ".venv" / "bin" / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(work),
         "--configfile", str(REPO / "config.yaml"), "--cores", "2", "--config", f"recipes=[{RID}]", *extra],
        capture_output=True, text=True, env=env, timeout=900)


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    work = tmp_path_factory.mktemp("report_build")
    r = _snakemake(work)
    assert r.returncode == 0, r.stderr[-4000:]
    return work


def test_report_assets_written(build):
    rep = build / "results" / RID / "report"
    assert sorted(p.name for p in rep.iterdir()) == ["card.html", "data.html", "eval.html", "loss.html"]
    assert "<svg" in (rep / "loss.html").read_text()  # train_log.jsonl -> curve
    ev = (rep / "eval.html").read_text()
    results = json.loads((build / "results" / RID / "eval" / "results.json").read_text())
    arc = results["results"]["arc_challenge"]["acc_norm,none"]
    assert f"{round(arc * 100, 2):.2f}" in ev
    data = (build / "results" / RID / "data" / "main" / "data_report.json")
    rows_read = json.loads(data.read_text())["sources"]["tulu_v2_mix"]["rows_read"]
    assert f"<td>{rows_read}</td>" in (rep / "data.html").read_text()
    assert "<h2>Evaluation</h2>" in (rep / "card.html").read_text()


def test_snakemake_report_builds_html(build):
    out = build / "report.html"
    r = _snakemake(build, "--report", str(out))
    assert r.returncode == 0, r.stderr[-4000:]
    text = out.read_text(encoding="utf-8", errors="replace")
    assert len(text) > 10_000 and RID in text
    for asset in ("data.html", "loss.html", "eval.html", "card.html"):
        assert asset in text, asset


def test_card_of_real_build_has_only_artifact_numbers(build):
    recipe = load_recipe(REPO / "recipes" / f"{RID}.yaml", REPO / "overlays" / "tiny.yaml")
    spec = {k: (build / v if isinstance(v, str) and v.startswith("results/") else v)
            for k, v in plan.card_spec(recipe).items()}
    spec["data_reports"] = {a: build / p for a, p in plan.card_spec(recipe)["data_reports"].items()}
    text = (build / "results" / RID / "README.md").read_text()
    fm, body = cards.split_card(text)
    artifacts = [recipe] + [json.loads(p.read_text()) for p in (
        spec["data_reports"]["main"], build / plan.adapter_dir(RID, "main") / "train_summary.json",
        spec["results"], spec["merge_info"], spec["provenance"])]
    allowed = cards.allowed_numbers(spec, artifacts)
    stray = [t for line in body.split("\n") for t in cards.numbers(re.sub(r"^\s*\d+\. ", "", line))
             if float(t) not in allowed]
    assert not stray, sorted(set(stray))
    results = json.loads(Path(spec["results"]).read_text())
    want = {r["dataset_type"]: round(r["raw"] * 100, 2) for r in cards.eval_rows(results) if r["known"]}
    got = {res["dataset"]["type"]: res["metrics"][0]["value"] for res in fm["model-index"][0]["results"]}
    assert got == want
    assert yaml.safe_load(text.split("---\n")[1]) == fm
