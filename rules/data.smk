# Data: download pinned source files, clean each source, mix per adapter.


rule download_source:
    input:
        mirror=mirror_files,
        code=plan.code_inputs("download"),
    output:
        directory("resources/sources/{recipe}/{source}"),
    params:
        spec=download_spec,
        mirror=mirror_arg,
        pins=mirror_pins,
    threads: THREADS
    resources:
        mem_mb=stage_resource("download", "mem_mb"),
        runtime=stage_resource("download", "runtime"),
    container:
        container_for("download"),
    log:
        "logs/{recipe}/download/{source}.log",
    shell:
        "python -m reprotune download --spec {params.spec:q} {params.mirror} --out {output} > {log} 2>&1"


rule clean_source:
    input:
        files="resources/sources/{recipe}/{source}",
        code=clean_code,
        # only when a filter counts tokens with the base tokenizer (`tokenizer: base`)
        tokenizer=clean_tokenizer,
    output:
        directory("results/{recipe}/clean/{source}"),
    params:
        spec=clean_spec,
    threads: THREADS
    resources:
        mem_mb=stage_resource("clean", "mem_mb"),
        runtime=stage_resource("clean", "runtime"),
    container:
        container_for("clean"),
    log:
        "logs/{recipe}/clean/{source}.log",
    shell:
        "python -m reprotune clean --spec {params.spec:q} --input {input.files} --out {output} > {log} 2>&1"


rule mix:
    input:
        unpack(mix_inputs),
        code=mix_code,
        tokenizer=base_model_dir,  # token-length stats in data_report.json
    output:
        directory("results/{recipe}/data/{adapter}"),
    params:
        spec=mix_spec,
        pairs=mix_pairs,
    threads: THREADS
    resources:
        mem_mb=stage_resource("mix", "mem_mb"),
        runtime=stage_resource("mix", "runtime"),
    container:
        container_for("mix"),
    log:
        "logs/{recipe}/mix/{adapter}.log",
    shell:
        "python -m reprotune mix --spec {params.spec:q} --clean {params.pairs} --tokenizer {input.tokenizer} --out {output} > {log} 2>&1"


# Optional: airoboros-style misconception pairs from an OpenAI-compatible endpoint.
# Defined only when the config asks (`misconception_generator: {endpoint, model, n, seed}`);
# the default build never runs it. Target: resources/generated/misconception
# (instructions.jsonl in the airoboros schema + report.json). The API key stays in the
# environment variable named by `api_key_env` (never in params, logs or outputs).
if CFG.get("misconception_generator"):

    rule generate_misconceptions:
        input:
            code=plan.code_inputs("misconception"),
        output:
            directory("resources/generated/misconception"),
        params:
            spec=plan.dumps(plan.misconception_spec(CFG)),
        threads: 1
        resources:
            mem_mb=1000,
            runtime=120,
        container:
            container_for(),
        log:
            "logs/generated/misconception.log",
        shell:
            "python -m reprotune generate-misconceptions --spec {params.spec:q} --out {output} > {log} 2>&1"
