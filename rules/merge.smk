# Merge: adapters into the base (plain, QLoRA dequantize-then-merge, combination), or copy full weights.


rule merge:
    input:
        unpack(merge_adapters),
        base=base_model_dir,
        code=plan.code_inputs("merge"),
    output:
        directory("results/{recipe}/model"),
    params:
        spec=merge_spec,
        pairs=merge_pairs,
        offline=offline_env,
    threads: THREADS
    resources:
        gpu=stage_resource("merge", "gpu"),
        mem_mb=stage_resource("merge", "mem_mb"),
        runtime=stage_resource("merge", "runtime"),
    container:
        container_for("merge"),
    log:
        "logs/{recipe}/merge.log",
    shell:
        "{params.offline}"
        "python -m reprotune merge --spec {params.spec:q} --base {input.base} --adapter {params.pairs} "
        "--out {output} > {log} 2>&1"


# A second merge method the card compares (recipe `merge.compare`), from the same adapter(s):
# the merge rule with its own method (params.spec; the other params are kept), output and log.
use rule merge as merge_variant with:
    output:
        directory("results/{recipe}/models/{variant}"),
    wildcard_constraints:
        variant="plain|qlora_dequant",
    params:
        spec=merge_variant_spec,
    log:
        "logs/{recipe}/merge_{variant}.log",
