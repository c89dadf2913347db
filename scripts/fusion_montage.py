import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")
from lpmnet.workflow.runner import run_job


def main(smk):
    from lpmnet.evaluation.figures import fusion_montage

    labels = smk.params.labels
    fused = dict(zip(labels[2:], smk.input.fused))
    w = smk.wildcards
    title = f"{w.dataset} sub-{w.subject}: {w.pair}"
    if "rgb" in smk.input.keys():  # a colour pair: the functional source and the fusions in colour
        sources = dict(zip(labels[:2], (smk.input.x1, smk.input.functional)))
        fusion_montage(sources, fused, smk.output[0], title, colour_map=smk.params.colour_map, functional=labels[1],
                       rgb=dict(zip(labels[2:], smk.input.rgb)))
    else:
        fusion_montage(dict(zip(labels[:2], (smk.input.x1, smk.input.x2))), fused, smk.output[0], title)


run_job(snakemake, main)
