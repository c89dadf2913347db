import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")
from lpmnet.workflow.runner import run_job


def main(smk):
    from lpmnet.volumes.colour import colour_luminance, rgb_path, write_colour_fusion
    from lpmnet.volumes.io import load_volume, require_same_grid
    from lpmnet.volumes.normalize import unit_range
    from lpmnet.workflow.derivatives import write_job_sidecar

    fused, functional = load_volume(smk.input.fused, allow_constant=True), load_volume(smk.input.functional)
    require_same_grid(fused, functional)
    if str(rgb_path(smk.input.fused)) != smk.output.rgb:
        raise ValueError(f"{smk.output.rgb}: the colour fusion of {smk.input.fused} is {rgb_path(smk.input.fused)}")
    _, cb, cr = colour_luminance(unit_range(functional.data, False), smk.params.colour_map)
    colour = write_colour_fusion(smk.input.fused, fused.data, cb, cr, fused.affine, fused.header,
                                 smk.params.colour_map)
    write_job_sidecar(smk.output.rgb, smk.params.bids,
                      f"Colour fusion ({smk.params.colour_map}): the fused luminance with the chrominance of the "
                      f"functional volume", [smk.input.fused, smk.input.functional],
                      space_reference=smk.params.reference, Colour=colour)


run_job(snakemake, main)
