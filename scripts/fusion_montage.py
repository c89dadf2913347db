import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")
from lpmnet.workflow.runner import run_job


def main(smk):
    from lpmnet.evaluation.figures import fusion_montage

    labels = smk.params.labels
    sources = dict(zip(labels[:2], (smk.input.x1, smk.input.x2)))
    fused = dict(zip(labels[2:], smk.input.fused))
    w = smk.wildcards
    fusion_montage(sources, fused, smk.output[0], title=f"{w.dataset} sub-{w.subject}: {w.pair}")


run_job(snakemake, main)
