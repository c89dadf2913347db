import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")
from lpmnet.errors import InputError
from lpmnet.workflow import run_job


def main(smk):
    p = smk.params
    if p.kind == "missing":
        path, _, problem = p.problem.partition(": ")
        raise InputError(path, problem)
    if p.kind == "dicom":
        from lpmnet.dicom import dicom_series_to_nifti

        dicom_series_to_nifti(p.source, smk.output[0])
    else:
        from lpmnet.io import load_volume, save_volume

        volume = load_volume(p.source)  # refuses missing, unreadable, 4D, NaN and constant volumes
        save_volume(smk.output[0], volume.data, volume.affine, header=volume.header)


run_job(snakemake, main)
