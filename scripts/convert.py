import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")
from lpmnet.workflow.runner import run_job


def main(smk):
    from lpmnet.workflow.checks import convert_source

    p = smk.params
    convert_source(p.kind, p.source, p.problem, smk.output[0])


run_job(snakemake, main)
