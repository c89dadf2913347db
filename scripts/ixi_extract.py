import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")
from lpmnet.workflow.runner import run_job


def main(smk):
    from lpmnet.volumes.sources import extract_tar

    extract_tar(smk.input[0], smk.output[0])


run_job(snakemake, main)
