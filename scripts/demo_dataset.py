import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")
from pathlib import Path

from lpmnet.volumes.demo import make_demo_dataset
from lpmnet.workflow.runner import run_job


def main(smk):
    p = smk.params
    make_demo_dataset(Path(smk.output.table).parent, n_subjects=p.subjects, seed=p.seed, modalities=p.modalities,
                      voxel_mm=p.voxel_mm, dicom_modalities=p.dicom_modalities, rigid_motion=p.rigid_motion)


run_job(snakemake, main)
