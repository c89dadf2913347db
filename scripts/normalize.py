import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")
from lpmnet.workflow.runner import run_job


def main(smk):
    from lpmnet.volumes.io import load_volume, require_same_grid, save_volume
    from lpmnet.volumes.normalize import normalize_intensity
    from lpmnet.workflow.derivatives import resolution_of, write_job_sidecar

    fixed, volume = load_volume(smk.input.fixed), load_volume(smk.input.volume)
    # With registration switched off the modalities must already share the fixed grid.
    require_same_grid(fixed, volume)
    p = smk.params
    data = normalize_intensity(volume.data, p.low, p.high, mask="otsu" if p.mask == "otsu" else None)
    save_volume(smk.output[0], data, fixed.affine, header=fixed.header)
    write_job_sidecar(
        smk.output[0], p.bids,
        f"Intensities clipped to the {p.low} and {p.high} percentiles (over {p.mask} voxels) and scaled to "
        f"[0, 1]: the volume the fusion methods read", [smk.input.volume], space_reference=smk.input.fixed,
        resolution=resolution_of(smk.wildcards.space),
        Normalization={"low_percentile": p.low, "high_percentile": p.high, "mask": p.mask})


run_job(snakemake, main)
