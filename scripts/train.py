import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")
from lpmnet.workflow.runner import run_job


def main(smk):
    from pathlib import Path

    import torch

    from lpmnet.engine.train import TrainConfig, train
    from lpmnet.workflow.derivatives import source_metadata_summary
    from lpmnet.workflow.splits import read_split_tsv

    torch.set_num_threads(smk.threads)
    # A pretrained model's datasets each have their split (results/<dataset>/split.tsv).
    splits = smk.input.get("splits")
    split = ({"splits": {Path(p).parent.name: read_split_tsv(p) for p in splits}} if splits else
             {"split": read_split_tsv(smk.input.split)})
    card = {**smk.params.card, **split,
            "source_metadata": {"x1": source_metadata_summary(smk.input.x1),
                                "x2": source_metadata_summary(smk.input.x2)}}
    val_pairs = list(zip(smk.input.get("val_x1", []), smk.input.get("val_x2", [])))
    train(list(zip(smk.input.x1, smk.input.x2)), smk.params.out_dir, TrainConfig(**smk.params.config),
          val_pairs=val_pairs, device=smk.params.device, model_card=card, progress=False,
          normalize=False, restart_stale=True)


run_job(snakemake, main)
