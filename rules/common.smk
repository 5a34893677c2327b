# Shared set-up: validate config and recipes, expose RECIPES and plan helpers.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

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

MIRROR = {rid: plan.repo_path(r["hub_mirror"]) for rid, r in RECIPES.items()}
# Fixed thread count per job: CPU results (and therefore artifact bytes) must not
# depend on how many cores a run was given.
THREADS = 1
ENV = (
    "export PYTHONHASHSEED=0 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false "
    "CUBLAS_WORKSPACE_CONFIG=:4096:8 HF_HUB_DISABLE_TELEMETRY=1; "
)


wildcard_constraints:
    recipe=r"[a-z0-9][a-z0-9.-]*",
    adapter=r"[a-z0-9_]+",
    source=r"[a-z0-9_]+",
    slug=r"[^/]+--[^/]+",


def R(wc):
    return RECIPES[wc.recipe]


def offline_env(wc):
    return "export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1; " if R(wc)["scale"] == "tiny" else ""
