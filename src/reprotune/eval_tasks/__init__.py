"""Evaluation tasks from config: presets, the eval-data registry and the lm-eval catalog.

Pure configuration, read without importing lm-eval (recipe load and ``snakemake -n``
stay fast):

``presets.yaml``          ``eval.suite`` name -> list of ``{task, num_fewshot, metric, filter?}``
``registry/*.yaml``       lm-eval task -> Hub dataset repo, builder and split -> file patterns
                          (``{config}`` = the leaf task's dataset_name); see ``registry/open_llm_v1.yaml``
``lm_eval_tasks.txt``     every task/group/tag name of the installed lm-eval (generated)
``catalog.json``          for each registered task: its leaf tasks (lm-eval YAML, dataset_name,
                          splits, shots) and result keys ``metric,filter`` (generated)

The two generated files come from ``python -m reprotune.eval_tasks.make_catalog``;
``tests/test_evaluate.py`` regenerates them from the installed lm-eval and compares.
"""
from __future__ import annotations

import difflib
import fnmatch
import json
from functools import lru_cache
from pathlib import Path

from reprotune.io import load_yaml

HERE = Path(__file__).resolve().parent
NAMES_FILE = HERE / "lm_eval_tasks.txt"
CATALOG_FILE = HERE / "catalog.json"
REGISTRY_DIR = HERE / "registry"


class EvalConfigError(ValueError):
    """An ``eval`` block is invalid; ``key`` is the recipe key at fault, str() the reason."""

    def __init__(self, key: str, msg: str):
        super().__init__(msg)
        self.key = key


def _read_yaml(path: Path):
    with open(path, encoding="utf-8") as f:
        return load_yaml(f)


@lru_cache(maxsize=None)
def presets() -> dict[str, list[dict]]:
    return _read_yaml(HERE / "presets.yaml")


@lru_cache(maxsize=None)
def registry() -> dict[str, dict]:
    """lm-eval task -> ``{repo, revision, builder, data_files, nltk?}`` (all registry files)."""
    out: dict[str, dict] = {}
    for path in sorted(REGISTRY_DIR.glob("*.yaml")):
        for task, entry in _read_yaml(path).items():
            if task in out:
                raise ValueError(f"{path.name}: task {task!r} is registered twice")
            out[task] = entry
    return out


@lru_cache(maxsize=None)
def lm_eval_names() -> frozenset[str]:
    return frozenset(NAMES_FILE.read_text(encoding="utf-8").split())


@lru_cache(maxsize=None)
def catalog() -> dict:
    with open(CATALOG_FILE, encoding="utf-8") as f:
        return json.load(f)


# --------------------------------------------------------------------------- task lists

def raw_tasks(eval_cfg: dict) -> list[dict]:
    """The ``tasks`` an eval block asks for, a preset expanded (as written: filter optional)."""
    if "suite" in eval_cfg:
        return presets()[eval_cfg["suite"]]
    return eval_cfg["tasks"]


def _filters(task: str, metric: str) -> list[str]:
    keys = catalog()["tasks"][task]["result_keys"]
    return sorted(k.split(",", 1)[1] for k in keys if k.split(",", 1)[0] == metric)


def expand(eval_cfg: dict) -> list[dict]:
    """The validated task list: ``{task, num_fewshot, metric, filter}`` each (filter filled in
    when the metric has one filter only)."""
    out = []
    for t in raw_tasks(eval_cfg):
        flt = t.get("filter") or _filters(t["task"], t["metric"])[0]
        out.append({"task": t["task"], "num_fewshot": int(t["num_fewshot"]), "metric": t["metric"], "filter": flt})
    return out


def task_names(eval_cfg: dict) -> list[str]:
    """Distinct tasks of an eval block, in first-use order (one eval-data download each)."""
    return list(dict.fromkeys(t["task"] for t in raw_tasks(eval_cfg)))


# --------------------------------------------------------------------------- validation

def _suggest(name: str) -> str:
    close = difflib.get_close_matches(name, sorted(lm_eval_names()), n=1, cutoff=0.8)
    return f"; did you mean {close[0]!r}?" if close else ""


