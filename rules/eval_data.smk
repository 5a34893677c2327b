# Evaluation data: each lm-eval task's dataset files at a pinned revision (registry:
# src/reprotune/eval_tasks/registry/), fetched like a training source (same lock, sha256
# and mirror code: download.fetch_dataset). The evaluate rules read these dirs only.


rule download_eval_data:
    input:
        mirror=eval_mirror_files,
        code=plan.code_inputs("download"),
    output:
        directory("resources/eval/{recipe}/{task}"),
    wildcard_constraints:
        task=r"[a-z0-9_]+",
    params:
        spec=eval_data_spec,
        mirror=mirror_arg,
        pins=eval_data_pins,
    threads: THREADS
    resources:
        mem_mb=stage_resource("download", "mem_mb"),
        runtime=stage_resource("download", "runtime"),
    container:
        container_for("download"),
    log:
        "logs/{recipe}/download/eval-{task}.log",
    shell:
        "python -m reprotune download --spec {params.spec:q} {params.mirror} --out {output} > {log} 2>&1"
