# Base models: the recipe's real base, downloaded pinned -- from the Hub, a mirror, or (tiny
# scale) the mirror of its twin, a deterministic scaled-down copy built here in the real layout.


rule twin_base:
    input:
        texts=fixture_texts,
        code=twin_code,
    output:
        directory("resources/twins/{slug}"),
    params:
        spec=twin_spec,
    threads: THREADS
    resources:
        mem_mb=4000,
        runtime=30,
    container:
        container_for("base"),
    log:
        "logs/base/twin_{slug}.log",
    shell:
        "python -m reprotune twin --spec {params.spec:q} --texts {input.texts:q} --out {output} > {log} 2>&1"


rule download_base:
    input:
        mirror=base_mirror_inputs,
        code=plan.code_inputs("download"),
    output:
        directory("resources/base/{slug}"),
    params:
        spec=base_download_spec,
        mirror=base_mirror_arg,
    threads: THREADS
    resources:
        mem_mb=4000,
        runtime=600,
    container:
        container_for("download"),
    log:
        "logs/base/{slug}.log",
    shell:
        "python -m reprotune download --model --spec {params.spec:q} {params.mirror} --out {output} > {log} 2>&1"
