import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")
from lpmnet.workflow.runner import run_job


def main(smk):
    from lpmnet.methods.classical import fuse_classical_files
    from lpmnet.workflow.derivatives import add_job_derivative_fields

    fuse_classical_files(smk.wildcards.method, smk.input.x1, smk.input.x2, smk.output.fused, normalize=False)
    add_job_derivative_fields(smk.output.fused, smk.params.bids, [smk.input.x1, smk.input.x2], smk.params.reference)


run_job(snakemake, main)
