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
from functools import lru_cache
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
    """The base model's directory: the same path at both scales (a twin is downloaded into it)."""
    return f"resources/base/{model_slug(recipe['base_model']['id'])}"


def uses_twin(recipe: dict) -> bool:
    return recipe["base_model"].get("twin") is not None


def twin_dir(recipe: dict) -> str:
    """The twin's one-repo mirror (``hub/models/<org>/<name>/``) and its ``SHA256SUMS``."""
    return f"resources/twins/{model_slug(recipe['base_model']['id'])}"


def use_fast_tokenizer(recipe: dict) -> bool:
    return bool((recipe.get("tokenizer") or {}).get("use_fast", True))


def source_dir(rid: str, source: str) -> str:
    return f"resources/sources/{rid}/{source}"


def clean_dir(rid: str, source: str) -> str:
    return f"results/{rid}/clean/{source}"


def data_dir(rid: str, adapter: str) -> str:
    return f"results/{rid}/data/{adapter}"


def tokens_dir(rid: str, adapter: str) -> str:
    return f"results/{rid}/tokens/{adapter}"


def adapter_dir(rid: str, adapter: str) -> str:
    return f"results/{rid}/adapters/{adapter}"


def final_targets(rid: str) -> list[str]:
    return [
        f"results/{rid}/model",
        f"results/{rid}/eval/results.json",
        f"results/{rid}/provenance.json",
        f"results/{rid}/README.md",
        f"results/{rid}/report/card.html",
    ]


# ---------------------------------------------------------------- specs
def twin_spec(recipe: dict) -> dict:
    """What the twin builder needs: the base's profile and the overlay's twin settings."""
    from . import bases

    t = recipe["base_model"]["twin"] or {}
    return {"profile": bases.get(recipe["base_model"]["id"]), "seed": int(t.get("seed", 0)),
            "pretrain": dict(t.get("pretrain") or {})}


def lock_file(recipes_dir: str, rid: str) -> str:
    """The recipe's lock file (``recipes/<id>.lock.json``), written by the first full-scale download."""
    return str(repo_path(recipes_dir) / f"{rid}.lock.json")


def _lock_args(recipe: dict, key: str, lock_file: str | None, frozen: bool) -> dict:
    # a mirror is pinned by its SHA256SUMS: no lock (and frozen is satisfied) in mirror mode
    if recipe.get("hub_mirror") or not lock_file:
        return {}
    return {"lock": {"path": lock_file, "key": key, "recipe": recipe["id"]}, "frozen": bool(frozen)}


def download_spec(recipe: dict, source: str, lock_file: str | None = None, frozen: bool = False) -> dict:
    s = recipe["sources"][source]
    return {
        "name": source,
        "repo": s["repo"],
        "revision": s.get("revision"),
        "files": s["files"],
        "sha256": s.get("sha256", {}),
        **_lock_args(recipe, f"sources/{source}", lock_file, frozen),
    }


def base_download_spec(recipe: dict, lock_file: str | None = None, frozen: bool = False) -> dict:
    """A twin is read from its own mirror, pinned by the SHA256SUMS its builder wrote (no lock)."""
    b = recipe["base_model"]
    spec = {"id": b["id"], "revision": b.get("revision"), "files": b.get("files", []), "sha256": b.get("sha256", {})}
    if uses_twin(recipe):
        return {**spec, "mirror_sums": f"{twin_dir(recipe)}/SHA256SUMS"}
    return {**spec, **_lock_args(recipe, "base_model", lock_file, frozen)}


def base_mirror(recipe: dict) -> str | None:
    """Where download_base reads the base from: the twin's mirror, the overlay's hub mirror
    (``<mirror>/models/<org>/<name>/``), or None: the Hub."""
    if uses_twin(recipe):
        return f"{twin_dir(recipe)}/hub"
    return str(repo_path(recipe["hub_mirror"])) if recipe.get("hub_mirror") else None


def mirror_pin_file(recipe: dict) -> str | None:
    """The SHA256SUMS that pins a mirror (``fixtures/SHA256SUMS`` beside ``fixtures/hub``)."""
    m = recipe.get("hub_mirror")
    return str(repo_path(m).parent / "SHA256SUMS") if m else None


def mirror_pins(recipe: dict, source: str) -> dict[str, str]:
    """This source's lines of the mirror's SHA256SUMS (a rule param: editing another
    repo's pin does not rerun this download)."""
    return repo_pins(recipe, recipe["sources"][source]["repo"])


def repo_pins(recipe: dict, repo: str) -> dict[str, str]:
    """One dataset repo's lines of the mirror's SHA256SUMS ({} without a mirror)."""
    sums = mirror_pin_file(recipe)
    if not sums or not Path(sums).is_file():
        return {}
    prefix = f"datasets/{repo}/"
    out = {}
    for line in Path(sums).read_text(encoding="utf-8").splitlines():
        digest, _, rel = line.partition("  ")
        if rel.startswith(prefix):
            out[rel] = digest
    return out


