# Per-recipe assets for `snakemake --report report.html`: data reports, loss curves,
# evaluation tables and the model card, each marked with report(...).


rule report_assets:
    input:
        card="results/{recipe}/README.md",
        data=lambda wc: [plan.data_dir(wc.recipe, a) for a in sorted(R(wc)["adapters"])],
        adapters=lambda wc: [plan.adapter_dir(wc.recipe, a) for a in sorted(R(wc)["adapters"])],
        results="results/{recipe}/eval/results.json",
        variant_results=lambda wc: [plan.variant_eval(wc.recipe, v) for v in plan.merge_variants(R(wc))],
        code=plan.code_inputs("report"),
    output:
        data=report("results/{recipe}/report/data.html", category="{recipe}", subcategory="1 data",
                    labels={"recipe": "{recipe}", "asset": "data reports"}),
        loss=report("results/{recipe}/report/loss.html", category="{recipe}", subcategory="2 training",
                    labels={"recipe": "{recipe}", "asset": "loss curves"}),
        eval=report("results/{recipe}/report/eval.html", category="{recipe}", subcategory="3 evaluation",
                    labels={"recipe": "{recipe}", "asset": "evaluation"}),
        card=report("results/{recipe}/report/card.html", category="{recipe}", subcategory="4 model card",
                    labels={"recipe": "{recipe}", "asset": "model card"}),
    params:
        spec=lambda wc: plan.dumps(plan.report_spec(R(wc))),
        out="results/{recipe}/report",
    threads: THREADS
    resources:
        mem_mb=1000,
        runtime=10,
    container:
        container_for("report"),
    log:
        "logs/{recipe}/report_assets.log",
    shell:
        "python -m reprotune report-assets --spec {params.spec:q} --out {params.out} > {log} 2>&1"
