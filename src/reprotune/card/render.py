"""Render the model card (``results/<recipe>/README.md``) and per-adapter READMEs.

Everything in the card is filled from the build: the resolved recipe, the per-adapter
``data_report.json`` and (optional) ``train_summary.json``, lm-eval's ``results.json``,
the (optional) ``merge_info.json`` and ``provenance.json``. No number in the card is
typed into the templates.

``spec`` keys (paths may be ``str``/``Path``; an already-loaded dict is accepted too):

``recipe``            resolved recipe dict (required; ``scale`` "tiny" | "full", default "full")
``data_reports``      {adapter: path to data_report.json}
``train_summaries``   {adapter: path to train_summary.json} (missing files are skipped)
``results``           path to lm-eval results.json, or {variant label: path} to compare
                      several merges (the first entry is the headline result); or None
``primary``           optional label of the headline variant when ``results`` is a dict
``merge_info``        path to merge_info.json, or {variant label: path}, or None
``provenance``        path to provenance.json (or None)
``prompt_example``    optional pre-rendered prompt example: str, or {adapter or template name: str};
                      without it, each template's example is rendered from the template
``system_messages``   optional override of the system-message list: list, or {adapter: list}

Evaluation values: lm-eval reports fractions in [0, 1]; the card (table *and* the
model-index in the front matter) shows ``round(value * 100, 2)``, as the Open LLM
Leaderboard did. Stderr is scaled the same way. ``Avg.`` is ``round(mean(value * 100), 2)``
over the Open LLM v1 tasks present.
"""
from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path
from typing import Any

import jinja2
import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..io import atomic_write_text

TEMPLATES = Path(__file__).resolve().parent / "templates"
REPO_ROOT = Path(__file__).resolve().parents[3]
PACKAGE_DIR = Path(__file__).resolve().parents[1]

# Open LLM Leaderboard v1 tasks, in the leaderboard's order:
# key, display, model-index dataset type, config, split, lm-eval metric keys (preferred
# first), model-index metric type, metric name
OPEN_LLM_TASKS: list[dict[str, Any]] = [
    dict(key="arc_challenge", display="ARC", type="ai2_arc", config="ARC-Challenge", split="test",
         metrics=["acc_norm,none"], metric_type="acc_norm", metric_name="normalized accuracy"),
    dict(key="hellaswag", display="HellaSwag", type="hellaswag", config=None, split="validation",
         metrics=["acc_norm,none"], metric_type="acc_norm", metric_name="normalized accuracy"),
    dict(key="mmlu", display="MMLU", type="cais/mmlu", config="all", split="test",
         metrics=["acc,none"], metric_type="acc", metric_name="accuracy"),
    dict(key="truthfulqa_mc2", display="TruthfulQA", type="truthful_qa", config="multiple_choice",
         split="validation", metrics=["acc,none", "mc2,none"], metric_type="mc2", metric_name="mc2"),
    dict(key="winogrande", display="Winogrande", type="winogrande", config="winogrande_xl",
         split="validation", metrics=["acc,none"], metric_type="acc", metric_name="accuracy"),
    dict(key="gsm8k", display="GSM8K", type="gsm8k", config="main", split="test",
         metrics=["exact_match,strict-match", "exact_match,flexible-extract", "exact_match,none", "acc,none"],
         metric_type="acc", metric_name="accuracy"),
]
TASKS_BY_KEY = {t["key"]: t for t in OPEN_LLM_TASKS}
TASK_PREFIXES = ("tiny_",)  # task names of results.json files written before issue 14
# display names of other known tasks (Open LLM Leaderboard v2); the rest show the lm-eval name
DISPLAY = {"leaderboard_ifeval": "IFEval", "leaderboard_bbh": "BBH", "leaderboard_math_hard": "MATH Lvl 5",
           "leaderboard_gpqa": "GPQA", "leaderboard_musr": "MuSR", "leaderboard_mmlu_pro": "MMLU-PRO"}
METRIC_NAMES = {"acc": "accuracy", "acc_norm": "normalized accuracy", "exact_match": "exact match",
                "prompt_level_strict_acc": "strict prompt-level accuracy",
                "inst_level_strict_acc": "strict instruction-level accuracy",
                "prompt_level_loose_acc": "loose prompt-level accuracy",
                "inst_level_loose_acc": "loose instruction-level accuracy"}

