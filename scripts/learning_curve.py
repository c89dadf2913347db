import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")
from lpmnet.workflow.runner import run_job


def main(smk):
    import torch

    from lpmnet.volumes.io import write_tsv_rows
    from lpmnet.engine.train import learning_curve

    torch.set_num_threads(smk.threads)
    rows = learning_curve(smk.params.checkpoints, list(zip(smk.input.x1, smk.input.x2)), smk.params.network,
                          device=smk.params.device, normalize=False, **smk.params.settings)
    write_tsv_rows(smk.output[0], rows)


run_job(snakemake, main)
