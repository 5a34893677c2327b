"""Evaluate a merged model with lm-evaluation-harness (stage ``evaluate``).

``evaluate(spec, model_dir, out_json, data_dirs) -> results``

spec keys (``plan.eval_spec``)
------------------------------
``tasks``       ``[{task, num_fewshot, metric, filter}]``: lm-eval tasks or groups (a preset
                of ``eval_tasks/presets.yaml`` expanded, or the recipe's own list)
``suite``       the preset's name, when the recipe chose one (recorded only)
``batch_size``  int (default 1)
``limit``       docs per leaf task, null = all
``seed``        default 1234; used for lm-eval's random/numpy/torch/fewshot seeds
``device``      default ``cpu``
``nltk_data``   optional NLTK data dir (repository-relative or absolute) for tasks whose
                registry entry lists ``nltk`` resources (IFEval); without it they must be
                findable on NLTK's own path, else the run stops before lm-eval tries to fetch them

``data_dirs``: ``{task: dir}``, one eval-data download per task (``manifest.json`` + the
repo files, ``resources/eval/<recipe>/<task>/``). Every task runs on those local files
only: for each leaf task of lm-eval's own config a small YAML in a temporary include dir
``include:``s the installed lm-eval YAML and overrides only ``dataset_path`` (the
registry's builder: parquet/csv/json), ``dataset_name`` (null), ``dataset_kwargs.data_files``
(the leaf's splits, from the registry patterns) and ``num_fewshot``. The groups
(``mmlu``, ``leaderboard_bbh``, ...) are lm-eval's own and pick up the overriding leaves,
so prompts, metrics, filters and aggregation are the real ones. lm-eval's index is
built over the catalog's ``yaml_dirs`` of the tasks only. One ``simple_evaluate`` call
runs every task (the shots are per leaf YAML).

Outputs
-------
``out_json`` (``results.json``): lm-eval's results dict, canonical JSON, with the
run-dependent parts removed so that two runs give byte-identical files:

* top-level keys moved to the sidecar: ``date``, ``start_time``, ``end_time``,
  ``total_evaluation_time_seconds``, ``pretty_env_info``, ``git_hash``,
  ``upper_git_hash``, ``model_name`` (the model path), ``model_name_sanitized``;
  ``config.model_args`` (contains the model path) is kept with the path replaced;
* absolute paths anywhere in the remaining dict (model dir, eval data dirs, the
  generated task dir, the lm_eval package dir, the NLTK dir) are replaced by
  ``<model_dir>``, ``<data:TASK>``, ``<tasks>``, ``<lm_eval>``, ``<nltk_data>``;
* ``reprotune``: ``{"tasks": spec tasks, "datasets": {task: {repo, revision, config, split}}}``
  (what ran, for ``summary`` and the card's model-index).

``out_json.with_suffix('.runinfo.json')``: the moved values, the path substitutions and
the wall time (not deterministic, for logs only).

``summary.json`` next to ``out_json``: ``summary(results)``, one row per spec task:
``{task, n_shot, metric, filter, lm_eval_metric, value, stderr, dataset}``.
"""
from __future__ import annotations

import logging
import math
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from . import eval_tasks
from .io import atomic_write_json, read_json

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]

# top-level lm-eval result keys that differ between identical runs (or carry paths)
VOLATILE_KEYS = (
    "date",
    "start_time",
    "end_time",
    "total_evaluation_time_seconds",
    "pretty_env_info",
    "git_hash",
    "upper_git_hash",
    "model_name",
    "model_name_sanitized",
)


class EvalError(RuntimeError):
    pass


# --------------------------------------------------------------------------- tasks

def _manifest(task: str, data_dir: Path) -> dict:
    path = Path(data_dir) / "manifest.json"
    if not path.is_file():
        raise EvalError(f"{task}: no eval data at {data_dir} (manifest.json missing; run download_eval_data)")
    return read_json(path)


def leaf_wrapper(task: str, leaf: str, data_dir: Path, files: list[str], shots: int, lm_eval_tasks: Path) -> dict:
    """The include-YAML that runs one leaf task of lm-eval on the local eval data."""
    reg = eval_tasks.registry()[task]
    try:
        splits = eval_tasks.data_files(task, leaf, files)
    except FileNotFoundError as e:
        raise EvalError(f"{e} in {data_dir}") from None
    return {
        "include": str(lm_eval_tasks / eval_tasks.leaves(task)[leaf]["yaml"]),
        "task": leaf,
        "tag": [],  # the real tags (e.g. mmlu_stem_tasks) keep naming these leaves
        "dataset_path": reg["builder"],
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {s: [str(Path(data_dir).resolve() / f) for f in fs]
                                          for s, fs in splits.items()}},
        "num_fewshot": shots,
    }


