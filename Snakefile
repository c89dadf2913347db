# LPM-Net 3D multimodal image fusion: raw data -> registration -> training -> fusion -> metrics -> report.
# Configuration: config/config.yaml (the manual). Run: snakemake --cores all
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "rules/common.smk"


report: "report/workflow.rst"


rule all:
    input:
        all_targets,
    default_target: True


# The shipped pretrained models: `make pretrained` (config/pretrained.yaml, rules/pretrained.smk).
rule pretrained:
    input:
        expand(paths.pretrained_model(), kind=PRETRAINED_MODELS),
        paths.model_card(),


include: "rules/sources.smk"
include: "rules/data.smk"
include: "rules/preprocess.smk"
include: "rules/model.smk"
include: "rules/evaluate.smk"
include: "rules/pretrained.smk"
