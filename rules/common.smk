# Shared set-up: validate config and recipes, expose RECIPES and plan helpers.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from reprotune import images as IMG
from reprotune import plan
from reprotune.recipe import RecipeError, load_config, load_recipe


def _load_all(cfg_raw):
    cfg = load_config(cfg_raw, "config")
    rdir = plan.repo_path(cfg["recipes_dir"])
    overlay = plan.repo_path(cfg["overlay"]) if cfg["overlay"] else None
    return cfg, {rid: load_recipe(rdir / f"{rid}.yaml", overlay) for rid in cfg["recipes"]}


try:
    CFG, RECIPES = _load_all(config)
except RecipeError as e:
    # one clear line, no traceback
    print(f"reprotune: error: {e}", file=sys.stderr)
    sys.exit(2)

def _use_containers():
    from snakemake.settings.types import DeploymentMethod

    return DeploymentMethod.APPTAINER in workflow.deployment_settings.deployment_method


IMAGES_LOCK = plan.repo_path(CFG["images_lock"])
try:
    IMAGES = IMG.load(IMAGES_LOCK)
    if _use_containers():
        IMG.require_built(
            IMAGES,
            {IMG.image_for(s, r) for r in RECIPES.values() for s in ("data",) + IMG.GPU_STAGES},
            IMAGES_LOCK,
        )
except IMG.ImagesError as e:
    print(f"reprotune: error: {e}", file=sys.stderr)
    sys.exit(2)

# Inside a container the rules import reprotune from this workflow's src/ (the images hold
# the dependencies only). Apptainer mounts the working directory; a workflow that lives
# elsewhere (`--directory` builds) is bound in as well.
SRC = str(Path(workflow.basedir).resolve() / "src")
if _use_containers() and not Path(workflow.basedir).resolve().is_relative_to(Path.cwd().resolve()):
    workflow.deployment_settings.apptainer_args += f" --bind {Path(workflow.basedir).resolve()}"


def container_for(stage=None):
    """The rule's `container:`: the image of docker/images.lock that runs this stage of the
    recipe (CPU for data and tiny builds, CUDA for full-scale train/merge/evaluate)."""

    def _url(wc):
        rid = getattr(wc, "recipe", None)
        name = IMG.image_for(stage, RECIPES[rid]) if (stage and rid) else "cpu"
        return IMG.url(IMAGES, name)

    return _url


MIRROR = {rid: plan.repo_path(r["hub_mirror"]) for rid, r in RECIPES.items()}
# Fixed thread count per job: CPU results (and therefore artifact bytes) must not
# depend on how many cores a run was given.
THREADS = 1
ENV = (
    f"export PYTHONPATH={SRC} REPROTUNE_RUNTIME_LOG=1 "
    "PYTHONHASHSEED=0 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false "
    "CUBLAS_WORKSPACE_CONFIG=:4096:8 HF_HUB_DISABLE_TELEMETRY=1; "
)
# every shell rule starts with it (inside the container when one is used)
shell.prefix(f"set -euo pipefail; {ENV}")


wildcard_constraints:
    recipe=r"[a-z0-9][a-z0-9.-]*",
    adapter=r"[a-z0-9_]+",
    source=r"[a-z0-9_]+",
    slug=r"[^/]+--[^/]+",


def R(wc):
    return RECIPES[wc.recipe]


def offline_env(wc):
    return "export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1; " if R(wc)["scale"] == "tiny" else ""


# ---- input, param and resource functions of the rules (rules/*.smk), by rule file.
# Named, never inline lambdas (tests/test_workflow.py checks): one function per purpose,
# shared where rules need the same thing.
def _pairs(paths):
    """`name=path ...`: how the CLI takes a set of named inputs."""
    return " ".join(f"{k}={v}" for k, v in paths.items())


def stage_threads(stage):
    """A `threads:` function: plan.threads_for the job's recipe. The tokenize stage's output does
    not depend on its process count (tests/test_dataset.py), so it may use several cores
    (Snakemake lowers it to --cores where that is less; SLURM gets it as --cpus-per-task)."""

    def job_threads(wildcards):
        return plan.threads_for(stage, R(wildcards))

    return job_threads


