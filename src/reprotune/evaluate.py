"""Evaluate a merged model with lm-evaluation-harness (stage ``evaluate``).

``evaluate(spec, model_dir, out_json) -> results``

spec keys
---------
``suite``       ``open_llm_v1`` (the real leaderboard-v1 tasks, Hub datasets) or
                ``tiny_open_llm_v1`` (the local ``tiny_*`` tasks on ``fixtures/eval``)
``batch_size``  int (default 1)
``limit``       docs per task, null = all
``seed``        default 1234; used for lm-eval's random/numpy/torch/fewshot seeds
``device``      default ``cpu``
``fixtures``    optional fixture root for the tiny suite (default: ``./fixtures/eval``
                if it exists, else ``<repo>/fixtures/eval`` next to the package)

How it runs: the model is loaded once (``HFLM`` from
``model_args="pretrained=<dir>,dtype=float32,trust_remote_code=False"``, the same
object ``simple_evaluate(model="hf", model_args=...)`` builds), then
``lm_eval.simple_evaluate`` is called once per distinct shot count of the suite
(``num_fewshot`` is a single number per call and the real task YAMLs do not all set
it); the per-call results are merged into one results dict of lm-eval's usual shape.

Outputs
-------
``out_json`` (``results.json``): lm-eval's results dict, canonical JSON, with the
run-dependent parts removed so that two runs give byte-identical files:

* top-level keys moved to the sidecar: ``date``, ``start_time``, ``end_time``,
  ``total_evaluation_time_seconds``, ``pretty_env_info``, ``git_hash``,
  ``upper_git_hash``, ``model_name`` (the model path), ``model_name_sanitized``;
  ``config.model_args`` (contains the model path) is kept with the path replaced;
* absolute paths anywhere in the remaining dict (model dir, fixture root, the
  generated task dir, the lm_eval package dir -- e.g. in
  ``configs.*.dataset_kwargs.data_files`` and ``configs.*.metadata.config_source``)
  are replaced by ``<model_dir>``, ``<fixtures>``, ``<tasks>``, ``<lm_eval>``.

``out_json.with_suffix('.runinfo.json')``: the moved values, the path substitutions and
the wall time of each ``simple_evaluate`` call (not deterministic, for logs only).

``summary.json`` next to ``out_json``: ``summary(results)``, one row per suite task:
``{task, n_shot, metric, value, stderr, lm_eval_metric}``.
"""
from __future__ import annotations

import copy
import logging
import math
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from .io import atomic_write_json

log = logging.getLogger(__name__)

TASKS_DIR = Path(__file__).resolve().parent / "eval_tasks" / "tiny"

# metric = lm-eval's metric name, filter = lm-eval's filter name (result key
# "<metric>,<filter>"), name = what the Open LLM Leaderboard v1 called it.
_V1 = [
    {"task": "arc_challenge", "num_fewshot": 25, "metric": "acc_norm", "filter": "none", "name": "acc_norm"},
    {"task": "hellaswag", "num_fewshot": 10, "metric": "acc_norm", "filter": "none", "name": "acc_norm"},
    {"task": "mmlu", "num_fewshot": 5, "metric": "acc", "filter": "none", "name": "acc"},
    {"task": "truthfulqa_mc2", "num_fewshot": 0, "metric": "acc", "filter": "none", "name": "mc2"},
    {"task": "winogrande", "num_fewshot": 5, "metric": "acc", "filter": "none", "name": "acc"},
    {"task": "gsm8k", "num_fewshot": 5, "metric": "exact_match", "filter": "strict-match", "name": "exact_match"},
]
# tiny task name -> YAML file in eval_tasks/tiny
_TINY_FILES = {
    "tiny_arc_challenge": "arc_challenge.yaml",
    "tiny_hellaswag": "hellaswag.yaml",
    "tiny_mmlu": "mmlu.yaml",
    "tiny_truthfulqa_mc2": "truthfulqa_mc2.yaml",
    "tiny_winogrande": "winogrande.yaml",
    "tiny_gsm8k": "gsm8k.yaml",
}
SUITES: dict[str, list[dict]] = {
    "open_llm_v1": _V1,
    "tiny_open_llm_v1": [{**t, "task": "tiny_" + t["task"]} for t in _V1],
}

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
# dict-valued result sections merged across the per-shot-count calls
_MERGED_SECTIONS = ("results", "groups", "group_subtasks", "configs", "versions", "n-shot",
                    "higher_is_better", "n-samples", "task_hashes")


