# Per-recipe assets for `snakemake --report report.html`: data reports, loss curves,
# evaluation tables and the model card, each marked with report(...).


rule report_assets:
    input:
        card="results/{recipe}/README.md",
        data=data_dirs,
        adapters=adapter_dirs,
        results="results/{recipe}/eval/results.json",
        variant_results=variant_evals,
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
        spec=report_spec,
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