METHOD_TEXT = {
    "lora": "LoRA",
    "qlora": "QLoRA (LoRA on a 4-bit bitsandbytes-quantized base)",
    "full": "full fine-tune",
}
MERGE_TEXT = {
    "plain": "the LoRA update is added to the unquantized base weights (peft `merge_and_unload`)",
    "qlora_dequant": ("the base is quantized and dequantized again (the same round-trip the adapter "
                      "was trained against), then the LoRA update is added "
                      "(as open-instruct `merge_lora.py --qlora` and jondurbin's `qmerge.py` do)"),
    "combine": "several adapters are combined with peft `add_weighted_adapter`, then merged into the base",
    "none": "no merge: the trained weights are the model",
}
VERSION_LABELS = [
    ("peft", "PEFT"), ("transformers", "Transformers"), ("torch", "PyTorch"),
    ("accelerate", "Accelerate"), ("datasets", "Datasets"), ("bitsandbytes", "bitsandbytes"),
    ("tokenizers", "Tokenizers"), ("safetensors", "safetensors"), ("huggingface_hub", "huggingface_hub"),
    ("lm_eval", "lm-evaluation-harness"), ("snakemake", "Snakemake"),
]


# --------------------------------------------------------------------------- helpers
def _load(value: Any) -> Any:
    """Read a JSON artifact given as a path; pass dicts through; None for None/missing."""
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        return value
    path = Path(value)
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def fmt(value: Any) -> str:
    """Numbers exactly as they are in the recipe/artifact (repr of floats), booleans as yes/no."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={fmt(v)}" for k, v in value.items())
    return str(value)


def pyfmt(value: Any) -> str:
    """Python-style scalar (``True``/``None``), as in a transformers config dump."""
    return repr(value) if not isinstance(value, str) else value


def pct(value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return ""
    return f"{round(value * 100, 2):.2f}"


def cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", s.lower())


def _is_hub_id(s: Any) -> bool:
    return isinstance(s, str) and re.fullmatch(r"[\w.-]+/[\w.-]+", s) is not None


# --------------------------------------------------------------------------- evaluation
def _canonical_task(name: str) -> str:
    for prefix in TASK_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name


def _subtasks(results: dict) -> set[str]:
    out: set[str] = set()
    for children in (results.get("group_subtasks") or {}).values():
        out.update(children or [])
    return out


def _n_shot(results: dict, task: str) -> int | None:
    nshot = results.get("n-shot") or {}
    if isinstance(nshot.get(task), int):
        return nshot[task]
    children = (results.get("group_subtasks") or {}).get(task) or []
    shots = {nshot.get(c) for c in children if isinstance(nshot.get(c), int)}
    if len(shots) == 1:
        return shots.pop()
    cfg = (results.get("configs") or {}).get(task) or {}
    return cfg.get("num_fewshot") if isinstance(cfg.get("num_fewshot"), int) else None


def _samples(results: dict, task: str) -> int | None:
    """Effective sample count; for a group, the sum over its leaf tasks (None if any is missing)."""
    ns = results.get("n-samples") or {}
    groups = results.get("group_subtasks") or {}
    if task in ns:
        return (ns[task] or {}).get("effective")
    children = groups.get(task)
    if not children:
        return None
    total = 0
    for child in children:
        n = _samples(results, child)
        if n is None:
            return None
        total += n
    return total


def _pick_metric(entry: dict, preferred: list[str]) -> str | None:
    for key in preferred:
        if isinstance(entry.get(key), (int, float)) and not isinstance(entry.get(key), bool):
            return key
    for key in sorted(entry):
        if "," in key and "_stderr" not in key and isinstance(entry[key], (int, float)) \
                and not isinstance(entry[key], bool):
            return key
    return None


def _stderr_key(metric_key: str) -> str:
    name, _, flt = metric_key.partition(",")
    return f"{name}_stderr,{flt}"


def eval_rows(results: dict | None) -> list[dict]:
    """One row per top-level lm-eval task: Open LLM v1 tasks first (leaderboard order), then others.

    Each row: ``task`` (lm-eval name), ``key`` (canonical name), ``display``, ``metric_key``,
    ``metric_type``, ``metric_name``, ``raw`` (fraction as in results.json), ``value`` (``raw*100``
    rounded to 2), ``stderr`` (same scale or None), ``n_shot``, ``samples``, ``known`` and the
    model-index ``dataset`` fields.
    """
    if not results:
        return []
    if (results.get("reprotune") or {}).get("tasks"):
        return _rows_that_ran(results)
    res = results.get("results") or {}
    sub = _subtasks(results)
    rows = []
    for task in res:
        entry = res[task]
        if not isinstance(entry, dict):
            continue
        key = _canonical_task(task)
        meta = TASKS_BY_KEY.get(key)
        if task in sub and meta is None:
            continue  # a subtask of a group (e.g. mmlu_abstract_algebra)
        if meta is None and str(entry.get("alias", "")).startswith(" "):
            continue  # indented alias: a subtask lm-eval prints under its group
        metric_key = _pick_metric(entry, meta["metrics"] if meta else [])
        if metric_key is None:
            continue
        raw = entry[metric_key]
        se = entry.get(_stderr_key(metric_key))
        n_shot = _n_shot(results, task)
        samples = _samples(results, task)
        shot = f" ({n_shot}-shot)" if n_shot is not None else ""
        row = dict(
            task=task, key=key, known=meta is not None, metric_key=metric_key, raw=raw,
            value=round(raw * 100, 2), stderr=round(se * 100, 2) if isinstance(se, (int, float)) else None,
            n_shot=n_shot, samples=samples,
            display=(meta["display"] if meta else task) + shot,
            metric_type=meta["metric_type"] if meta else metric_key.split(",")[0],
            metric_name=meta["metric_name"] if meta else metric_key.split(",")[0],
            dataset_type=meta["type"] if meta else None, dataset_config=meta["config"] if meta else None,
            dataset_split=meta["split"] if meta else None,
            order=[t["key"] for t in OPEN_LLM_TASKS].index(key) if meta else len(OPEN_LLM_TASKS),
        )
        rows.append(row)
    rows.sort(key=lambda r: (r["order"], r["task"]))
    return rows


def _ran_row(results: dict, s: dict, v1_order: list[str]) -> dict:
    """A card row from one ``evaluate.summary`` row (the task, shots and metric that ran)."""
    meta = TASKS_BY_KEY.get(s["task"])
    known = meta is not None and s["lm_eval_metric"] == meta["metrics"][0]
    ds = s.get("dataset") or {}
    return dict(
        task=s["task"], key=s["task"], known=known, metric_key=s["lm_eval_metric"], raw=s["value"],
        value=round(s["value"] * 100, 2), stderr=round(s["stderr"] * 100, 2) if s["stderr"] is not None else None,
        n_shot=s["n_shot"], samples=_samples(results, s["task"]),
        display=f"{meta['display'] if meta else DISPLAY.get(s['task'], s['task'])} ({s['n_shot']}-shot)",
        metric_type=s["metric"], metric_name=METRIC_NAMES.get(s["metric"], s["metric"]),
        dataset_type=ds.get("repo"), dataset_config=ds.get("config"), dataset_split=ds.get("split"),
        order=v1_order.index(s["task"]) if meta else len(v1_order),
    )


def _rows_that_ran(results: dict) -> list[dict]:
    """Rows in the order of the recipe's task list (``results["reprotune"]``, via evaluate.summary)."""
    from ..evaluate import summary

    order = [t["key"] for t in OPEN_LLM_TASKS]
    return [_ran_row(results, s, order) for s in summary(results) if s["value"] is not None]