def uses_base_tokenizer(recipe: dict, source: str) -> bool:
    """Whether a source's filters count tokens with the base tokenizer (``tokenizer: base``)."""
    return any(isinstance(f, dict) and f.get("tokenizer") == "base" for f in recipe["sources"][source].get("filters", []))


def misconception_spec(cfg: dict) -> dict | None:
    """The optional misconception generator's settings (no secrets: the key stays in the env)."""
    g = cfg.get("misconception_generator")
    if not g:
        return None
    out = {"n": 500, "seed": 0, "per_request": 10, "max_requests": 200, "temperature": 0.7,
           "api_key_env": "OPENAI_API_KEY", "timeout_s": 120}
    out.update({k: v for k, v in g.items() if k != "recipes"})
    return out


def clean_spec(recipe: dict, source: str) -> dict:
    s = recipe["sources"][source]
    spec = {
        "name": source,
        "format": s["format"],
        "files": s["files"],
        "options": s.get("options", {}),
        "filters": s.get("filters", []),
    }
    if uses_base_tokenizer(recipe, source):
        spec["tokenizer_dir"] = base_dir(recipe)
        spec["tokenizer_use_fast"] = use_fast_tokenizer(recipe)
    return spec


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
        "template": recipe["adapters"][adapter]["template"],
        "tokenizer": {"use_fast": use_fast_tokenizer(recipe)},
    }


def train_spec(recipe: dict, adapter: str) -> dict:
    ad = recipe["adapters"][adapter]
    return {"recipe": recipe["id"], "adapter": adapter, "template": ad["template"], "train": ad["train"],
            "base_model": recipe["base_model"]["id"], "twin": uses_twin(recipe),
            "tokenizer": {"use_fast": use_fast_tokenizer(recipe)}}


def tokenize_spec(recipe: dict, adapter: str) -> dict:
    from .dataset import spec_for

    return spec_for(train_spec(recipe, adapter))


def merge_spec(recipe: dict) -> dict:
    m = copy.deepcopy(recipe["merge"])
    if m["method"] == "combine":
        m["combine"].setdefault("seed", 0)
    return m


def merge_label(recipe: dict) -> str:
    """The primary model's merge method (for combine: how the combination goes into the base)."""
    m = recipe["merge"]
    return m.get("then", "plain") if m["method"] == "combine" else m["method"]


def merge_variants(recipe: dict) -> list[str]:
    """Extra merge methods the card compares (``merge.compare``), each built at
    ``results/<id>/models/<method>/`` and evaluated at ``results/<id>/eval/<method>/``."""
    m = recipe["merge"]
    if m["method"] == "none":
        return []
    return [v for v in (m.get("compare") or []) if v != merge_label(recipe)]


def merge_variant_spec(recipe: dict, variant: str) -> dict:
    m = merge_spec(recipe)
    m.pop("compare", None)
    if m["method"] == "combine":
        m["then"] = variant
    else:
        m["method"] = variant
    return m


def variant_model_dir(rid: str, variant: str) -> str:
    return f"results/{rid}/models/{variant}"


def variant_eval(rid: str, variant: str) -> str:
    return f"results/{rid}/eval/{variant}/results.json"


def merge_adapters(recipe: dict) -> list[str]:
    m = recipe["merge"]
    if m["method"] == "combine":
        return list(m["combine"]["adapters"])
    return sorted(recipe["adapters"])


def eval_spec(recipe: dict) -> dict:
    """What the evaluate stage runs: the expanded task list (a preset or the recipe's own
    ``eval.tasks``) and the run settings. The data comes from ``eval_data_dirs``."""
    from . import eval_tasks

    e = recipe["eval"]
    spec = {
        "tasks": eval_tasks.expand(e),
        "batch_size": e.get("batch_size", 1),
        "limit": e.get("limit"),
        "seed": e.get("seed", 1234),
        "device": "cpu" if recipe.get("scale") == "tiny" else "cuda",
        "tokenizer": {"use_fast": use_fast_tokenizer(recipe)},
    }
    if "suite" in e:
        spec["suite"] = e["suite"]
    if recipe.get("hub_mirror"):
        spec["nltk_data"] = "fixtures/eval/nltk_data"  # repository-relative
    return spec


def eval_tasks_of(recipe: dict) -> list[str]:
    """The distinct lm-eval tasks a recipe evaluates (one eval-data download each)."""
    from . import eval_tasks

    return eval_tasks.task_names(recipe["eval"])


def eval_data_dir(rid: str, task: str) -> str:
    return f"resources/eval/{rid}/{task}"


def eval_data_dirs(recipe: dict) -> dict[str, str]:
    return {t: eval_data_dir(recipe["id"], t) for t in eval_tasks_of(recipe)}


