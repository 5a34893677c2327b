# Reproducibility check (not part of `all`): `snakemake --cores 2 verify` builds the
# configured recipes twice from scratch in two temp roots and compares the sha256 of
# every file under results/ (src/reprotune/verify.py; `make verify` runs the same CLI).
# The nested builds run in their own --directory roots (the repository's Snakefile and
# config.yaml, this run's recipe list), so they never touch or lock this working
# directory. A rule without outputs runs every time it is named as the target.


rule verify:
    params:
        recipes=" ".join(CFG["recipes"]),
    threads: all_cores
    container:
        container_for(),
    log:
        "logs/verify.log",
    shell:
        "python -m reprotune verify --recipes {params.recipes} --cores {threads} --report {log}"
