import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")
from lpmnet.workflow.runner import run_job


def main(smk):
    from lpmnet.volumes.registration import n4_bias_correct

    n4_bias_correct(smk.input[0], smk.output[0], threads=smk.threads, seed=smk.params.seed)


run_job(snakemake, main)
