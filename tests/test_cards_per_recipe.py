"""Card completeness, per seed recipe: every section of the seed card has a rendered
counterpart, the front matter parses and its model-index equals results.json, and no
number in the card body is absent from the build's artifacts.

Each recipe is loaded with the tiny overlay (as the default build does) and rendered
from synthetic artifacts shaped like the real ones (data_report.json per adapter from
the recipe's own mix, train_summary.json, an lm-eval results.json, merge_info.json,
provenance.json); dolphin-orca-platypus renders two results files (its two merge
methods). ``tests/test_report.py`` does the same checks on a real tiny build.

"No number that is not in an artifact": every number in the card body (regex below) must
be a number found in the artifacts -- numeric JSON values, and numbers inside their
strings (e.g. "5.23.0", BibTeX years) -- or one of the documented derivations the card
makes from them:

* eval values and stderrs: ``round(x * 100, 2)``; the average over the Open LLM tasks;
  the difference between two merge variants; per-group sample counts (sum of subtasks);
* the number of files of a provenance input (``len(inputs[x].files)``);
* effective batch size = per-device x accumulation x max(GPUs, 1);
* list positions: ``1.``, ``2.`` ... at the start of a numbered-list line.

WHITELIST below holds the few numbers the template itself writes (none today).
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

from reprotune import plan
from reprotune.card import render
from reprotune.card.render import effective_batch, eval_rows
from reprotune.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
SEEDS = Path("/work/shared/seeds")
DATA = Path(__file__).parent / "data" / "card"
RESULTS = json.loads((DATA / "results.json").read_text())
WHITELIST: set[float] = set()

# seed card -> recipe, and every seed heading -> the rendered heading that carries it
SEED_MAP = {
    "dolphin-orca-platypus-70b": ("dolphin-orca-platypus-llama-70b.md", {
        "Dolphin_ORCA_PlatyPus_LLaMA_70b": "Dolphin_ORCA_PlatyPus_LLaMA_70b",
        "Dataset": "Datasets",
        "Training FrameWork and Parameters": "Training framework and parameters",
        "FrameWork": "Framework",
        "Parameters": "Parameters",
        "Model Export": "Model export",
        "Evaluation": "Evaluation",
        "license disclaimer:": "License and disclaimer",
        "Limitations & Biases:": "Limitations & Biases",
        "Citiation:": "Citation",
    }),
    "fashiongpt-v1.1": ("fashiongpt-v1.1.md", {
        "FashionGPT-V1.1": "FashionGPT-V1.1",
        "Introduction": "Model description",
        "Dataset": "Datasets",
        "Training": "Training framework and parameters",
        "Prompt Template": "Prompt template",
        "Evaluation": "Evaluation",
        "license disclaimer": "License and disclaimer",
        "Limitations & Biases": "Limitations & Biases",
        "Citiation:": "Citation",
    }),
    "llama2-13b-orca-8k": ("llama2-13b-orca-8k-3319.md", {
        "llama2-13b-orca-8k-3319": "llama2-13b-orca-8k-3319",
        "Long context (RoPE Scaling)": "Long context (RoPE scaling)",
        "Conversation Template": "Prompt template",
        "Datasets: Orca-Chat/Dolphin, RedPajama1T & FanFics": "Datasets",
        "Model Configuration": "Training framework and parameters",
        "Developers": "Developers",
        "Special Thanks": "Special Thanks",
        "License": "License and disclaimer",
    }),
    "orca-mini-13b": ("orca-mini-13b.md", {
        "orca_mini_13b": "orca_mini_13b",
        "Dataset": "Datasets",
        "Training": "Training framework and parameters",
        "Example Usage": "Usage",
        "[Open LLM Leaderboard Evaluation Results](https://huggingface.co/spaces/HuggingFaceH4/open_llm_leaderboard)":
            "Evaluation",
        # not '#' headings in the seed, but sections of it all the same
        "Next Goals:": "Next Goals",
        "Limitations & Biases:": "Limitations & Biases",
        "Disclaimer:": "License and disclaimer",
    }),
    "tulu-v2-qlora-70b": ("tulu-v2-qlora-70b.md", {
        "Model Card for Tulu 2 QLoRA 70B": "Tulu 2 QLoRA 70B",
        "Model description": "Model description",
        "Model Sources": "Model description",
        "Input Format": "Prompt template",
        "Intended uses & limitations": "Intended uses & limitations",
        "Bias, Risks, and Limitations": "Limitations & Biases",
        "Training hyperparameters": "Parameters",
        "Citation": "Citation",
        "Bitsandbytes Config": "Bitsandbytes config",
        "Framework versions": "Framework versions",
    }),
}
# pseudo-headings ("Next Goals:" on a line of its own) counted as sections of a seed
PSEUDO = {"orca-mini-13b": ["Next Goals:", "Limitations & Biases:", "Disclaimer:"]}
NUM = re.compile(r"(?<![\w.\-])-?\d+(?:\.\d+)?(?:e-?\d+)?(?![\w])")


# --------------------------------------------------------------------------- helpers
def headings(md: str, fence_aware: bool = True) -> list[str]:
    out, fenced = [], False
    for line in md.split("\n"):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced and fence_aware:
            continue
        m = re.match(r"^#{1,6}\s+(.*?)\s*$", line)
        if m:
            out.append(m.group(1))
    return out


def seed_headings(rid: str) -> list[str]:
    fname, mapping = SEED_MAP[rid]
    text = (SEEDS / fname).read_text(encoding="utf-8")
    body = text.split("---", 2)[2] if text.startswith("---") else text
    if body.count("\n") < 5:
        # the tulu seed has lost its line breaks: a heading is '#'s after whitespace,
        # ended by the next known heading text; check each mapped heading is there
        found = [h for h in mapping if re.search(r"(?:^|\s)#{1,6} " + re.escape(h) + r"(?=\s)", body)]
        n_markers = len(re.findall(r"(?:^|\s)#{1,6} (?=[A-Z])", body))
        assert n_markers == len(found), (n_markers, found)
        return found
    return headings(body) + PSEUDO.get(rid, [])


def numbers(text: str) -> list[str]:
    return NUM.findall(text)


def _collect(obj, out: set[float]) -> None:
    if isinstance(obj, bool) or obj is None:
        return
    if isinstance(obj, (int, float)):
        out.add(float(obj))
    elif isinstance(obj, str):
        out.update(float(t) for t in NUM.findall(obj))
    elif isinstance(obj, dict):
        if isinstance(obj.get("files"), (dict, list)):
            out.add(float(len(obj["files"])))  # file counts of provenance inputs
        for k, v in obj.items():
            _collect(k, out)
            _collect(v, out)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _collect(v, out)


def allowed_numbers(spec: dict, artifacts: list) -> set[float]:
    out: set[float] = set(WHITELIST)
    for a in artifacts:
        _collect(a, out)
    recipe = spec["recipe"]
    for ad in recipe["adapters"].values():
        out.add(float(effective_batch(ad["train"])[0]))
        out.add(1.0)  # max(GPUs, 1) when no GPU is asked for
    res = spec["results"]
    variants = [json.loads(Path(p).read_text()) for p in (res.values() if isinstance(res, dict) else [res])]
    avgs = []
    for r in variants:
        vals = set()
        _collect(r["results"], vals)
        out.update(round(v * 100, 2) for v in vals)
        rows = eval_rows(r)
        known = [row["raw"] * 100 for row in rows if row["known"]]
        avgs.append(round(sum(known) / len(known), 2))
        for row in rows:
            if row["samples"] is not None:
                out.add(float(row["samples"]))
    out.update(avgs)
    if len(variants) == 2:
        a, b = ({row["task"]: row["value"] for row in eval_rows(r)} for r in variants)
        out.update(round(b[t] - a[t], 2) for t in a if t in b)
        out.add(round(avgs[1] - avgs[0], 2))
    return out


# --------------------------------------------------------------------------- synthetic artifacts
def synth(rid: str, tmp: Path) -> tuple[dict, list]:
    recipe = load_recipe(REPO / "recipes" / f"{rid}.yaml", REPO / "overlays" / "tiny.yaml")
    spec = plan.card_spec(recipe)
    artifacts: list = [recipe]
    reports, summaries = {}, {}
    for ai, (a, ad) in enumerate(sorted(recipe["adapters"].items())):
        sources = {}
        for si, s in enumerate(sorted(ad["data"]["mix"])):
            read = 100 + 17 * si + 5 * ai
            filters, n = [], read - 3
            for f in recipe["sources"][s].get("filters", []):
                filters.append({"name": f["name"], "in": n, "out": n - 2, "dropped": 2})
                n -= 2
            sources[s] = {"rows_read": read, "rows_cleaned": n, "available": n, "requested": ad["data"]["mix"][s],
                          "taken": n - 1, "shortfall": 0, "train": n - 2, "val": 1,
                          "cleaning": {"reader_rejects": {"bad_row": 3}, "filters": filters}}
        rep = {"adapter": a, "recipe": rid, "seed": ad["data"]["seed"], "sources": sources,
               "totals": {"train": sum(v["train"] for v in sources.values()),
                          "val": sum(v["val"] for v in sources.values())}}
        summ = {"adapter": a, "steps": 6, "epochs": 0.125, "tokens_trained": 786 + ai, "final_loss": 7.25,
                "mean_loss": 7.5, "trainable_params": 163840, "total_params": 479552,
                "settings": {"method": ad["train"]["method"]}}
        for name, obj, store in (("data_report", rep, reports), ("train_summary", summ, summaries)):
            p = tmp / f"{name}_{a}.json"
            p.write_text(json.dumps(obj))
            store[a] = p
            artifacts.append(obj)
    results = {}
    labels = ([plan.merge_label(recipe), *plan.merge_variants(recipe)] if plan.merge_variants(recipe)
              else ["model"])
    for i, label in enumerate(labels):
        r = copy.deepcopy(RESULTS)
        for entry in r["results"].values():
            for k, v in list(entry.items()):
                if isinstance(v, float) and "stderr" not in k:
                    entry[k] = round(max(v - 0.0125 * i, 0.0), 6)
        p = tmp / f"results_{label}.json"
        p.write_text(json.dumps(r))
        results[label] = p
        artifacts.append(r)
    merge_infos = {}
    for label in labels:
        mi = {"method": recipe["merge"]["method"], "adapters": sorted(recipe["adapters"]),
              "delta_vs_base": {"max_abs": 0.0103, "n_tensors_changed": 14, "n_tensors_compared": 21},
              "save_dtype": "float32", "streaming": True, "n_shards": 1}
        p = tmp / f"merge_info_{label}.json"
        p.write_text(json.dumps(mi))
        merge_infos[label] = p
        artifacts.append(mi)
    prov = {"recipe_sha256": "5e" * 32, "python": "3.11.7",
            "code": {"git_describe": "4455117", "git_head": "4455117" + "a" * 33, "package_sha256": "e2" * 32},
            "versions": {"torch": "2.13.0+cpu", "transformers": "5.23.0", "peft": "0.21.2", "lm_eval": "0.4.13"},
            "command": plan.rebuild_command(recipe, "overlays/tiny.yaml"),
            "inputs": {**{f"source:{s}": {"repo": src["repo"], "revision": "mirror",
                                          "files": {f"data/{s}.parquet": "d8" * 32}}
                          for s, src in sorted(recipe["sources"].items())},
                       "base": {"path": "resources/base/tiny", "sha256": "f3" * 32, "files": {"a": "b"}}}}
    pp = tmp / "provenance.json"
    pp.write_text(json.dumps(prov))
    artifacts.append(prov)
    spec.update(data_reports=reports, train_summaries=summaries, provenance=pp,
                results=results if len(results) > 1 else results["model"],
                merge_info=merge_infos if len(merge_infos) > 1 else merge_infos["model"])
    return spec, artifacts


def split_card(text: str) -> tuple[dict, str]:
    _, fm, body = text.split("---\n", 2)
    return yaml.safe_load(fm), body


# --------------------------------------------------------------------------- tests
@pytest.fixture(scope="module", params=sorted(SEED_MAP))
def rendered(request, tmp_path_factory):
    rid = request.param
    tmp = tmp_path_factory.mktemp(rid)
    spec, artifacts = synth(rid, tmp)
    text = render(spec, tmp / "README.md")
    return rid, spec, artifacts, text


@pytest.mark.skipif(not SEEDS.is_dir(), reason="seed cards not available")
def test_every_seed_section_has_a_rendered_counterpart(rendered):
    rid, _, _, text = rendered
    _, mapping = SEED_MAP[rid]
    seed = seed_headings(rid)
    assert seed, rid
    assert set(seed) == set(mapping), f"unmapped seed headings: {sorted(set(seed) - set(mapping))}"
    ours = set(headings(split_card(text)[1]))
    missing = sorted({mapping[h] for h in seed} - ours)
    assert not missing, f"{rid}: seed sections without a rendered counterpart: {missing}"


def test_front_matter_parses_and_model_index_equals_results(rendered):
    rid, spec, _, text = rendered
    fm, _ = split_card(text)
    card = ModelCard(text)
    res = spec["results"]
    primary = json.loads(Path(next(iter(res.values())) if isinstance(res, dict) else res).read_text())
    want = {r["dataset_type"]: round(r["raw"] * 100, 2) for r in eval_rows(primary) if r["known"]}
    got = {e.dataset_type: e.metric_value for e in card.data.eval_results}
    assert got == want and len(got) == 6
    assert fm["model-index"][0]["name"] == f"{rid}-tiny"
    assert "reprotune-tiny" in fm["tags"]


def test_no_number_in_the_card_that_is_not_in_an_artifact(rendered):
    rid, spec, artifacts, text = rendered
    _, body = split_card(text)
    allowed = allowed_numbers(spec, artifacts)
    stray = []
    for line in body.split("\n"):
        line = re.sub(r"^\s*\d+\. ", "", line)  # numbered-list positions
        stray += [t for t in numbers(line) if float(t) not in allowed]
    assert not stray, f"{rid}: numbers in the card found in no artifact: {sorted(set(stray))}"


def test_number_check_can_fail(rendered):
    rid, spec, artifacts, text = rendered
    allowed = allowed_numbers(spec, artifacts)
    assert 987654.321 not in allowed and "987654.321" in numbers("x 987654.321 y")


def test_compared_merge_methods_both_in_card(tmp_path):
    spec, _ = synth("dolphin-orca-platypus-70b", tmp_path)
    assert list(spec["results"]) == ["qlora_dequant", "plain"]
    _, body = split_card(render(spec, tmp_path / "README.md"))
    ev = body.split("## Evaluation", 1)[1].split("\n## ", 1)[0]
    header = next(line for line in ev.split("\n") if "qlora_dequant" in line and "plain" in line)
    assert header.startswith("|")
    primary = json.loads(spec["results"]["qlora_dequant"].read_text())
    other = json.loads(spec["results"]["plain"].read_text())
    arc = f"{round(primary['results']['arc_challenge']['acc_norm,none'] * 100, 2):.2f}"
    arc2 = f"{round(other['results']['arc_challenge']['acc_norm,none'] * 100, 2):.2f}"
    assert arc != arc2
    assert any(arc in line and arc2 in line for line in ev.split("\n") if line.startswith("| ARC"))
