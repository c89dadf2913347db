import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")
from lpmnet.workflow import run_job


def main(smk):
    from lpmnet.tables import write_tables

    write_tables(smk.input, smk.output.long, smk.output.summary, smk.output.html)


run_job(snakemake, main)
