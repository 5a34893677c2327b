# reprotune: rebuild published fine-tunes from recipes.
#   snakemake --cores all                      # embedded default: all seed recipes, tiny, offline, CPU
#   snakemake -n --cores all --config overlay=null                          # plan the full-scale build
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/base.smk"
include: "rules/data.smk"
include: "rules/eval_data.smk"
include: "rules/tokenize.smk"
include: "rules/train.smk"
include: "rules/merge.smk"
include: "rules/evaluate.smk"
include: "rules/card.smk"
include: "rules/report.smk"
include: "rules/verify.smk"


rule all:
    input:
        [t for rid in RECIPES for t in plan.final_targets(rid)],
        # the optional misconception generator runs only when the config configures it
        ["resources/generated/misconception"] if CFG.get("misconception_generator") else [],
    default_target: True
