import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")
from lpmnet.workflow.runner import run_job


def main(smk):
    from lpmnet.evaluation.heldout import read_held_out_table
    from lpmnet.volumes.io import atomic_write_text
    from lpmnet.methods.lpmnet.pretrained import model_card

    kinds = smk.params.kinds
    held_out = {kind: read_held_out_table(path) for kind, path in zip(kinds, smk.input.held_out)}
    atomic_write_text(smk.output[0], model_card(dict(zip(kinds, smk.input.models)), dict(zip(kinds, smk.input.logs)),
                                                 smk.params.datasets, held_out, smk.params.held_out))


run_job(snakemake, main)