def eval_lock_key(task: str) -> str:
    # interim form that today's lock.py accepts ('sources/<name>'); '-' cannot occur in a
    # source name, so no clash with training sources. Proposed: 'eval/<task>'.
    return f"sources/eval-{task}"


def eval_download_spec(recipe: dict, task: str, lock_file: str | None = None, frozen: bool = False) -> dict:
    """``download.fetch_dataset`` spec of one task's eval data (registry: eval_tasks/registry/)."""
    from . import eval_tasks

    reg = eval_tasks.registry()[task]
    return {
        "name": f"eval-{task}",
        "repo": reg["repo"],
        "revision": reg.get("revision"),
        "files": eval_tasks.file_patterns(task),
        "sha256": reg.get("sha256", {}),
        **_lock_args(recipe, eval_lock_key(task), lock_file, frozen),
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


def threads_for(stage: str, recipe: dict) -> int:
    """Processes a job of ``stage`` may use. Only the tokenize stage uses more than one (its
    bytes do not depend on the count); the tiny build asks for 2, so that it schedules on a
    small node (a SLURM job asking for more CPUs than any node has never starts)."""
    if stage == "tokenize":
        return 2 if recipe.get("scale") == "tiny" else 8
    return 1


def resources_for(stage: str, recipe: dict, adapter: str | None = None) -> dict:
    """Cluster resources: GPUs only where a full-scale stage needs them."""
    tiny = recipe.get("scale") == "tiny"
    if stage == "train":
        n = int(recipe["adapters"][adapter]["train"].get("num_gpus", 0) or 0)
        return {"gpu": 0 if tiny else n, "mem_mb": 4000 if tiny else 400_000, "runtime": 30 if tiny else 4320}
    if stage in ("merge", "evaluate"):
        return {"gpu": 0 if tiny else 1, "mem_mb": 4000 if tiny else 300_000, "runtime": 30 if tiny else 1440}
    if stage == "tokenize":  # a CPU job with its own threads; workers hold one 4 MB chunk's rows each
        return {"gpu": 0, "mem_mb": 2000 if tiny else 64_000, "runtime": 20 if tiny else 600}
    return {"gpu": 0, "mem_mb": 2000 if tiny else 32_000, "runtime": 20 if tiny else 600}


def provenance_inputs(recipe: dict) -> dict[str, str]:
    rid = recipe["id"]
    out = {f"source:{s}": source_dir(rid, s) for s in sorted(recipe["sources"])}
    out["base"] = base_dir(recipe)
    out.update({f"adapter:{a}": adapter_dir(rid, a) for a in sorted(recipe["adapters"])})
    out["model"] = f"results/{rid}/model"
    out["eval"] = f"results/{rid}/eval/results.json"
    for v in merge_variants(recipe):
        out[f"model:{v}"] = variant_model_dir(rid, v)
        out[f"eval:{v}"] = variant_eval(rid, v)
    return out


PROVENANCE_STAGES = ("download", "clean", "mix", "tokenize", "train", "merge", "evaluate")


def rebuild_command(recipe: dict, overlay: str | None, containers: bool = False) -> list[str]:
    cmd = ["snakemake", "--cores", "all"] + (["--use-singularity"] if containers else [])
    cmd += ["--config", f"recipes=[{recipe['id']}]"]
    cmd.append(f"overlay={overlay}" if overlay else "overlay=null")
    return cmd


def provenance_spec(recipe: dict, overlay: str | None, images: dict | None = None) -> dict:
    """``images``: the images lock when this run uses containers (--use-singularity), else None:
    then every stage's container URL (repository@digest) is recorded."""
    from . import images as img

    containers = img.containers_for(recipe, PROVENANCE_STAGES, images) if images else {}
    return {"recipe": recipe, "command": rebuild_command(recipe, overlay, bool(images)),
            "containers": containers}


def prompt_example(recipe: dict, adapter: str | None = None) -> str | None:
    """A rendered example of an adapter's prompt template (default: the first adapter), for the
    card; rendered by the card stage, never while Snakemake builds the DAG (it imports transformers)."""
    from . import templates

    ad = recipe["adapters"][adapter or sorted(recipe["adapters"])[0]]
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


def _card_variants(recipe: dict) -> dict:
    """With ``merge.compare``: results and merge_info as {method: path}, primary first."""
    rid, variants = recipe["id"], merge_variants(recipe)
    if not variants:
        return {}
    label = merge_label(recipe)
    return {
        "results": {label: f"results/{rid}/eval/results.json",
                    **{v: variant_eval(rid, v) for v in variants}},
        "merge_info": {label: f"results/{rid}/model/merge_info.json",
                       **{v: f"{variant_model_dir(rid, v)}/merge_info.json" for v in variants}},
        "primary": label,
    }


def card_spec(recipe: dict) -> dict:
    rid = recipe["id"]
    adapters = sorted(recipe["adapters"])
    return {
        "recipe": recipe,
        "data_reports": {a: f"{data_dir(rid, a)}/data_report.json" for a in adapters},
        "train_summaries": {a: f"{adapter_dir(rid, a)}/train_summary.json" for a in adapters},
        "results": f"results/{rid}/eval/results.json",
        "merge_info": f"results/{rid}/model/merge_info.json",
        **_card_variants(recipe),
        "provenance": f"results/{rid}/provenance.json",
    }


def report_spec(recipe: dict) -> dict:
    """What ``report-assets`` reads: the card's artifacts plus the adapter dirs and the card."""
    rid = recipe["id"]
    return {**card_spec(recipe), "adapter_dirs": {a: adapter_dir(rid, a) for a in sorted(recipe["adapters"])},
            "card": f"results/{rid}/README.md"}


# ---------------------------------------------------------------- code inputs
PKG = Path(__file__).resolve().parent


def _files(*patterns: str) -> list[str]:
    return list(_globbed(patterns))


@lru_cache(maxsize=None)
def _globbed(patterns: tuple[str, ...]) -> tuple[str, ...]:
    """The package files matching ``patterns`` (cached: every job of the DAG asks for its stage's)."""
    out: set[str] = set()
    for pat in patterns:
        out.update(str(p) for p in PKG.glob(pat) if p.is_file() and "__pycache__" not in p.parts)
    return tuple(sorted(out))


@lru_cache(maxsize=None)
def files_under(root: str) -> tuple[str, ...]:
    """Every file below ``root``, sorted (cached for the life of the process: a mirror or fixture
    tree is listed once per Snakemake run, not once per job)."""
    return tuple(sorted(str(p) for p in Path(root).rglob("*") if p.is_file()))


def _template_files(recipe: dict | None, adapter: str | None) -> list[str]:
    """The adapter's template: the templates package and a built-in's ``.jinja`` file (a recipe's
    own template is in the stage's spec, a rule param)."""
    from . import templates

    return templates.code_files(recipe["adapters"][adapter]["template"] if recipe else None)


def code_inputs(stage: str, recipe: dict | None = None, name: str | None = None) -> list[str]:
    """The source files a stage's output depends on, as rule inputs.

    Snakemake then reruns a job when the code that made it changes (a template
    string, a reader, the card template) and only then: editing the card
    template reruns the card, never the training.
    """
    if stage == "twin":
        from . import bases

        return _files("twin.py", "bases/__init__.py") + [str(bases.path(recipe["base_model"]["id"]))]
    if stage == "download":
        return _files("download.py")
    if stage == "clean":
        from . import sources

        return sorted(set(_files("clean.py", "filters.py", "data/*.txt", "sources/__init__.py", "sources/_*.py",
                                 "base_tokenizer.py", "slow_tokenizer.py"))
                      | set(sources.code_files(recipe["sources"][name]["format"])))
    if stage == "mix":
        # filters.token_counter: token-length stats; the template: the fast-vs-slow comparison
        return _files("mix.py", "filters.py", "data/*.json", "base_tokenizer.py", "slow_tokenizer.py",
                      "tokenize.py") + _template_files(recipe, name)
    if stage == "misconception":
        return _files("misconception.py")
    if stage == "tokenize":
        return _files("dataset.py", "tokenize.py", "recipe.py", "base_tokenizer.py", "slow_tokenizer.py") + \
            _template_files(recipe, name) + [str(REPO / "schemas" / "recipe.schema.yaml")]
    if stage == "train":
        return _files("train.py", "launch.py", "recipe.py", "dataset.py", "base_tokenizer.py", "slow_tokenizer.py") + \
            _template_files(recipe, name) + [str(REPO / "schemas" / "recipe.schema.yaml")]  # train defaults
    if stage == "merge":
        return _files("merge.py")
    if stage == "evaluate":
        return _files("evaluate.py", "eval_tasks/**/*") + list(files_under(str(REPO / "fixtures" / "eval")))
    if stage == "provenance":
        if recipe is None:
            return _files("provenance.py")
        # the lock records the code of every upstream stage and the fixtures (see
        # provenance.py), so it is rewritten when any of them changes -- not the card's code
        from .provenance import stage_code_files

        files = set(stage_code_files(recipe))
        if recipe.get("hub_mirror"):
            mirror = repo_path(recipe["hub_mirror"])
            files.update(f for root in (mirror, REPO / "fixtures" / "eval") if root.is_dir()
                         for f in files_under(str(root)))
        return sorted(files)
    if stage == "report":
        return _files("card/report.py", "card/render.py")
    if stage == "card":
        return _files("card/*.py", "card/templates/*")
    raise ValueError(f"unknown stage {stage!r}")
