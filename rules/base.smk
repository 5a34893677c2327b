# Base models: built locally (tiny scale) or downloaded pinned (full scale).


rule tiny_base:
    input:
        texts=fixture_texts,
        code=plan.code_inputs("tiny_base"),
    output:
        directory("resources/base/tiny"),
    params:
        spec=tiny_base_spec,
    threads: THREADS
    resources:
        mem_mb=2000,
        runtime=10,
    container:
        container_for("base"),
    log:
        "logs/base/tiny_base.log",
    shell:
        "python -m reprotune tiny-base --spec {params.spec:q} --texts {input.texts:q} --out {output} > {log} 2>&1"


rule download_base:
    input:
        code=plan.code_inputs("download"),
    output:
        directory("resources/base/{slug}"),
    params:
        spec=base_download_spec,
    threads: THREADS
    resources:
        mem_mb=4000,
        runtime=600,
    container:
        container_for("download"),
    log:
        "logs/base/{slug}.log",
    shell:
        "python -m reprotune download --model --spec {params.spec:q} --out {output} > {log} 2>&1"
