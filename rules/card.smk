# Provenance lock and the rendered model card.


rule provenance:
    input:
        artifacts=provenance_artifacts,
        code=provenance_code,
    output:
        "results/{recipe}/provenance.json",
    params:
        spec=provenance_spec,
        pairs=provenance_pairs,
    threads: THREADS
    resources:
        mem_mb=2000,
        runtime=30,
    container:
        container_for("card"),
    log:
        "logs/{recipe}/provenance.log",
    shell:
        "python -m reprotune provenance --spec {params.spec:q} --input {params.pairs} --out {output} > {log} 2>&1"


rule card:
    input:
        reports=data_dirs,
        adapters=adapter_dirs,
        model="results/{recipe}/model",
        results="results/{recipe}/eval/results.json",
        variant_results=variant_evals,
        variant_models=variant_models,
        provenance="results/{recipe}/provenance.json",
        code=plan.code_inputs("card"),
    output:
        card="results/{recipe}/README.md",
        adapter_cards=directory("results/{recipe}/adapter_cards"),
    params:
        spec=card_spec,
        adapter_readmes=adapter_readmes,
    threads: THREADS
    resources:
        mem_mb=1000,
        runtime=10,
    container:
        container_for("card"),
    log:
        "logs/{recipe}/card.log",
    shell:
        "mkdir -p {output.adapter_cards} && python -m reprotune card --spec {params.spec:q} --out {output.card} "
        "--adapter-readme {params.adapter_readmes} > {log} 2>&1"
