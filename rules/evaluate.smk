# Evaluation with lm-evaluation-harness (leaderboard v1 suite, or its tiny local twin).


rule evaluate:
    input:
        model="results/{recipe}/model",
        code=plan.code_inputs("evaluate"),
    output:
        results="results/{recipe}/eval/results.json",
        summary="results/{recipe}/eval/summary.json",
    params:
        spec=eval_spec,
        offline=offline_env,
        runinfo="logs/{recipe}/evaluate.runinfo.json",
    threads: THREADS
    resources:
        gpu=stage_resource("evaluate", "gpu"),
        mem_mb=stage_resource("evaluate", "mem_mb"),
        runtime=stage_resource("evaluate", "runtime"),
    container:
        container_for("evaluate"),
    log:
        "logs/{recipe}/evaluate.log",
    shell:
        "{params.offline}"
        "python -m reprotune evaluate --spec {params.spec:q} --model {input.model} --out {output.results} "
        "--runinfo {params.runinfo} > {log} 2>&1"


# The evaluation of a compared merge variant (rules/merge.smk `merge_variant`): the evaluate
# rule on results/<id>/models/<variant>, with its own outputs, run info and log.
use rule evaluate as evaluate_variant with:
    input:
        model="results/{recipe}/models/{variant}",
        code=plan.code_inputs("evaluate"),
    output:
        results="results/{recipe}/eval/{variant}/results.json",
        summary="results/{recipe}/eval/{variant}/summary.json",
    wildcard_constraints:
        variant="plain|qlora_dequant",
    params:
        runinfo="logs/{recipe}/evaluate_{variant}.runinfo.json",
    log:
        "logs/{recipe}/evaluate_{variant}.log",