def _check_task_name(name: str, key: str) -> None:
    if name not in lm_eval_names():
        raise EvalConfigError(key, f"{name!r} is not an lm-eval task (lm-eval {catalog()['lm_eval_version']}"
                                   f"{_suggest(name)})")
    if name not in registry():
        raise EvalConfigError(key, f"lm-eval task {name!r} has no eval-data registry entry (registered: "
                                   f"{', '.join(sorted(registry()))}; add one in src/reprotune/eval_tasks/registry/)")
    if name not in catalog()["tasks"]:
        raise EvalConfigError(key, f"{name!r} is registered but missing from eval_tasks/catalog.json "
                                   "(run: python -m reprotune.eval_tasks.make_catalog)")


def _check_metric(t: dict, key: str) -> None:
    keys = catalog()["tasks"][t["task"]]["result_keys"]
    metrics = sorted({k.split(",", 1)[0] for k in keys})
    if t["metric"] not in metrics:
        raise EvalConfigError(f"{key}.metric", f"{t['metric']!r} is not a metric of lm-eval task {t['task']!r} "
                                               f"(expected one of: {', '.join(metrics)})")
    filters = _filters(t["task"], t["metric"])
    if t.get("filter") is not None and t["filter"] not in filters:
        raise EvalConfigError(f"{key}.filter", f"{t['filter']!r} is not a filter of {t['task']!r} metric "
                                               f"{t['metric']!r} (expected one of: {', '.join(filters)})")
    if t.get("filter") is None and len(filters) > 1:
        raise EvalConfigError(f"{key}.filter", f"{t['task']!r} reports {t['metric']!r} under several filters: "
                                               f"give one of: {', '.join(filters)}")


def _check_consistent(tasks: list[dict], base: str) -> None:
    shots: dict[str, int] = {}
    seen: set[tuple] = set()
    for i, t in enumerate(tasks):
        if shots.setdefault(t["task"], t["num_fewshot"]) != t["num_fewshot"]:
            raise EvalConfigError(f"{base}.{i}.num_fewshot", f"{t['task']!r} is listed with "
                                                             f"{shots[t['task']]} and {t['num_fewshot']} shots")
        row = (t["task"], t["metric"], t["filter"])
        if row in seen:
            raise EvalConfigError(f"{base}.{i}", f"{t['task']!r} {t['metric']!r} is listed twice")
        seen.add(row)


def check(eval_cfg: dict) -> None:
    """Raise EvalConfigError (key, one line) for the first problem of an ``eval`` block."""
    if ("suite" in eval_cfg) == ("tasks" in eval_cfg):
        raise EvalConfigError("eval", f"give either 'suite' ({' | '.join(sorted(presets()))}) or 'tasks', "
                                      + ("not both" if "suite" in eval_cfg else "one is needed"))
    base = "eval.suite" if "suite" in eval_cfg else "eval.tasks"
    for i, t in enumerate(raw_tasks(eval_cfg)):
        key = base if "suite" in eval_cfg else f"{base}.{i}"
        _check_task_name(t["task"], key if "suite" in eval_cfg else f"{key}.task")
        _check_metric(t, key)
    _check_consistent(expand(eval_cfg), base)


# --------------------------------------------------------------------------- eval data

def leaves(task: str) -> dict[str, dict]:
    """Leaf lm-eval tasks of ``task`` (itself when it is no group): name -> catalog info."""
    return catalog()["tasks"][task]["leaves"]


def leaf_patterns(task: str, leaf: str) -> dict[str, str]:
    """split -> file pattern inside the dataset repo for one leaf task."""
    config = leaves(task)[leaf]["dataset_name"] or ""
    return {split: pat.replace("{config}", config) for split, pat in registry()[task]["data_files"].items()}


def file_patterns(task: str) -> list[str]:
    """What the eval-data download fetches for ``task``: every leaf's data_files patterns."""
    return sorted({p for leaf in leaves(task) for p in leaf_patterns(task, leaf).values()})


def data_files(task: str, leaf: str, files: list[str]) -> dict[str, list[str]]:
    """split -> the downloaded repo paths (from ``files``) that a leaf task reads."""
    out = {}
    for split, pat in leaf_patterns(task, leaf).items():
        hits = sorted(f for f in files if f == pat or fnmatch.fnmatchcase(f, pat))
        if not hits:
            raise FileNotFoundError(f"{task}: no downloaded file matches {pat!r} (split {split!r} of {leaf})")
        out[split] = hits
    return out
