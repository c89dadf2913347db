import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")
from lpmnet.workflow.runner import run_job


def main(smk):
    from lpmnet.evaluation.curves import learning_curve

    w = smk.wildcards
    learning_curve(smk.input[0], smk.output[0], title=f"{w.method} over its training: {w.dataset} {w.pair}")


run_job(snakemake, main)
