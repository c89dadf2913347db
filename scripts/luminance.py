import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")
from lpmnet.workflow.runner import run_job


def main(smk):
    from lpmnet.volumes.colour import colour_luminance
    from lpmnet.volumes.io import load_volume, save_volume
    from lpmnet.volumes.normalize import unit_range
    from lpmnet.workflow.derivatives import resolution_of, write_job_sidecar

    volume = load_volume(smk.input[0])
    luminance, _, _ = colour_luminance(unit_range(volume.data, False), smk.params.colour_map)
    save_volume(smk.output[0], luminance, volume.affine, header=volume.header)
    write_job_sidecar(smk.output[0], smk.params.bids,
                      f"Luminance Y (BT.601) of the normalised volume shown through the colour map "
                      f"{smk.params.colour_map}: what the methods fuse, train on and are scored with in its place",
                      [smk.input[0]], space_reference=smk.input[0], resolution=resolution_of(smk.wildcards.space),
                      ColourMap=smk.params.colour_map)


run_job(snakemake, main)
