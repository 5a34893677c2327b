"""From resolved recipes to the build plan: artifact paths and per-stage specs.

The Snakemake rules stay thin by asking this module two things: *where* each
artifact lives and *which slice* of the resolved recipe a stage needs. Each
slice becomes a rule ``params`` value, so Snakemake reruns a job exactly when
the part of the recipe it depends on changes (a card-text edit reruns the card,
not the training).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

from .io import read_json

REPO = Path(__file__).resolve().parents[2]
DATA_DIR = Path(__file__).resolve().parent / "data"


def repo_path(p: str | None) -> Path | None:
    """Paths in config/overlays are relative to the repository, not the work dir."""
    if p is None:
        return None
    p = Path(p)
    return p if p.is_absolute() else REPO / p


def dumps(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# ---------------------------------------------------------------- paths
def model_slug(model_id: str) -> str:
    return model_id.replace("/", "--")


def base_dir(recipe: dict) -> str:
    bid = recipe["base_model"]["id"]
    return "resources/base/tiny" if bid == "tiny" else f"resources/base/{model_slug(bid)}"


def source_dir(rid: str, source: str) -> str:
    return f"resources/sources/{rid}/{source}"


def clean_dir(rid: str, source: str) -> str:
    return f"results/{rid}/clean/{source}"


def data_dir(rid: str, adapter: str) -> str:
    return f"results/{rid}/data/{adapter}"


def adapter_dir(rid: str, adapter: str) -> str:
    return f"results/{rid}/adapters/{adapter}"


def final_targets(rid: str) -> list[str]:
    return [
        f"results/{rid}/model",
        f"results/{rid}/eval/results.json",
        f"results/{rid}/provenance.json",
        f"results/{rid}/README.md",
    ]


# ---------------------------------------------------------------- specs
def tiny_base_spec(recipe: dict) -> dict:
    return dict(recipe["base_model"].get("tiny", {}))


def download_spec(recipe: dict, source: str) -> dict:
    s = recipe["sources"][source]
    return {
        "name": source,
        "repo": s["repo"],
        "revision": s.get("revision"),
        "files": s["files"],
        "sha256": s.get("sha256", {}),
    }


def base_download_spec(recipe: dict) -> dict:
    b = recipe["base_model"]
    return {"id": b["id"], "revision": b.get("revision"), "files": b.get("files", []), "sha256": b.get("sha256", {})}


def clean_spec(recipe: dict, source: str) -> dict:
    s = recipe["sources"][source]
    return {
        "name": source,
        "format": s["format"],
        "files": s["files"],
        "options": s.get("options", {}),
        "filters": s.get("filters", []),
    }


def mix_spec(recipe: dict, adapter: str) -> dict:
    d = recipe["adapters"][adapter]["data"]
    sm = d.get("system_messages")
    system_messages = None
    if sm:
        system_messages = {
            "assign_to_empty": bool(sm.get("assign_to_empty", False)),
            "messages": read_json(DATA_DIR / sm.get("messages_file", "orca_system_messages.json")),
        }
    return {
        "recipe": recipe["id"],
        "adapter": adapter,
        "seed": d["seed"],
        "mix": d["mix"],
        "validation": d.get("validation", {}),
        "max_val_share": d.get("max_val_share"),
        "system_messages": system_messages,
    }


def train_spec(recipe: dict, adapter: str) -> dict:
    ad = recipe["adapters"][adapter]
    return {"recipe": recipe["id"], "adapter": adapter, "template": ad["template"], "train": ad["train"]}


def merge_spec(recipe: dict) -> dict:
    m = copy.deepcopy(recipe["merge"])
    if m["method"] == "combine":
        m["combine"].setdefault("seed", 0)
    return m


def merge_adapters(recipe: dict) -> list[str]:
    m = recipe["merge"]
    if m["method"] == "combine":
        return list(m["combine"]["adapters"])
    return sorted(recipe["adapters"])


def eval_spec(recipe: dict) -> dict:
    e = recipe["eval"]
    return {
        "suite": e["suite"],
        "batch_size": e.get("batch_size", 1),
        "limit": e.get("limit"),
        "seed": e.get("seed", 1234),
        "device": "cpu" if recipe.get("scale") == "tiny" else "cuda",
    }


def accelerate_args(recipe: dict, adapter: str, override: str | None) -> str:
    """`accelerate launch` arguments for one adapter's training job."""
    t = recipe["adapters"][adapter]["train"]
    n = int(t.get("num_gpus", 0) or 0)
    if override:
        cfg = repo_path(override)
        return f"--config_file {cfg}"
    if n == 0:
        name = "cpu"
    elif n == 1:
        name = "single_gpu"
    else:
        name = {"zero2": "deepspeed_zero2", "zero3": "deepspeed_zero3"}.get(t.get("deepspeed"), "multi_gpu")
    cfg = REPO / "configs" / "accelerate" / f"{name}.yaml"
    extra = f" --num_processes {n}" if n > 1 else ""
    return f"--config_file {cfg}{extra}"


