import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")
from lpmnet.workflow import run_job


def main(smk):
    import pandas as pd
    import torch

    from lpmnet.figures import learning_curve as plot
    from lpmnet.io import atomic_write_text
    from lpmnet.train import learning_curve

    torch.set_num_threads(smk.threads)
    rows = learning_curve(smk.params.checkpoints, list(zip(smk.input.x1, smk.input.x2)), smk.params.network,
                          device=smk.params.device, **smk.params.settings)
    atomic_write_text(smk.output.table, pd.DataFrame(rows).to_csv(sep="\t", index=False))
    w = smk.wildcards
    plot(smk.output.table, smk.output.figure, title=f"{w.method} over its training: {w.dataset} {w.pair}")


run_job(snakemake, main)
