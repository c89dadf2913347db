"""A small raw BIDS dataset built from the real volumes of ../shared/data/real (MANIFEST.tsv there says where
each comes from), for the workflow's ``source: bids`` tests.

* sub-01, an MS patient (open_ms_data patient07, MNI space), has two sessions:
  - ses-1: T1w, FLAIR and pet (the SPM12 PET template, an H2-15O group average on the MNI grid);
  - ses-2: two runs of T1w (the workflow takes the highest) and FLAIR, no pet (the session is fused as
    T1-FLAIR only).
* sub-02, a glioma case (TCGA-LGG FG-6692, native clinical space), has no sessions: T1w, FLAIR and the same
  PET template, which the workflow registers onto its T1 (not this patient's PET: the tests exercise the
  machinery, not the PET's anatomy).

The anatomical volumes are subsampled by 2 in-plane (the affine scaled to match, so that their geometry
stays exact) to keep the workflow runs short.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np

#: The PET sidecar at the dataset's root, inherited by every PET image (BIDS inheritance).
PET_SIDECAR = {"Modality": "PT", "TracerName": "H2O", "TracerRadionuclide": "O15"}


def _subsampled(path, step):
    """The volume of ``path`` with every ``step``-th voxel of each axis ((sx, sy, sz)), affine to match."""
    image = nib.load(path)
    data = np.asanyarray(image.dataobj)[::step[0], ::step[1], ::step[2]].astype(np.float32)
    affine = image.affine.copy()
    affine[:3, :3] = affine[:3, :3] * np.asarray(step, dtype=float)
    return nib.Nifti1Image(data, affine)


def _write(root, relpath, image, sidecar=None):
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, path)
    if sidecar is not None:
        path.with_name(path.name.removesuffix(".nii.gz") + ".json").write_text(json.dumps(sidecar))
    return path


def make_bids_dataset(root, real):
    """Write the dataset under ``root`` from ``real`` (../shared/data/real); returns ``root``."""
    ms, glioma, spm = real / "oms_patient07_mni", real / "tcga_FG-6692_native", real / "spm_mni152_avg"
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({
        "Name": "lpmnet test dataset from open_ms_data, TCGA-LGG and SPM12 volumes", "BIDSVersion": "1.10.0",
        "DatasetType": "raw", "License": "CC-BY-4.0 (open_ms_data), CC-BY-3.0 (TCGA), GPL-2.0 (SPM12)"}))
    (root / "participants.tsv").write_text("participant_id\tdiagnosis\nsub-01\tMS\nsub-02\tglioma\n")
    (root / "pet.json").write_text(json.dumps(PET_SIDECAR))
    ms_step, glioma_step = (2, 2, 2), (2, 2, 1)
    anat = {"SkullStripped": True}
    _write(root, "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz", _subsampled(ms / "T1.nii.gz", ms_step), anat)
    _write(root, "sub-01/ses-1/anat/sub-01_ses-1_FLAIR.nii.gz", _subsampled(ms / "FLAIR.nii.gz", ms_step), anat)
    _write(root, "sub-01/ses-1/pet/sub-01_ses-1_pet.nii.gz", nib.load(spm / "PET_template.nii"))
    for run in (1, 2):
        _write(root, f"sub-01/ses-2/anat/sub-01_ses-2_run-{run}_T1w.nii.gz", _subsampled(ms / "T1.nii.gz", ms_step),
               anat)
    _write(root, "sub-01/ses-2/anat/sub-01_ses-2_FLAIR.nii.gz", _subsampled(ms / "FLAIR.nii.gz", ms_step), anat)
    _write(root, "sub-02/anat/sub-02_T1w.nii.gz", _subsampled(glioma / "t1.nii.gz", glioma_step), anat)
    _write(root, "sub-02/anat/sub-02_FLAIR.nii.gz", _subsampled(glioma / "flair.nii.gz", glioma_step), anat)
    _write(root, "sub-02/pet/sub-02_pet.nii.gz", nib.load(spm / "PET_template.nii"))
    return root