def prepare_tasks(tasks: list[dict], data_dirs: dict[str, Path], out_dir: Path, lm_eval_tasks: Path) -> dict:
    """Write the leaf wrappers into ``out_dir``; return {task: dataset info} for results.json."""
    import yaml

    datasets = {}
    for task in dict.fromkeys(t["task"] for t in tasks):
        if task not in data_dirs:
            raise EvalError(f"{task}: no eval data dir given (--eval-data {task}=DIR)")
        man = _manifest(task, data_dirs[task])
        shots = next(t["num_fewshot"] for t in tasks if t["task"] == task)
        for leaf in eval_tasks.leaves(task):
            cfg = leaf_wrapper(task, leaf, data_dirs[task], sorted(man["files"]), shots, lm_eval_tasks)
            (out_dir / f"{leaf}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=True), encoding="utf-8")
        datasets[task] = dataset_info(task, man)
    return datasets


def dataset_info(task: str, manifest: dict) -> dict:
    """The model-index dataset of a task: repo, revision, config (one leaf only) and scored split."""
    leaves = list(eval_tasks.leaves(task).values())
    splits = {leaf["splits"]["test"] or leaf["splits"]["validation"] for leaf in leaves}
    configs = {leaf["dataset_name"] for leaf in leaves}
    return {"repo": manifest["repo"], "revision": manifest["revision"],
            "config": configs.pop() if len(configs) == 1 else None,
            "split": splits.pop() if len(splits) == 1 else None}


def _nltk_setup(tasks: list[dict], spec: dict) -> str | None:
    """Point NLTK at the spec's data dir when a task needs NLTK data; refuse a run that
    would make lm-eval download it. Returns the dir used (for path scrubbing)."""
    needs = sorted({r for t in tasks for r in eval_tasks.registry()[t["task"]].get("nltk", [])})
    if not needs:
        return None
    import nltk

    root = None
    if spec.get("nltk_data"):
        root = Path(spec["nltk_data"])
        root = str((root if root.is_absolute() else REPO / root).resolve())
        os.environ["NLTK_DATA"] = root
        if root not in nltk.data.path:
            nltk.data.path.insert(0, root)
    for res in needs:
        try:
            nltk.data.find(res)
        except LookupError:
            raise EvalError(f"NLTK resource {res!r} not found (NLTK path: {', '.join(nltk.data.path)}); "
                            "set eval nltk_data or NLTK_DATA to a dir that has it") from None
    return root


# --------------------------------------------------------------------------- results

def _replace_paths(obj: Any, subs: list[tuple[str, str]]) -> Any:
    if isinstance(obj, str):
        for old, new in subs:
            if old and old in obj:
                obj = obj.replace(old, new)
        return obj
    if isinstance(obj, dict):
        return {(_replace_paths(k, subs) if isinstance(k, str) else k): _replace_paths(v, subs)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_replace_paths(v, subs) for v in obj]
    return obj


# lm-eval stringifies task callables in ``configs`` as "<function f at 0x7f...>": the
# address changes from run to run (ASLR), so it is dropped: "<function f>".
_ADDRESS_RE = re.compile(r" at 0x[0-9a-fA-F]+>")


def _jsonable(obj: Any) -> Any:
    """lm-eval results can hold numpy scalars, NaN, callables; make them canonical JSON."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, str):
        return _ADDRESS_RE.sub(">", obj)
    if isinstance(obj, bool) or obj is None or isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return _jsonable(obj.item())
    except ImportError:  # pragma: no cover
        pass
    return _ADDRESS_RE.sub(">", str(obj))


def split_volatile(results: dict, subs: list[tuple[str, str]]) -> tuple[dict, dict]:
    """Return (stable results, runinfo)."""
    stable = {k: v for k, v in results.items() if k not in VOLATILE_KEYS}
    runinfo = {k: results[k] for k in VOLATILE_KEYS if k in results}
    if isinstance(stable.get("config"), dict) and "model_args" in stable["config"]:
        runinfo["config.model_args"] = stable["config"]["model_args"]
    stable = _replace_paths(stable, subs)
    runinfo["path_substitutions"] = {new: old for old, new in subs}
    return _jsonable(stable), _jsonable(runinfo)


def _num(x: Any) -> float | int | None:
    return x if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def summary(results: dict) -> list[dict]:
    """One row per task of ``results["reprotune"]["tasks"]`` that has a result:
    ``{task, n_shot, metric, filter, lm_eval_metric, value, stderr, dataset}``."""
    # groups (e.g. "mmlu") are reported in "results" and/or "groups"
    res = {**results.get("groups", {}), **results.get("results", {})}
    meta = results.get("reprotune") or {}
    rows = []
    for t in meta.get("tasks", []):
        if t["task"] not in res:
            continue
        r = res[t["task"]]
        key = f"{t['metric']},{t['filter']}"
        rows.append({
            "task": t["task"], "n_shot": t["num_fewshot"], "metric": t["metric"], "filter": t["filter"],
            "lm_eval_metric": key, "value": _num(r.get(key)),
            "stderr": _num(r.get(f"{t['metric']}_stderr,{t['filter']}")),
            "dataset": (meta.get("datasets") or {}).get(t["task"]),
        })
    return rows


# --------------------------------------------------------------------------- entry point

def _simple_evaluate(lm, spec: dict, names: list[str], task_manager) -> dict:
    import lm_eval

    seed = int(spec["seed"]) if spec.get("seed") is not None else 1234
    res = lm_eval.simple_evaluate(
        model=lm, tasks=names, num_fewshot=None, batch_size=spec.get("batch_size", 1),
        device=spec.get("device", "cpu"), limit=spec.get("limit"), random_seed=seed, numpy_random_seed=seed,
        torch_random_seed=seed, fewshot_random_seed=seed, task_manager=task_manager, log_samples=False,
    )
    if res is None:
        raise EvalError("lm-eval returned no results (not rank 0?)")
    return res


def _model_path(model_args: str) -> str:
    return dict(kv.split("=", 1) for kv in model_args.split(","))["pretrained"]


def _run(spec: dict, model_args: str, data_dirs: dict[str, Path], tmp: Path, lm_eval_tasks: Path) -> tuple[dict, dict]:
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager

    tasks = spec["tasks"]
    datasets = prepare_tasks(tasks, data_dirs, tmp, lm_eval_tasks)
    dirs = sorted({d for t in datasets for d in eval_tasks.catalog()["tasks"][t]["yaml_dirs"]})
    task_manager = TaskManager(include_path=[str(lm_eval_tasks / d) for d in dirs] + [str(tmp)],
                               include_defaults=False)
    device, batch_size = spec.get("device", "cpu"), spec.get("batch_size", 1)
    log.info("loading the model for lm-eval (device=%s, batch_size=%s)", device, batch_size)
    extra = {"batch_size": batch_size, "device": device}
    if not (spec.get("tokenizer") or {}).get("use_fast", True):
        # the tokenizer the model was trained with: the slow SentencePiece one (lm-eval takes an object)
        from reprotune.base_tokenizer import load

        extra["tokenizer"] = load(_model_path(model_args), use_fast=False)
        log.info("tokenizer: %s (slow, as the recipe trains)", type(extra["tokenizer"]).__name__)
    lm = get_model("hf").create_from_arg_string(model_args, extra)
    names = list(datasets)
    log.info("lm-eval: %s (limit=%s)", ", ".join(names), spec.get("limit"))
    return _simple_evaluate(lm, spec, names, task_manager), datasets


def evaluate(spec: dict, model_dir: Path, out_json: Path, data_dirs: dict[str, Path]) -> dict:
    """Run the spec's tasks on ``model_dir`` over the local eval data; write results.json
    (+ .runinfo.json, summary.json)."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # every file is local: never ask the Hub
    import lm_eval

    spec = dict(spec or {})
    if not spec.get("tasks"):
        raise EvalError("eval spec has no tasks")
    model_dir, out_json = Path(model_dir), Path(out_json)
    data_dirs = {t: Path(d) for t, d in (data_dirs or {}).items()}
    if not (model_dir / "config.json").exists():
        raise EvalError(f"{model_dir} holds no model (config.json missing)")
    model_abs = str(model_dir.resolve())
    model_args = f"pretrained={model_abs},dtype=float32,trust_remote_code=False"
    lm_eval_tasks = Path(lm_eval.__file__).resolve().parent / "tasks"
    nltk_dir = _nltk_setup(spec["tasks"], spec)

    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="reprotune-tasks-") as tmp:
        tmp_abs = Path(tmp).resolve()
        res, datasets = _run(spec, model_args, data_dirs, tmp_abs, lm_eval_tasks)
        subs = [(model_abs, "<model_dir>"), (str(tmp_abs), "<tasks>"), (str(lm_eval_tasks.parent), "<lm_eval>")]
    subs += [(str(d.resolve()), f"<data:{t}>") for t, d in data_dirs.items()]
    subs += [(nltk_dir, "<nltk_data>")] if nltk_dir else []
    subs.sort(key=lambda s: -len(s[0]))  # a path that contains another is replaced whole

    res.setdefault("config", {})
    res["config"].update(model="hf", model_args=model_args)
    res["reprotune"] = {"tasks": spec["tasks"], "datasets": datasets, "suite": spec.get("suite")}
    have = set(res.get("results", {})) | set(res.get("groups", {}))
    missing = [t for t in datasets if t not in have]
    if missing:
        raise EvalError(f"lm-eval produced no results for {missing}")

    stable, runinfo = split_volatile(res, subs)
    runinfo["wall_seconds"] = round(time.monotonic() - t0, 3)
    atomic_write_json(out_json, stable)
    atomic_write_json(out_json.with_suffix(".runinfo.json"), runinfo)
    rows = summary(stable)
    atomic_write_json(out_json.parent / "summary.json", rows)
    for row in rows:
        log.info("%-22s %2d-shot %-24s %s", row["task"], row["n_shot"], row["lm_eval_metric"], row["value"])
    return stable