class EvalError(RuntimeError):
    pass


# --------------------------------------------------------------------------- tasks

def fixture_root(spec: dict | None = None) -> Path:
    spec = spec or {}
    candidates = []
    if spec.get("fixtures"):
        candidates.append(Path(spec["fixtures"]))
    candidates += [Path.cwd() / "fixtures" / "eval", Path(__file__).resolve().parents[2] / "fixtures" / "eval"]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    raise EvalError(f"no eval fixture dir (tried {', '.join(map(str, candidates))})")


def prepare_tasks(fixtures: Path, out_dir: Path) -> list[str]:
    """Write one YAML per tiny task into ``out_dir``: it includes the packaged config
    and sets ``data_files`` to absolute paths under ``fixtures``."""
    import yaml

    names = []
    for task, fname in sorted(_TINY_FILES.items()):
        src = TASKS_DIR / fname
        with open(src, encoding="utf-8") as f:
            # plain safe_load cannot read "!function"; only data_files are needed here
            text = "\n".join(line for line in f.read().splitlines() if "!function" not in line)
        rel = yaml.safe_load(text)["dataset_kwargs"]["data_files"]
        files = {}
        for split, path in rel.items():
            p = (fixtures / path).resolve()
            if not p.is_file():
                raise EvalError(f"{task}: fixture file missing: {p}")
            files[split] = str(p)
        wrapper = {"include": str(src), "task": task, "dataset_kwargs": {"data_files": files}}
        (out_dir / f"{task}.yaml").write_text(yaml.safe_dump(wrapper, sort_keys=True), encoding="utf-8")
        names.append(task)
    return names


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


def summary(results: dict, suite: str | None = None) -> list[dict]:
    """One row per suite task: ``{task, n_shot, metric, value, stderr, lm_eval_metric}``.

    ``suite`` defaults to the suite whose tasks are in ``results``."""
    # groups (e.g. the real "mmlu") are reported in "results" and/or "groups"
    res = {**results.get("groups", {}), **results.get("results", {})}
    if suite is None:
        suite = next((s for s, ts in SUITES.items() if all(t["task"] in res for t in ts)), None)
        if suite is None:
            suite = max(SUITES, key=lambda s: sum(t["task"] in res for t in SUITES[s]))
    rows = []
    for t in SUITES[suite]:
        if t["task"] not in res:
            continue
        r = res[t["task"]]
        key = f"{t['metric']},{t['filter']}"
        skey = f"{t['metric']}_stderr,{t['filter']}"
        value = r.get(key)
        stderr = r.get(skey)
        rows.append({
            "task": t["task"],
            "n_shot": results.get("n-shot", {}).get(t["task"], t["num_fewshot"]),
            "metric": t["name"],
            "lm_eval_metric": key,
            "value": value if isinstance(value, (int, float)) else None,
            "stderr": stderr if isinstance(stderr, (int, float)) else None,
        })
    return rows


def _merge_results(acc: dict | None, new: dict) -> dict:
    if acc is None:
        return copy.deepcopy(new)
    for sec in _MERGED_SECTIONS:
        if sec in new:
            acc.setdefault(sec, {}).update(new[sec])
    for k in ("total_evaluation_time_seconds",):
        if k in new and k in acc:
            try:
                acc[k] = str(float(acc[k]) + float(new[k]))
            except (TypeError, ValueError):
                pass
    if "end_time" in new:
        acc["end_time"] = new["end_time"]
    return acc


# --------------------------------------------------------------------------- entry point