def average(rows: list[dict]) -> float | None:
    known = [r["raw"] * 100 for r in rows if r["known"]]
    return round(sum(known) / len(known), 2) if known else None


def eval_results_for_card(rows: list[dict]) -> list[EvalResult]:
    out = []
    for r in rows:
        if r["dataset_type"] is None:
            continue  # legacy results.json: a task the card has no dataset facts for
        out.append(EvalResult(
            task_type="text-generation", task_name="Text Generation",
            dataset_type=r["dataset_type"], dataset_name=r["display"],
            dataset_config=r["dataset_config"], dataset_split=r["dataset_split"],
            dataset_args={"num_few_shot": r["n_shot"]} if r["n_shot"] is not None else None,
            metric_type=r["metric_type"], metric_value=r["value"], metric_name=r["metric_name"],
        ))
    return out


def _match_reported(reported: dict, rows: list[dict]) -> tuple[dict[str, Any], list[tuple[str, Any]], Any]:
    """Match ``card.reported_results`` keys to rows (by task name or display name, loosely)."""
    by_task: dict[str, Any] = {}
    unmatched = []
    avg = None
    for name, val in (reported or {}).items():
        n = _norm(str(name))
        if n in ("avg", "average"):
            avg = val
            continue
        hit = None
        for r in rows:
            meta = TASKS_BY_KEY.get(r["key"])
            cands = {_norm(r["task"]), _norm(r["key"]), _norm(r["display"])}
            if meta:
                cands.add(_norm(meta["display"]))
            if n in cands:
                hit = r["task"]
                break
        if hit:
            by_task[hit] = val
        else:
            unmatched.append((str(name), val))
    return by_task, unmatched, avg


