import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")
from lpmnet.workflow.runner import run_job


def main(smk):
    from lpmnet.volumes.io import load_volume, require_same_grid, save_volume
    from lpmnet.volumes.normalize import normalize_intensity

    fixed, volume = load_volume(smk.input.fixed), load_volume(smk.input.volume)
    # With registration switched off the modalities must already share the fixed grid.
    require_same_grid(fixed, volume)
    p = smk.params
    data = normalize_intensity(volume.data, p.low, p.high, mask="otsu" if p.mask == "otsu" else None)
    save_volume(smk.output[0], data, fixed.affine, header=fixed.header)


run_job(snakemake, main)
