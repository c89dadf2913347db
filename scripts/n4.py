import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")
from lpmnet.workflow.runner import run_job


def main(smk):
    from lpmnet.volumes.registration import n4_bias_correct
    from lpmnet.workflow.derivatives import write_job_sidecar

    n4_bias_correct(smk.input[0], smk.output[0], threads=smk.threads, seed=smk.params.seed)
    write_job_sidecar(smk.output[0], smk.params.bids, "N4 bias-field corrected (ANTs, automatic head mask)",
                      [smk.input[0]])


run_job(snakemake, main)