def _results_variants(spec: dict) -> list[tuple[str, dict]]:
    res = spec.get("results")
    if res is None:
        return []
    if isinstance(res, dict) and "results" not in res:
        items = [(str(k), _load(v)) for k, v in res.items()]
        items = [(k, v) for k, v in items if v]
        merge = (spec.get("recipe") or {}).get("merge") or {}
        labels = [k for k, _ in items]
        primary = spec.get("primary") or next(
            (m for m in (merge.get("then"), merge.get("method")) if m in labels), None)
        if primary:
            items.sort(key=lambda kv: kv[0] != primary)
        return items
    loaded = _load(res)
    return [("model", loaded)] if loaded else []


def _eval_context(spec: dict, recipe: dict) -> dict:
    variants = _results_variants(spec)
    card = recipe.get("card") or {}
    ctx: dict[str, Any] = {"present": bool(variants), "rows": [], "variants": [], "compare": None}
    if not variants:
        return ctx
    label, results = variants[0]
    rows = eval_rows(results)
    reported, unmatched, reported_avg = _match_reported(card.get("reported_results") or {}, rows)
    for r in rows:
        r["reported"] = reported.get(r["task"])
    cfg = results.get("config") or {}
    ctx.update(
        label=label, rows=rows, avg=average(rows), has_reported=bool(card.get("reported_results")),
        reported_avg=reported_avg, reported_unmatched=unmatched,
        lm_eval_version=results.get("lm_eval_version"),
        batch_size=cfg.get("batch_size"), limit=cfg.get("limit"),
        suite=(recipe.get("eval") or {}).get("suite"),
        known=[r for r in rows if r["known"]], others=[r for r in rows if not r["known"]],
    )
    if len(variants) > 1:
        labels = [v[0] for v in variants]
        tables = {lab: {(r["task"], r["metric_key"]): r for r in eval_rows(res)} for lab, res in variants}
        tasks = []
        for lab in labels:
            for t in tables[lab]:
                if t not in tasks:
                    tasks.append(t)
        comp_rows = []
        for t in tasks:
            vals = [tables[lab].get(t) for lab in labels]
            first = next(v for v in vals if v)
            delta = None
            if len(labels) == 2 and all(vals):
                delta = round(vals[1]["value"] - vals[0]["value"], 2)
            comp_rows.append(dict(display=first["display"], values=[
                f"{v['value']:.2f}" if v else "" for v in vals], delta=f"{delta:+.2f}" if delta is not None else ""))
        avgs = [average(list(tables[lab].values())) for lab in labels]
        ad = round(avgs[1] - avgs[0], 2) if len(labels) == 2 and None not in avgs else None
        comp_rows.append(dict(display="Avg.", values=[f"{a:.2f}" if a is not None else "" for a in avgs],
                              delta=f"{ad:+.2f}" if ad is not None else ""))
        ctx["compare"] = dict(labels=labels, rows=comp_rows, two=len(labels) == 2)
    return ctx


# --------------------------------------------------------------------------- datasets
def _requested_text(req: Any) -> str:
    if not isinstance(req, dict):
        return fmt(req)
    parts = []
    if "fraction" in req:
        parts.append(f"fraction {fmt(req['fraction'])}")
    if "count" in req:
        parts.append(f"count {fmt(req['count'])}")
    for k, v in req.items():
        if k not in ("fraction", "count"):
            parts.append(f"{k} {fmt(v)}")
    return ", ".join(parts)


def _dataset_context(recipe: dict, adapter: str, report: dict | None) -> dict:
    ad = (recipe.get("adapters") or {}).get(adapter) or {}
    mix = ((ad.get("data") or {}).get("mix") or {})
    sources = recipe.get("sources") or {}
    ctx: dict[str, Any] = {"name": adapter, "present": report is not None, "rows": []}
    if report is None:
        ctx["mix"] = [(s, sources.get(s, {}).get("repo", s), _requested_text(m)) for s, m in mix.items()]
        return ctx
    rep_sources = report.get("sources") or {}
    order = [s for s in mix if s in rep_sources] + sorted(s for s in rep_sources if s not in mix)
    for s in order:
        r = rep_sources[s]
        cleaning = r.get("cleaning") or {}
        ctx["rows"].append(dict(
            source=s, repo=(sources.get(s) or {}).get("repo", s),
            rows_read=r.get("rows_read"), rows_cleaned=r.get("rows_cleaned"),
            reader_rejects=sorted((cleaning.get("reader_rejects") or {}).items()),
            filters=cleaning.get("filters") or [],
            requested=_requested_text(r.get("requested")), available=r.get("available"),
            taken=r.get("taken"), shortfall=r.get("shortfall"), train=r.get("train"), val=r.get("val"),
        ))
    ctx["missing_in_report"] = [s for s in mix if s not in rep_sources]
    ctx["totals"] = report.get("totals") or {}
    ctx["seed"] = report.get("seed")
    return ctx


