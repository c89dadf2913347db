import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")
from lpmnet.workflow.runner import run_job


def main(smk):
    from lpmnet.methods.classical import fuse_classical_files

    fuse_classical_files(smk.wildcards.method, smk.input.x1, smk.input.x2, smk.output.fused, normalize=False)


run_job(snakemake, main)
