import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")
from lpmnet.workflow.runner import run_job


def main(smk):
    from lpmnet.workflow.derivatives import write_derivatives_description

    write_derivatives_description(smk.output.description, smk.output.bidsignore, smk.params.description,
                                  smk.params.ignore)


run_job(snakemake, main)
