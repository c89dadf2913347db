import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")
from lpmnet.workflow.runner import run_job


def main(smk):
    from lpmnet.volumes.io import load_volume, save_volume
    from lpmnet.volumes.resample import resize_volume

    resized = resize_volume(load_volume(smk.input[0]), smk.params.dhw_shape)
    save_volume(smk.output[0], resized.data, resized.affine, header=resized.header)


run_job(snakemake, main)