# --------------------------------------------------------------------------- training
def effective_batch(train: dict) -> tuple[int, str]:
    pd = int(train.get("per_device_batch_size") or 1)
    ga = int(train.get("gradient_accumulation_steps") or 1)
    gpus = train.get("num_gpus")
    g = max(int(gpus or 0), 1)
    return pd * ga * g, f"{pd} × {ga} × {g}"


def _bnb_items(train: dict, summary: dict | None) -> list[tuple[str, str]] | None:
    if train.get("method") != "qlora":
        return None
    settings = (summary or {}).get("settings") or {}
    qc = settings.get("quantization_config") or settings.get("bnb_config")
    if isinstance(qc, dict) and qc:
        return [(k, pyfmt(v)) for k, v in sorted(qc.items())]
    q = train.get("quantization") or {}
    items = [("quant_method", "bitsandbytes"), ("load_in_8bit", "False"), ("load_in_4bit", "True")]
    if "quant_type" in q:
        items.append(("bnb_4bit_quant_type", q["quant_type"]))
    if "double_quant" in q:
        items.append(("bnb_4bit_use_double_quant", pyfmt(bool(q["double_quant"]))))
    if "compute_dtype" in q:
        items.append(("bnb_4bit_compute_dtype", q["compute_dtype"]))
    if "blocksize" in q:
        items.append(("blocksize", pyfmt(q["blocksize"])))
    return items


def _train_params(train: dict) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []

    def add(label: str, key: str) -> None:
        v = train.get(key)
        if v is not None:
            rows.append((label, fmt(v)))

    method = train.get("method")
    q = train.get("quantization") or {}
    rows.append(("Method", METHOD_TEXT.get(method, fmt(method))))
    if method == "qlora":
        qdesc = [f"bitsandbytes {q.get('quant_type', '')}".strip()]
        if "double_quant" in q:
            qdesc.append(f"double quant {fmt(q['double_quant'])}")
        if "compute_dtype" in q:
            qdesc.append(f"compute dtype {q['compute_dtype']}")
        rows.append(("Quantization", ", ".join(qdesc)))
    lora = train.get("lora") or {}
    if lora and method != "full":
        for label, key in (("LoRA rank (r)", "r"), ("LoRA alpha", "alpha"), ("LoRA dropout", "dropout"),
                           ("LoRA target modules", "target_modules")):
            if lora.get(key) is not None:
                rows.append((label, fmt(lora[key])))
    add("Per-device batch size", "per_device_batch_size")
    add("Gradient accumulation steps", "gradient_accumulation_steps")
    rows.append(("GPUs asked for", fmt(train.get("num_gpus") if train.get("num_gpus") is not None else 0)))
    eff, expr = effective_batch(train)
    rows.append(("Effective batch size", f"{eff} ({expr}: per-device × grad. accum. × max(GPUs, 1))"))
    add("Learning rate", "learning_rate")
    add("LR scheduler", "lr_scheduler")
    add("Warmup ratio", "warmup_ratio")
    add("Warmup steps", "warmup_steps")
    add("Epochs", "epochs")
    if train.get("max_steps") not in (None, -1):
        rows.append(("Max steps", f"{fmt(train['max_steps'])} (overrides epochs)"))
    add("Max length (tokens)", "max_length")
    rope = train.get("rope_scaling")
    rows.append(("RoPE scaling", f"{rope.get('type')}, factor {fmt(rope.get('factor'))}" if rope else "none"))
    add("Packing", "packing")
    add("Gradient checkpointing", "gradient_checkpointing")
    add("Attention implementation", "attn_implementation")
    ds = train.get("deepspeed")
    rows.append(("DeepSpeed", {"zero2": "ZeRO stage 2", "zero3": "ZeRO stage 3"}.get(ds, fmt(ds)) if ds else "none"))
    add("Precision", "precision")
    add("Optimizer", "optimizer")
    add("Adam beta1", "adam_beta1")
    add("Adam beta2", "adam_beta2")
    add("Adam epsilon", "adam_epsilon")
    add("Weight decay", "weight_decay")
    add("Max grad norm", "max_grad_norm")
    add("Seed", "seed")
    add("Data seed", "data_seed")
    add("Save steps", "save_steps")
    return rows


