# reprotune: rebuild published fine-tunes from recipes.
#   snakemake --cores all                      # embedded default: all seed recipes, tiny, offline, CPU
#   snakemake --cores all --config overlay=null --profile profiles/slurm   # full scale
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/base.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/merge.smk"
include: "rules/evaluate.smk"
include: "rules/card.smk"


rule all:
    input:
        [t for rid in RECIPES for t in plan.final_targets(rid)],
    default_target: True
