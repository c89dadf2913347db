import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")
from lpmnet.workflow.runner import run_job


def main(smk):
    from lpmnet.workflow.checks import read_input_status, write_input_status

    write_input_status(smk.output[0], [row for path in smk.input for row in read_input_status(path)])


run_job(snakemake, main)
