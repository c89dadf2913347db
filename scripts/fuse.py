import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")
from lpmnet.workflow.runner import run_job


def main(smk):
    import torch

    from lpmnet.engine.fuse import fuse_files
    from lpmnet.workflow.derivatives import add_job_derivative_fields

    torch.set_num_threads(smk.threads)
    fuse_files(smk.input.x1, smk.input.x2, smk.output.fused, smk.input.model, device=smk.params.device,
               method=smk.params.network, normalize=False, **smk.params.settings)
    add_job_derivative_fields(smk.output.fused, smk.params.bids, [smk.input.x1, smk.input.x2], smk.params.reference)


run_job(snakemake, main)
