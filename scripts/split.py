import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")
from lpmnet.workflow.runner import run_job


def main(smk):
    from lpmnet.workflow.splits import write_split_tsv

    write_split_tsv(smk.output[0], smk.params.split)


run_job(snakemake, main)
