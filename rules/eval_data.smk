# Evaluation data: each lm-eval task's dataset files at a pinned revision (registry:
# src/reprotune/eval_tasks/registry/), fetched like a training source (same lock, sha256
# and mirror code: download.fetch_dataset). The evaluate rules read these dirs only.


def _eval_data_repo_files(wc):
    """Mirror mode: the task's mirror files are inputs (an edited fixture reruns the download;
    its SHA256SUMS lines are a param and every file is verified against them)."""
    mirror = MIRROR[wc.recipe]
    if mirror is None:
        return []
    root = mirror / "datasets" / plan.eval_download_spec(R(wc), wc.task)["repo"]
    return sorted(str(p) for p in root.rglob("*") if p.is_file())


def _eval_data_spec(wc):
    lock = plan.lock_file(CFG["recipes_dir"], wc.recipe)
    return plan.dumps(plan.eval_download_spec(R(wc), wc.task, lock, CFG.get("frozen", False)))


def _eval_data_pins(wc):
    return plan.dumps(plan.repo_pins(R(wc), plan.eval_download_spec(R(wc), wc.task)["repo"]))


rule download_eval_data:
    input:
        mirror=_eval_data_repo_files,
        code=plan.code_inputs("download"),
    output:
        directory("resources/eval/{recipe}/{task}"),
    wildcard_constraints:
        task=r"[a-z0-9_]+",
    params:
        spec=_eval_data_spec,
        mirror=lambda wc: f"--mirror {MIRROR[wc.recipe]}" if MIRROR[wc.recipe] else "",
        pins=_eval_data_pins,
    threads: THREADS
    resources:
        mem_mb=lambda wc: plan.resources_for("download", R(wc))["mem_mb"],
        runtime=lambda wc: plan.resources_for("download", R(wc))["runtime"],
    container:
        container_for("download"),
    log:
        "logs/{recipe}/download/eval-{task}.log",
    shell:
        "python -m reprotune download --spec {params.spec:q} {params.mirror} --out {output} > {log} 2>&1"


# used by rules/evaluate.smk: the eval data dirs as inputs and as `--eval-data TASK=DIR` args
def _eval_data_inputs(wc):
    return list(plan.eval_data_dirs(R(wc)).values())


def _eval_data_args(wc):
    return " ".join(f"{t}={d}" for t, d in plan.eval_data_dirs(R(wc)).items())
