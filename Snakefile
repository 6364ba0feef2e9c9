# posttrain: the post-training DAG for Snakemake.
#   snakemake --cores 2                                            the CPU demo
#   snakemake --cores 2 --configfile recipes/qwen3-30b-a3b.yaml    a recipe overlay
#   snakemake -n                                                   validate params, show the plan
# The rules come from the same stage table as dvc.yaml (src/posttrain/dag/).

configfile: "params.yaml"


include: "rules/common.smk"


rule all:
    input:
        TARGETS,
    default_target: True


include: "rules/pipeline.smk"
