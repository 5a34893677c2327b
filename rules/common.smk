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


# ---- input/param functions of the rule files
# used by rules/base.smk
def _base_spec(slug):
    # several recipes can share a base model; the first (sorted) recipe's lock file pins it
    rid = sorted(r for r, rec in RECIPES.items() if plan.base_dir(rec).endswith(slug))[0]
    lock = plan.lock_file(CFG["recipes_dir"], rid)
    return plan.base_download_spec(RECIPES[rid], lock, CFG.get("frozen", False))


# used by rules/data.smk
def _mirror_inputs(wc):
    """In mirror mode the mirror files are inputs, so an edited fixture reruns its source
    (its pins in SHA256SUMS are a param; the download verifies every file against them)."""
    mirror = MIRROR[wc.recipe]
    if mirror is None:
        return []
    repo = R(wc)["sources"][wc.source]["repo"]
    root = mirror / "datasets" / repo
    return sorted(str(p) for p in root.rglob("*") if p.is_file())


# used by rules/data.smk
def _lock_file(wc):
    return plan.lock_file(CFG["recipes_dir"], wc.recipe)


# used by rules/data.smk
def _mix_inputs(wc):
    return {s: plan.clean_dir(wc.recipe, s) for s in sorted(R(wc)["adapters"][wc.adapter]["data"]["mix"])}


# used by rules/data.smk
def _mix_pairs(wc):
    return " ".join(f"{s}={plan.clean_dir(wc.recipe, s)}" for s in sorted(R(wc)["adapters"][wc.adapter]["data"]["mix"]))


# used by rules/merge.smk
def _merge_adapters(wc):
    return {a: plan.adapter_dir(wc.recipe, a) for a in plan.merge_adapters(R(wc))}