def stage_resource(stage, key):
    """A `resources:` function: `key` (gpu, mem_mb, runtime) of plan.resources_for for the
    job's recipe (and adapter, for training)."""

    def job_resource(wildcards):
        adapter = wildcards.adapter if stage == "train" else None
        return plan.resources_for(stage, R(wildcards), adapter)[key]

    return job_resource


def base_model_dir(wildcards):
    """The recipe's base model (downloaded, or its twin downloaded from the twin's mirror)."""
    return plan.base_dir(R(wildcards))


# base.smk
def _base_recipe(slug):
    """Several recipes can share a base model: the first (sorted) recipe using it speaks for it
    (its lock file pins the download)."""
    return RECIPES[sorted(r for r, rec in RECIPES.items() if plan.model_slug(rec["base_model"]["id"]) == slug)[0]]


def fixture_texts(wildcards):
    """Every file of the fixture mirror: a twin's tokenizer and pre-training read their text."""
    return list(plan.files_under(str(Path(workflow.basedir) / "fixtures" / "hub")))


def twin_code(wildcards):
    return plan.code_inputs("twin", _base_recipe(wildcards.slug))


def twin_spec(wildcards):
    return plan.dumps(plan.twin_spec(_base_recipe(wildcards.slug)))


def base_download_spec(wildcards):
    recipe = _base_recipe(wildcards.slug)
    lock = plan.lock_file(CFG["recipes_dir"], recipe["id"])
    return plan.dumps(plan.base_download_spec(recipe, lock, CFG.get("frozen", False)))


def base_mirror_inputs(wildcards):
    """The twin (built by twin_base) when the base is a twin: its files are the download's source."""
    recipe = _base_recipe(wildcards.slug)
    return [plan.twin_dir(recipe)] if plan.uses_twin(recipe) else []


def base_mirror_arg(wildcards):
    mirror = plan.base_mirror(_base_recipe(wildcards.slug))
    return f"--mirror {mirror}" if mirror else ""


# data.smk
def _mirror_repo_files(wildcards, repo):
    """In mirror mode a dataset repo's mirror files are inputs, so an edited fixture reruns its
    download (its pins in SHA256SUMS are a param; the download verifies every file against them)."""
    mirror = MIRROR[wildcards.recipe]
    if mirror is None:
        return []
    return list(plan.files_under(str(mirror / "datasets" / repo)))


def mirror_files(wildcards):
    return _mirror_repo_files(wildcards, R(wildcards)["sources"][wildcards.source]["repo"])


def download_spec(wildcards):
    lock = plan.lock_file(CFG["recipes_dir"], wildcards.recipe)
    return plan.dumps(plan.download_spec(R(wildcards), wildcards.source, lock, CFG.get("frozen", False)))


def mirror_arg(wildcards):
    mirror = MIRROR[wildcards.recipe]
    return f"--mirror {mirror}" if mirror else ""


def mirror_pins(wildcards):
    return plan.dumps(plan.mirror_pins(R(wildcards), wildcards.source))


def clean_code(wildcards):
    return plan.code_inputs("clean", R(wildcards), wildcards.source)


def clean_tokenizer(wildcards):
    """The base tokenizer, only when a filter of the source counts tokens with it (`tokenizer: base`)."""
    return [plan.base_dir(R(wildcards))] if plan.uses_base_tokenizer(R(wildcards), wildcards.source) else []


def clean_spec(wildcards):
    return plan.dumps(plan.clean_spec(R(wildcards), wildcards.source))


def mix_inputs(wildcards):
    """The cleaned sources the adapter's mix draws from, named by source."""
    mix = R(wildcards)["adapters"][wildcards.adapter]["data"]["mix"]
    return {s: plan.clean_dir(wildcards.recipe, s) for s in sorted(mix)}


def mix_pairs(wildcards):
    return _pairs(mix_inputs(wildcards))


def mix_code(wildcards):
    """mix.py and what data_report.json's counts use: the base tokenizer code and the adapter's template."""
    return plan.code_inputs("mix", R(wildcards), wildcards.adapter)


def mix_spec(wildcards):
    return plan.dumps(plan.mix_spec(R(wildcards), wildcards.adapter))


