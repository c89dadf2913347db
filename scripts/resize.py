import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")
from lpmnet.workflow.runner import run_job


def main(smk):
    from lpmnet.volumes.io import load_volume, save_volume
    from lpmnet.volumes.resample import resize_volume
    from lpmnet.workflow.derivatives import resolution_of, write_job_sidecar

    resized = resize_volume(load_volume(smk.input[0]), smk.params.dhw_shape)
    save_volume(smk.output[0], resized.data, resized.affine, header=resized.header)
    space = f"{smk.wildcards.fixed}_res-{smk.wildcards.shape}"
    write_job_sidecar(smk.output[0], smk.params.bids, "Resized to the paper's shape before normalisation",
                      [smk.input[0]], space_reference=smk.params.reference, resolution=resolution_of(space))


run_job(snakemake, main)
