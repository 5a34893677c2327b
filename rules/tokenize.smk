# Tokenize: each adapter's mixed rows encoded once (template, assistant-only labels, truncation,
# packing) into a memory-mapped Arrow dataset, in a CPU job with its own threads; every training
# process then reads the same files and none of them tokenizes. The output does not depend on
# the thread count (fixed chunks, joined in order).


rule tokenize:
    input:
        data="results/{recipe}/data/{adapter}",
        base=base_model_dir,
        code=tokenize_code,
    output:
        directory("results/{recipe}/tokens/{adapter}"),
    params:
        spec=tokenize_spec,
    threads: stage_threads("tokenize")
    resources:
        mem_mb=stage_resource("tokenize", "mem_mb"),
        runtime=stage_resource("tokenize", "runtime"),
    container:
        container_for("tokenize"),
    log:
        "logs/{recipe}/tokenize/{adapter}.log",
    shell:
        "python -m reprotune tokenize --spec {params.spec:q} --data {input.data} --base {input.base} "
        "--out {output} --threads {threads} > {log} 2>&1"