def evaluate(spec: dict, model_dir: Path, out_json: Path) -> dict:
    """Run the suite on ``model_dir``; write results.json (+ .runinfo.json, summary.json)."""
    import lm_eval
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager

    spec = dict(spec or {})
    suite_name = spec.get("suite", "open_llm_v1")
    if suite_name not in SUITES:
        raise EvalError(f"unknown eval suite {suite_name!r} (expected one of {sorted(SUITES)})")
    suite = SUITES[suite_name]
    batch_size = spec.get("batch_size", 1)
    limit = spec.get("limit")
    seed = int(spec["seed"]) if spec.get("seed") is not None else 1234
    device = spec.get("device", "cpu")
    model_dir = Path(model_dir)
    out_json = Path(out_json)
    if not (model_dir / "config.json").exists():
        raise EvalError(f"{model_dir} holds no model (config.json missing)")

    model_abs = str(model_dir.resolve())
    model_args = f"pretrained={model_abs},dtype=float32,trust_remote_code=False"
    subs: list[tuple[str, str]] = [(model_abs, "<model_dir>")]
    lm_eval_dir = str(Path(lm_eval.__file__).resolve().parent)

    with tempfile.TemporaryDirectory(prefix="reprotune-tasks-") as tmp:
        tmp_abs = str(Path(tmp).resolve())
        if suite_name.startswith("tiny_"):
            fx = fixture_root(spec)
            prepare_tasks(fx, Path(tmp_abs))
            task_manager = TaskManager(include_path=tmp_abs, include_defaults=False)
            # longest first so a path that contains another is replaced whole
            subs += [(str(TASKS_DIR), "<reprotune_tasks>"), (str(fx), "<fixtures>")]
        else:
            task_manager = TaskManager()
        subs += [(tmp_abs, "<tasks>"), (lm_eval_dir, "<lm_eval>")]
        subs.sort(key=lambda s: -len(s[0]))

        log.info("loading %s for lm-eval (device=%s, batch_size=%s)", model_dir, device, batch_size)
        lm = get_model("hf").create_from_arg_string(model_args, {"batch_size": batch_size, "device": device})

        groups: dict[int, list[str]] = {}
        for t in suite:
            groups.setdefault(int(t["num_fewshot"]), []).append(t["task"])
        merged: dict | None = None
        timings = {}
        for shots in sorted(groups, reverse=True):
            names = groups[shots]
            log.info("lm-eval: %s with num_fewshot=%d, limit=%s", ", ".join(names), shots, limit)
            t0 = time.monotonic()
            res = lm_eval.simple_evaluate(
                model=lm,
                model_args=model_args,
                tasks=names,
                num_fewshot=shots,
                batch_size=batch_size,
                device=device,
                limit=limit,
                random_seed=seed,
                numpy_random_seed=seed,
                torch_random_seed=seed,
                fewshot_random_seed=seed,
                task_manager=task_manager,
                log_samples=False,
            )
            timings[f"num_fewshot={shots}"] = round(time.monotonic() - t0, 3)
            if res is None:
                raise EvalError("lm-eval returned no results (not rank 0?)")
            merged = _merge_results(merged, res)
        del lm

    assert merged is not None
    merged.setdefault("config", {})
    merged["config"]["model"] = "hf"
    merged["config"]["model_args"] = model_args
    merged["config"]["num_fewshot_per_task"] = {t["task"]: t["num_fewshot"] for t in suite}
    merged["suite"] = suite_name

    have = set(merged.get("results", {})) | set(merged.get("groups", {}))
    missing = [t["task"] for t in suite if t["task"] not in have]
    if missing:
        raise EvalError(f"lm-eval produced no results for {missing}")

    stable, runinfo = split_volatile(merged, subs)
    runinfo["wall_seconds"] = timings
    atomic_write_json(out_json, stable)
    atomic_write_json(out_json.with_suffix(".runinfo.json"), runinfo)
    atomic_write_json(out_json.parent / "summary.json", summary(stable, suite_name))
    for row in summary(stable, suite_name):
        log.info("%-22s %2d-shot %-12s %s", row["task"], row["n_shot"], row["metric"], row["value"])
    return stable
