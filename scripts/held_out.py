import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")
from lpmnet.workflow.runner import run_job


def main(smk):
    import torch

    from lpmnet.engine.device import resolve_device
    from lpmnet.evaluation.heldout import evaluate_model, held_out_rows, write_held_out_table

    torch.set_num_threads(smk.threads)
    norm, device = smk.params.normalization, resolve_device(smk.params.device)
    rows = []
    for label, x1, x2 in zip(smk.params.pairs, smk.input.x1, smk.input.x2):
        results = evaluate_model(smk.input.model, x1, x2, colour=label["colour"], device=device,
                                 low=norm["low_percentile"], high=norm["high_percentile"], mask=norm["mask"])
        rows += held_out_rows(label, results)
    write_held_out_table(smk.output[0], rows)


run_job(snakemake, main)
