"""Generate ``lm_eval_tasks.txt`` and ``catalog.json`` from the installed lm-eval.

    python -m reprotune.eval_tasks.make_catalog           # rewrite both files
    python -m reprotune.eval_tasks.make_catalog --check   # exit 1 when they are stale

Builds lm-eval's task index once (seconds), so that recipe validation and the dry
run never have to. For each registered task the catalog holds::

    {"kind": "task" | "group",
     "result_keys": ["<metric>,<filter>", ...],   # what results.json reports for it
     "yaml_dirs": [dir, ...],                      # lm_eval/tasks-relative dirs of its YAMLs
     "leaves": {leaf: {"yaml", "dataset_path", "dataset_name", "num_fewshot",
                       "splits": {"training", "validation", "test", "fewshot"}}}}
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import CATALOG_FILE, NAMES_FILE, registry


def _tasks_root() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).resolve().parent


def _cfg(entry) -> dict:
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(entry.yaml_path, resolve_func=False)


def _result_keys(cfg: dict, group: bool) -> list[str]:
    metrics = cfg.get("aggregate_metric_list" if group else "metric_list") or []
    if isinstance(metrics, dict):
        metrics = [metrics]
    out = []
    for m in metrics:
        filters = m.get("filter_list", ["none"]) if group else \
            [f["name"] for f in cfg.get("filter_list") or []] or ["none"]
        out += [f"{m['metric']},{f}" for f in ([filters] if isinstance(filters, str) else filters)]
    return sorted(set(out))


def _leaf(entry, root: Path) -> dict:
    cfg = _cfg(entry)
    return {
        "yaml": entry.yaml_path.resolve().relative_to(root).as_posix(),
        "dataset_path": cfg.get("dataset_path"),
        "dataset_name": cfg.get("dataset_name"),
        "num_fewshot": cfg.get("num_fewshot"),
        "splits": {k: cfg.get(f"{k}_split") for k in ("training", "validation", "test", "fewshot")},
    }


def _walk(index: dict, name: str, root: Path, out: dict, dirs: set) -> None:
    """Collect the leaf tasks under ``name`` (groups and tags expanded)."""
    from lm_eval.tasks._index import Kind

    entry = index[name]
    if entry.kind == Kind.TAG:
        for child in sorted(entry.tags):
            _walk(index, child, root, out, dirs)
        return
    dirs.add(entry.yaml_path.resolve().parent.relative_to(root).as_posix())
    if entry.kind != Kind.GROUP:
        out[name] = _leaf(entry, root)
        return
    for child in _cfg(entry)["task"]:
        if not isinstance(child, str):
            raise ValueError(f"group {name!r}: inline member {child!r} is not supported")
        _walk(index, child, root, out, dirs)


def _outermost(dirs: set[str]) -> list[str]:
    return sorted(d for d in dirs if not any(d != o and d.startswith(o + "/") for o in dirs))


def describe(index: dict, name: str, root: Path) -> dict:
    from lm_eval.tasks._index import Kind

    entry = index[name]
    group = entry.kind == Kind.GROUP
    leaves: dict = {}
    dirs: set = set()
    _walk(index, name, root, leaves, dirs)
    return {"kind": "group" if group else "task", "result_keys": _result_keys(_cfg(entry), group),
            "yaml_dirs": _outermost(dirs), "leaves": dict(sorted(leaves.items()))}


def build() -> tuple[str, str]:
    """(names text, catalog JSON text) for the installed lm-eval."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    tm = TaskManager()
    root = _tasks_root()
    names = "".join(f"{n}\n" for n in sorted(tm.all_tasks))
    tasks = {t: describe(tm.task_index, t, root) for t in sorted(registry()) if t in tm.task_index}
    version = getattr(lm_eval, "__version__", None)
    text = json.dumps({"lm_eval_version": version, "tasks": tasks}, indent=1, sort_keys=True) + "\n"
    return names, text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    args = ap.parse_args(argv)
    names, text = build()
    if args.check:
        stale = [p.name for p, want in ((NAMES_FILE, names), (CATALOG_FILE, text))
                 if not p.is_file() or p.read_text(encoding="utf-8") != want]
        print(f"stale: {', '.join(stale)}" if stale else "up to date", file=sys.stderr)
        return 1 if stale else 0
    NAMES_FILE.write_text(names, encoding="utf-8")
    CATALOG_FILE.write_text(text, encoding="utf-8")
    print(f"wrote {NAMES_FILE.name} and {CATALOG_FILE.name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
