# Evaluation with lm-evaluation-harness: the recipe's tasks (a leaderboard suite or its own
# list) on their pinned, downloaded datasets (rules/eval_data.smk), offline at every scale.


rule evaluate:
    input:
        model="results/{recipe}/model",
        data=eval_data_dirs,
        code=plan.code_inputs("evaluate"),
    output:
        results="results/{recipe}/eval/results.json",
        summary="results/{recipe}/eval/summary.json",
    params:
        spec=eval_spec,
        data=eval_data_args,
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
        "export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1; "
        "python -m reprotune evaluate --spec {params.spec:q} --model {input.model} --out {output.results} "
        "--eval-data {params.data} --runinfo {params.runinfo} > {log} 2>&1"


# The evaluation of a compared merge variant (rules/merge.smk `merge_variant`): the evaluate
# rule on results/<id>/models/<variant>, with its own outputs, run info and log.
use rule evaluate as evaluate_variant with:
    input:
        model="results/{recipe}/models/{variant}",
        data=eval_data_dirs,
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