def _summary_rows(summary: dict | None) -> list[tuple[str, str]]:
    if not summary:
        return []
    rows = []
    for label, key in (("Optimizer steps run", "steps"), ("Epochs completed", "epochs"),
                       ("Tokens trained", "tokens_trained"), ("Final training loss", "final_loss"),
                       ("Mean training loss", "mean_loss"), ("Trainable parameters", "trainable_params"),
                       ("Total parameters", "total_params")):
        if summary.get(key) is not None:
            rows.append((label, fmt(summary[key])))
    probe = summary.get("loss_probe") or {}
    for when in ("before", "after"):
        if probe.get(when) is not None:
            rows.append((f"Loss on the assistant tokens of {fmt(probe['rows'])} training rows, {when} training",
                         fmt(probe[when])))
    tok = summary.get("tokenizer") or {}
    if tok.get("class"):
        rows.append(("Tokenizer", f"{tok['class']} ({'fast' if tok.get('fast') else 'slow, SentencePiece'})"))
    return rows


def _training_context(recipe: dict, adapter: str, summary: dict | None) -> dict:
    ad = (recipe.get("adapters") or {}).get(adapter) or {}
    train = ad.get("train") or {}
    return dict(
        name=adapter, description=ad.get("description"), method=train.get("method"),
        params=_train_params(train), bnb=_bnb_items(train, summary), summary=_summary_rows(summary),
        config_yaml=yaml.safe_dump(train, sort_keys=True, default_flow_style=False, allow_unicode=True).rstrip(),
    )


# --------------------------------------------------------------------------- prompts / system messages
def _prompt_context(spec: dict, recipe: dict) -> list[dict]:
    """One entry per template the adapters use: its name, the adapters, a rendered example (the
    spec's ``prompt_example`` where given, else rendered here from the template itself)."""
    from reprotune import plan, templates

    ex = spec.get("prompt_example", ...)
    groups: dict[str, list[str]] = {}
    for name, ad in (recipe.get("adapters") or {}).items():
        groups.setdefault(templates.get(ad["template"]).name if ad.get("template") else "?", []).append(name)
    out = []
    for template, adapters in groups.items():
        if ex is ...:
            example = plan.prompt_example(recipe, adapters[0])
        elif isinstance(ex, dict):
            example = ex.get(template) or next((ex[a] for a in adapters if a in ex), None)
        else:
            example = ex
        out.append(dict(template=template, adapters=adapters, example=example))
    return out


def _read_messages(path: Path) -> list[str] | None:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
    elif path.suffix in (".yaml", ".yml"):
        data = yaml.safe_load(text)
    else:
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return lines
    if isinstance(data, dict):
        data = data.get("messages") or data.get("system_messages")
    return [str(m) for m in data] if isinstance(data, list) else None


def _system_context(spec: dict, recipe: dict) -> list[dict]:
    override = spec.get("system_messages")
    out = []
    for name, ad in (recipe.get("adapters") or {}).items():
        sm = (ad.get("data") or {}).get("system_messages")
        given = override.get(name) if isinstance(override, dict) else override
        if not sm and given is None:
            continue
        sm = sm or {}
        messages = list(given) if given is not None else None
        file = sm.get("messages_file")
        if messages is None and file:
            for base in (Path.cwd(), REPO_ROOT, PACKAGE_DIR):
                p = base / file
                if p.is_file():
                    messages = _read_messages(p)
                    break
        out.append(dict(adapter=name, file=file, assign_to_empty=sm.get("assign_to_empty"),
                        messages=messages))
    return out


# --------------------------------------------------------------------------- merge / provenance
def _merge_context(spec: dict, recipe: dict) -> dict:
    merge = recipe.get("merge") or {}
    method = merge.get("method")
    mi = spec.get("merge_info")
    infos: list[tuple[str, dict]] = []
    if isinstance(mi, dict) and mi and all(isinstance(v, (str, os.PathLike)) for v in mi.values()):
        infos = [(k, _load(v)) for k, v in mi.items()]
    elif mi is not None:
        infos = [("merge", _load(mi))]
    infos = [(k, v) for k, v in infos if v]
    combine = merge.get("combine") or {}
    combine_rows = list(zip(combine.get("adapters") or [], combine.get("weights") or []))
    return dict(
        method=method, text=MERGE_TEXT.get(method, ""), then=merge.get("then"),
        then_text=MERGE_TEXT.get(merge.get("then"), ""), compare=merge.get("compare") or [],
        combine=combine, combine_rows=[(a, fmt(w)) for a, w in combine_rows],
        infos=[(k, yaml.safe_dump(v, sort_keys=True, allow_unicode=True).rstrip()) for k, v in infos],
    )