# eval_data.smk
def _eval_repo(wildcards):
    return plan.eval_download_spec(R(wildcards), wildcards.task)["repo"]


def eval_mirror_files(wildcards):
    return _mirror_repo_files(wildcards, _eval_repo(wildcards))


def eval_data_spec(wildcards):
    lock = plan.lock_file(CFG["recipes_dir"], wildcards.recipe)
    return plan.dumps(plan.eval_download_spec(R(wildcards), wildcards.task, lock, CFG.get("frozen", False)))


def eval_data_pins(wildcards):
    return plan.dumps(plan.repo_pins(R(wildcards), _eval_repo(wildcards)))


# tokenize.smk
def tokenize_code(wildcards):
    return plan.code_inputs("tokenize", R(wildcards), wildcards.adapter)


def tokenize_spec(wildcards):
    return plan.dumps(plan.tokenize_spec(R(wildcards), wildcards.adapter))


# train.smk
def train_code(wildcards):
    return plan.code_inputs("train", R(wildcards), wildcards.adapter)


def train_spec(wildcards):
    return plan.dumps(plan.train_spec(R(wildcards), wildcards.adapter))


def launch_args(wildcards):
    """`accelerate launch` arguments: CPU, one GPU, DDP or DeepSpeed ZeRO for this adapter."""
    return plan.accelerate_args(R(wildcards), wildcards.adapter, CFG["accelerate_config"])


# merge.smk
def merge_adapters(wildcards):
    """The adapters the merge applies, named by adapter."""
    return {a: plan.adapter_dir(wildcards.recipe, a) for a in plan.merge_adapters(R(wildcards))}


def merge_pairs(wildcards):
    return _pairs(merge_adapters(wildcards))


def merge_spec(wildcards):
    return plan.dumps(plan.merge_spec(R(wildcards)))


def merge_variant_spec(wildcards):
    return plan.dumps(plan.merge_variant_spec(R(wildcards), wildcards.variant))


# evaluate.smk
def eval_spec(wildcards):
    return plan.dumps(plan.eval_spec(R(wildcards)))


def eval_data_dirs(wildcards):
    """Every eval task's downloaded dataset: evaluate reads these only (offline at every scale)."""
    return list(plan.eval_data_dirs(R(wildcards)).values())


def eval_data_args(wildcards):
    return _pairs(plan.eval_data_dirs(R(wildcards)))


# card.smk and report.smk
def provenance_artifacts(wildcards):
    return list(plan.provenance_inputs(R(wildcards)).values())


def provenance_code(wildcards):
    return plan.code_inputs("provenance", R(wildcards))


def provenance_spec(wildcards):
    images = IMAGES if _use_containers() else None
    return plan.dumps(plan.provenance_spec(R(wildcards), CFG["overlay"], images))


def provenance_pairs(wildcards):
    return _pairs(plan.provenance_inputs(R(wildcards)))


def data_dirs(wildcards):
    return [plan.data_dir(wildcards.recipe, a) for a in sorted(R(wildcards)["adapters"])]


def adapter_dirs(wildcards):
    return [plan.adapter_dir(wildcards.recipe, a) for a in sorted(R(wildcards)["adapters"])]


def variant_evals(wildcards):
    return [plan.variant_eval(wildcards.recipe, v) for v in plan.merge_variants(R(wildcards))]


def variant_models(wildcards):
    return [plan.variant_model_dir(wildcards.recipe, v) for v in plan.merge_variants(R(wildcards))]


def card_spec(wildcards):
    return plan.dumps(plan.card_spec(R(wildcards)))


def adapter_readmes(wildcards):
    """`adapter=path` of the README written for each adapter that is published alone (not full weights)."""
    adapters = R(wildcards)["adapters"]
    return " ".join(
        f"{a}=results/{wildcards.recipe}/adapter_cards/{a}.md"
        for a in sorted(adapters)
        if adapters[a]["train"]["method"] != "full"
    )


def report_spec(wildcards):
    return plan.dumps(plan.report_spec(R(wildcards)))


# verify.smk
def all_cores(wildcards):
    """The verify rule's nested builds get every core this run was given (--cores)."""
    return workflow.cores
