import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")
from lpmnet.workflow.runner import run_job


def main(smk):
    import torch

    from lpmnet.engine.fuse import fuse_files

    torch.set_num_threads(smk.threads)
    fuse_files(smk.input.x1, smk.input.x2, smk.output.fused, smk.input.model, device=smk.params.device,
               method=smk.params.network, normalize=False, **smk.params.settings)


run_job(snakemake, main)