def _provenance_context(prov: dict | None, recipe: dict) -> dict:
    if not prov:
        return {"present": False}
    inputs = prov.get("inputs") or {}
    sources, others = [], []
    for name, entry in inputs.items():
        if name.startswith("source:"):
            src = name.split(":", 1)[1]
            files = entry.get("files") or ({entry.get("path", ""): entry.get("sha256")} if entry.get("type") == "file" else {})
            sources.append(dict(name=src, repo=entry.get("repo") or ((recipe.get("sources") or {}).get(src) or {}).get("repo"),
                                revision=entry.get("revision") or ((recipe.get("sources") or {}).get(src) or {}).get("revision"),
                                path=entry.get("path"), sha256=entry.get("sha256"),
                                files=sorted(files.items())))
        else:
            others.append(dict(name=name, path=entry.get("path"), sha256=entry.get("sha256"),
                               revision=entry.get("revision"), nfiles=len(entry.get("files") or {}) or None,
                               excluded=entry.get("excluded") or []))
    base_entry = inputs.get("base") or {}
    cmd = prov.get("command") or []
    return dict(
        present=True, recipe_sha256=prov.get("recipe_sha256"), code=prov.get("code") or {},
        python=prov.get("python"), sources=sources, others=others,
        base_revision=base_entry.get("revision") or (recipe.get("base_model") or {}).get("revision"),
        containers=sorted((prov.get("containers") or {}).items()),
        containers_note=prov.get("containers_note"),
        command=" ".join(shlex.quote(str(a)) for a in cmd) if cmd else None,
    )


def _versions(prov: dict | None) -> list[tuple[str, str]]:
    versions = (prov or {}).get("versions") or {}
    out = [(label, versions[k]) for k, label in VERSION_LABELS if versions.get(k)]
    if prov and prov.get("python"):
        out.append(("Python", prov["python"]))
    return out


# --------------------------------------------------------------------------- context + render
def build_context(spec: dict) -> dict:
    """Everything the templates need, computed from the artifacts (no I/O besides reading them)."""
    recipe = spec["recipe"]
    card = recipe.get("card") or {}
    base = recipe.get("base_model") or {}
    scale = recipe.get("scale", "full")
    prov = _load(spec.get("provenance"))
    reports = spec.get("data_reports") or {}
    summaries = spec.get("train_summaries") or {}
    adapters = list((recipe.get("adapters") or {}).keys())
    trains = {a: _training_context(recipe, a, _load(summaries.get(a))) for a in adapters}
    any_rope = any(((recipe["adapters"][a].get("train") or {}).get("rope_scaling")) for a in adapters)
    versions = _versions(prov)
    return dict(
        recipe_id=recipe.get("id"), title=card.get("title") or recipe.get("id"), scale=scale,
        tiny=scale == "tiny", original=card.get("original"),
        slow_tokenizer=(recipe.get("tokenizer") or {}).get("use_fast") is False,
        description=(card.get("description") or "").strip(), framework=(card.get("framework") or "").strip(),
        developers=card.get("developers") or [],
        sections=[dict(title=x["title"], text=(x.get("text") or "").strip()) for x in card.get("sections") or []],
        links=sorted((card.get("links") or {}).items()),
        license=card.get("license"), license_name=card.get("license_name"), license_link=card.get("license_link"),
        license_text=(card.get("license_text") or "").strip(), limitations=(card.get("limitations") or "").strip(),
        citations=[c.strip() for c in card.get("citations") or []], notes=card.get("notes") or [],
        languages=card.get("language") or [], library_name=card.get("library_name") or "transformers",
        base=dict(id=base.get("id"), revision=base.get("revision"), hub=_is_hub_id(base.get("id")),
                  twin=base.get("twin") is not None),
        datasets=[_dataset_context(recipe, a, _load(reports.get(a))) for a in adapters],
        training=[trains[a] for a in adapters], any_bnb=any(trains[a]["bnb"] for a in adapters),
        rope=any_rope, versions=versions,
        precisions=sorted({str(recipe["adapters"][a]["train"]["precision"]) for a in adapters
                           if (recipe["adapters"][a].get("train") or {}).get("precision")}),
        transformers_version=dict(versions).get("Transformers"),
        prompts=_prompt_context(spec, recipe), system=_system_context(spec, recipe),
        merge=_merge_context(spec, recipe), eval=_eval_context(spec, recipe),
        provenance=_provenance_context(prov, recipe), multi_adapter=len(adapters) > 1,
    )


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, autoescape=False,
    )
    env.filters.update(cell=cell, fmt=fmt)
    return env


