# Provenance lock and the rendered model card.


rule provenance:
    input:
        artifacts=lambda wc: list(plan.provenance_inputs(R(wc)).values()),
        code=lambda wc: plan.code_inputs("provenance", R(wc)),
    output:
        "results/{recipe}/provenance.json",
    params:
        spec=lambda wc: plan.dumps(plan.provenance_spec(R(wc), CFG["overlay"], IMAGES if _use_containers() else None)),
        pairs=lambda wc: " ".join(f"{k}={v}" for k, v in plan.provenance_inputs(R(wc)).items()),
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
        reports=lambda wc: [f"{plan.data_dir(wc.recipe, a)}" for a in sorted(R(wc)["adapters"])],
        adapters=lambda wc: [plan.adapter_dir(wc.recipe, a) for a in sorted(R(wc)["adapters"])],
        model="results/{recipe}/model",
        results="results/{recipe}/eval/results.json",
        variant_results=lambda wc: [plan.variant_eval(wc.recipe, v) for v in plan.merge_variants(R(wc))],
        variant_models=lambda wc: [plan.variant_model_dir(wc.recipe, v) for v in plan.merge_variants(R(wc))],
        provenance="results/{recipe}/provenance.json",
        code=plan.code_inputs("card"),
    output:
        card="results/{recipe}/README.md",
        adapter_cards=directory("results/{recipe}/adapter_cards"),
    params:
        spec=lambda wc: plan.dumps(plan.card_spec(R(wc))),
        adapter_readmes=lambda wc: " ".join(
            f"{a}=results/{wc.recipe}/adapter_cards/{a}.md"
            for a in sorted(R(wc)["adapters"])
            if R(wc)["adapters"][a]["train"]["method"] != "full"
        ),
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
