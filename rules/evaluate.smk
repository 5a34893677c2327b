# Evaluation with lm-evaluation-harness (leaderboard v1 suite, or its tiny local twin).


rule evaluate:
    input:
        model="results/{recipe}/model",
        code=plan.code_inputs("evaluate"),
    output:
        results="results/{recipe}/eval/results.json",
        summary="results/{recipe}/eval/summary.json",
    params:
        spec=lambda wc: plan.dumps(plan.eval_spec(R(wc))),
        offline=offline_env,
        runinfo="logs/{recipe}/evaluate.runinfo.json",
    threads: THREADS
    resources:
        gpu=lambda wc: plan.resources_for("evaluate", R(wc))["gpu"],
        mem_mb=lambda wc: plan.resources_for("evaluate", R(wc))["mem_mb"],
        runtime=lambda wc: plan.resources_for("evaluate", R(wc))["runtime"],
    container:
        container_for("evaluate"),
    log:
        "logs/{recipe}/evaluate.log",
    shell:
        "{params.offline}"
        "python -m reprotune evaluate --spec {params.spec:q} --model {input.model} --out {output.results} "
        "--runinfo {params.runinfo} > {log} 2>&1"


rule evaluate_variant:
    input:
        model="results/{recipe}/models/{variant}",
        code=plan.code_inputs("evaluate"),
    output:
        results="results/{recipe}/eval/{variant}/results.json",
        summary="results/{recipe}/eval/{variant}/summary.json",
    wildcard_constraints:
        variant="plain|qlora_dequant",
    params:
        spec=lambda wc: plan.dumps(plan.eval_spec(R(wc))),
        offline=offline_env,
        runinfo="logs/{recipe}/evaluate_{variant}.runinfo.json",
    threads: THREADS
    resources:
        gpu=lambda wc: plan.resources_for("evaluate", R(wc))["gpu"],
        mem_mb=lambda wc: plan.resources_for("evaluate", R(wc))["mem_mb"],
        runtime=lambda wc: plan.resources_for("evaluate", R(wc))["runtime"],
    container:
        container_for("evaluate"),
    log:
        "logs/{recipe}/evaluate_{variant}.log",
    shell:
        "{params.offline}"
        "python -m reprotune evaluate --spec {params.spec:q} --model {input.model} --out {output.results} "
        "--runinfo {params.runinfo} > {log} 2>&1"