def _repo_ids(recipe: dict, source_names: list[str] | None = None) -> list[str]:
    out: list[str] = []
    for name, src in (recipe.get("sources") or {}).items():
        if source_names is not None and name not in source_names:
            continue
        repo = (src or {}).get("repo")
        if _is_hub_id(repo) and repo not in out:
            out.append(repo)
    return out


def card_data(recipe: dict, rows: list[dict], *, library_name: str | None = None,
              datasets: list[str] | None = None, extra_tags: list[str] | None = None,
              with_eval: bool = True) -> ModelCardData:
    card = recipe.get("card") or {}
    base_id = (recipe.get("base_model") or {}).get("id")
    tiny = recipe.get("scale", "full") == "tiny"
    tags = list(card.get("tags") or [])
    for t in ["reprotune", *(["reprotune-tiny"] if tiny else []), *(extra_tags or [])]:
        if t not in tags:
            tags.append(t)
    license_ = card.get("license")
    evals = eval_results_for_card(rows) if with_eval else []
    kwargs: dict[str, Any] = dict(
        language=card.get("language") or None, license=license_,
        library_name=library_name or card.get("library_name") or "transformers",
        base_model=base_id if _is_hub_id(base_id) else None,
        datasets=datasets if datasets is not None else (_repo_ids(recipe) or None),
        tags=tags,
    )
    if license_ == "other":
        kwargs.update(license_name=card.get("license_name"), license_link=card.get("license_link"))
    if evals:
        # a tiny build must never be mistaken for the published model on leaderboards
        kwargs.update(eval_results=evals, model_name=f"{recipe['id']}-tiny" if tiny else recipe["id"])
    return ModelCardData(**{k: v for k, v in kwargs.items() if v is not None})


def _tidy(body: str) -> str:
    """Collapse runs of blank lines left by template logic, except inside ``` fences."""
    out: list[str] = []
    fenced = False
    for line in body.strip("\n").split("\n"):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and not line.strip() and out and not out[-1].strip():
            continue
        out.append(line)
    return "\n".join(out).rstrip() + "\n"


def _finish(data: ModelCardData, body: str) -> str:
    text = f"---\n{data.to_yaml()}\n---\n\n{_tidy(body)}"
    ModelCard(text, ignore_metadata_errors=False)  # front matter must parse
    return text


def render(spec: dict, out_path: str | os.PathLike, adapter_readme_dir: str | os.PathLike | None = None) -> str:
    """Render ``README.md`` for the model to ``out_path`` (atomic); returns the text.

    With ``adapter_readme_dir``, also writes ``<adapter_readme_dir>/<adapter>/README.md``
    for every adapter (see ``render_adapter``).
    """
    ctx = build_context(spec)
    body = _env().get_template("model_card.md.j2").render(c=ctx)
    text = _finish(card_data(spec["recipe"], ctx["eval"]["rows"]), body)
    atomic_write_text(out_path, text)
    if adapter_readme_dir is not None:
        for adapter in spec["recipe"].get("adapters") or {}:
            render_adapter(spec, adapter, Path(adapter_readme_dir) / adapter / "README.md")
    return text


def render_adapter(spec: dict, adapter: str, out_path: str | os.PathLike) -> str:
    """README for publishing one adapter alone (``library_name: peft``); written atomically."""
    recipe = spec["recipe"]
    if adapter not in (recipe.get("adapters") or {}):
        raise KeyError(f"recipe {recipe.get('id')!r} has no adapter {adapter!r}")
    ctx = build_context(spec)
    idx = list(recipe["adapters"]).index(adapter)
    mix = ((recipe["adapters"][adapter].get("data") or {}).get("mix") or {})
    method = (recipe["adapters"][adapter].get("train") or {}).get("method")
    a = dict(name=adapter, data=ctx["datasets"][idx], train=ctx["training"][idx],
             prompt=next((p for p in ctx["prompts"] if adapter in p["adapters"]), None),
             input=(ctx["provenance"].get("others") and next(
                 (o for o in ctx["provenance"]["others"] if o["name"] == f"adapter:{adapter}"), None)))
    body = _env().get_template("adapter_card.md.j2").render(c=ctx, a=a)
    data = card_data(recipe, [], library_name="peft", datasets=_repo_ids(recipe, list(mix)) or None,
                     extra_tags=["peft", method] if method in ("lora", "qlora") else ["peft"], with_eval=False)
    text = _finish(data, body)
    atomic_write_text(out_path, text)
    return text
