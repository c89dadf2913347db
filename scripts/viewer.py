import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")
from lpmnet.workflow.runner import run_job


def main(smk):
    from lpmnet.evaluation.viewer import ViewerVolume, read_panel_metrics, viewer_page

    first, second, *methods = smk.params.labels
    colour_map = smk.params.colour_map
    volumes = [ViewerVolume(first, "source", smk.input.sources[0]),
               ViewerVolume(second, "source", smk.input.sources[1], colour_map=colour_map)]
    volumes += [ViewerVolume(m, "fused", path, rgb=bool(colour_map)) for m, path in zip(methods, smk.input.fused)]
    metrics = {m: read_panel_metrics(path) for m, path in zip(methods, smk.input.metrics)}
    note = ("Beside each fused view: this subject's metrics in the lpmnet convention (bold = best of the methods "
            "here).")
    if colour_map:
        note += (f" {second} is functional: shown through the {colour_map} colour map, fused and scored on its "
                 "luminance; the fused views are the colour fusions.")
    w = smk.wildcards
    viewer_page(volumes, smk.output[0], f"{w.dataset} sub-{w.subject}: {w.pair}", metrics=metrics, metrics_note=note)


run_job(snakemake, main)
