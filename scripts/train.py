import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")
from lpmnet.workflow import run_job


def main(smk):
    import torch

    from lpmnet.split import read_split_tsv
    from lpmnet.train import TrainConfig, train

    torch.set_num_threads(smk.threads)
    w = smk.wildcards
    card = {"name": w.method, "dataset": w.dataset, "pair": w.pair, "split": read_split_tsv(smk.input.split)}
    train(list(zip(smk.input.x1, smk.input.x2)), smk.params.out_dir, TrainConfig(**smk.params.config),
          device=smk.params.device, model_card=card, progress=False)


run_job(snakemake, main)