def resources_for(stage: str, recipe: dict, adapter: str | None = None) -> dict:
    """Cluster resources: GPUs only where a full-scale stage needs them."""
    tiny = recipe.get("scale") == "tiny"
    if stage == "train":
        n = int(recipe["adapters"][adapter]["train"].get("num_gpus", 0) or 0)
        return {"gpu": 0 if tiny else n, "mem_mb": 4000 if tiny else 400_000, "runtime": 30 if tiny else 4320}
    if stage in ("merge", "evaluate"):
        return {"gpu": 0 if tiny else 1, "mem_mb": 4000 if tiny else 300_000, "runtime": 30 if tiny else 1440}
    return {"gpu": 0, "mem_mb": 2000 if tiny else 32_000, "runtime": 20 if tiny else 600}


def provenance_inputs(recipe: dict) -> dict[str, str]:
    rid = recipe["id"]
    out = {f"source:{s}": source_dir(rid, s) for s in sorted(recipe["sources"])}
    out["base"] = base_dir(recipe)
    out.update({f"adapter:{a}": adapter_dir(rid, a) for a in sorted(recipe["adapters"])})
    out["model"] = f"results/{rid}/model"
    out["eval"] = f"results/{rid}/eval/results.json"
    return out


def rebuild_command(recipe: dict, overlay: str | None) -> list[str]:
    cmd = ["snakemake", "--cores", "all", "--config", f"recipes=[{recipe['id']}]"]
    cmd.append(f"overlay={overlay}" if overlay else "overlay=null")
    return cmd


def provenance_spec(recipe: dict, overlay: str | None) -> dict:
    return {"recipe": recipe, "command": rebuild_command(recipe, overlay), "containers": {}}


def prompt_example(recipe: dict) -> str | None:
    """A rendered example of the first adapter's prompt template (for the card)."""
    from . import templates

    ad = recipe["adapters"][sorted(recipe["adapters"])[0]]
    tpl = templates.get(ad["template"])
    rec = {
        "id": "example/0",
        "source": "example",
        "system": "You are a helpful assistant.",
        "messages": [
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "The capital of France is Paris."},
        ],
    }
    return "".join(text for text, _ in tpl.render_segments(rec, eos="</s>"))


def card_spec(recipe: dict) -> dict:
    rid = recipe["id"]
    adapters = sorted(recipe["adapters"])
    return {
        "recipe": recipe,
        "data_reports": {a: f"{data_dir(rid, a)}/data_report.json" for a in adapters},
        "train_summaries": {a: f"{adapter_dir(rid, a)}/train_summary.json" for a in adapters},
        "results": f"results/{rid}/eval/results.json",
        "merge_info": f"results/{rid}/model/merge_info.json",
        "provenance": f"results/{rid}/provenance.json",
        "prompt_example": prompt_example(recipe),
    }


# ---------------------------------------------------------------- code inputs
PKG = Path(__file__).resolve().parent


def _files(*patterns: str) -> list[str]:
    out: set[str] = set()
    for pat in patterns:
        out.update(str(p) for p in PKG.glob(pat) if p.is_file() and "__pycache__" not in p.parts)
    return sorted(out)


def code_inputs(stage: str, recipe: dict | None = None, name: str | None = None) -> list[str]:
    """The source files a stage's output depends on, as rule inputs.

    Snakemake then reruns a job when the code that made it changes (a template
    string, a reader, the card template) and only then: editing the card
    template reruns the card, never the training.
    """
    if stage == "tiny_base":
        return _files("tinybase.py")
    if stage == "download":
        return _files("download.py")
    if stage == "clean":
        fmt = recipe["sources"][name]["format"]
        return _files("clean.py", "filters.py", "data/*.txt", "sources/__init__.py", "sources/_*.py",
                      f"sources/{fmt}.py")
    if stage == "mix":
        return _files("mix.py", "data/*.json")
    if stage == "train":
        tpl = recipe["adapters"][name]["template"]
        return _files("train.py", "tokenize.py", "templates/__init__.py", "templates/base.py",
                      f"templates/{tpl}.py", "templates/raw.py")
    if stage == "merge":
        return _files("merge.py")
    if stage == "evaluate":
        return _files("evaluate.py", "eval_tasks/**/*") + sorted(
            str(p) for p in (REPO / "fixtures" / "eval").rglob("*") if p.is_file())
    if stage == "provenance":
        return _files("provenance.py")
    if stage == "card":
        return _files("card/*.py", "card/templates/*")
    raise ValueError(f"unknown stage {stage!r}")
