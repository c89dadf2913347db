import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")
from lpmnet.workflow.runner import run_job


def main(smk):
    from lpmnet.volumes.io import atomic_write_text
    from lpmnet.methods.lpmnet.pretrained import model_card

    atomic_write_text(smk.output[0], model_card(dict(zip(smk.params.kinds, smk.input.models)),
                                                 dict(zip(smk.params.kinds, smk.input.logs)), smk.params.dataset))


run_job(snakemake, main)
