# Merge: adapters into the base (plain, QLoRA dequantize-then-merge, combination), or copy full weights.


rule merge:
    input:
        unpack(_merge_adapters),
        base=lambda wc: plan.base_dir(R(wc)),
        code=plan.code_inputs("merge"),
    output:
        directory("results/{recipe}/model"),
    params:
        spec=lambda wc: plan.dumps(plan.merge_spec(R(wc))),
        pairs=lambda wc: " ".join(f"{a}={plan.adapter_dir(wc.recipe, a)}" for a in plan.merge_adapters(R(wc))),
        offline=offline_env,
    threads: THREADS
    resources:
        gpu=lambda wc: plan.resources_for("merge", R(wc))["gpu"],
        mem_mb=lambda wc: plan.resources_for("merge", R(wc))["mem_mb"],
        runtime=lambda wc: plan.resources_for("merge", R(wc))["runtime"],
    container:
        container_for("merge"),
    log:
        "logs/{recipe}/merge.log",
    shell:
        "{params.offline}"
        "python -m reprotune merge --spec {params.spec:q} --base {input.base} --adapter {params.pairs} "
        "--out {output} > {log} 2>&1"


# A second merge method the card compares (recipe `merge.compare`), from the same adapter(s).
rule merge_variant:
    input:
        unpack(_merge_adapters),
        base=lambda wc: plan.base_dir(R(wc)),
        code=plan.code_inputs("merge"),
    output:
        directory("results/{recipe}/models/{variant}"),
    wildcard_constraints:
        variant="plain|qlora_dequant",
    params:
        spec=lambda wc: plan.dumps(plan.merge_variant_spec(R(wc), wc.variant)),
        pairs=lambda wc: " ".join(f"{a}={plan.adapter_dir(wc.recipe, a)}" for a in plan.merge_adapters(R(wc))),
        offline=offline_env,
    threads: THREADS
    resources:
        gpu=lambda wc: plan.resources_for("merge", R(wc))["gpu"],
        mem_mb=lambda wc: plan.resources_for("merge", R(wc))["mem_mb"],
        runtime=lambda wc: plan.resources_for("merge", R(wc))["runtime"],
    container:
        container_for("merge"),
    log:
        "logs/{recipe}/merge_{variant}.log",
    shell:
        "{params.offline}"
        "python -m reprotune merge --spec {params.spec:q} --base {input.base} --adapter {params.pairs} "
        "--out {output} > {log} 2>&1"
