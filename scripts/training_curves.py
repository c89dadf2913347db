import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")
from lpmnet.workflow.runner import run_job


def main(smk):
    from lpmnet.evaluation.curves import training_curves

    w = smk.wildcards
    training_curves(smk.input[0], smk.output[0], title=f"LPM-Net training: {w.dataset} {w.pair}")


run_job(snakemake, main)
