"""The one builder of the workflow's paths: a rule's template, filled with its wildcards, is the path that an
input function computes."""

import re

import pytest

from lpmnet.workflow.paths import (Paths, datatype, file_suffix, is_bids_suffix, manifest_path, split_unit, unit_folder,
                                   unit_key)

PATHS = Paths("results")


def fill(template, **wildcards):
    """A template with its wildcards' values: a subject's {modality} is its file suffix, and {scan_dir} the
    folder of the subject (session) and the modality's datatype."""
    if "subject" in wildcards and "modality" in wildcards:
        wildcards["scan_dir"] = f"{unit_folder(wildcards['subject'])}/{datatype(wildcards['modality'])}"
        wildcards["modality"] = file_suffix(wildcards["modality"])
    return re.sub(r"\{(\w+)\}", lambda m: str(wildcards[m.group(1)]), template)


@pytest.mark.parametrize("name, args", [
    ("converted", dict(dataset="demo", subject="01", modality="FLAIR")),
    ("converted", dict(dataset="demo", subject="01_ses-2", modality="PET")),
    ("transform", dict(dataset="demo", subject="01_ses-2", fixed="T1", modality="PET")),
    ("n4", dict(dataset="demo", subject="01", modality="FLAIR")),
    ("registered", dict(dataset="demo", subject="01", fixed="T1", modality="FLAIR")),
    ("registration_qc", dict(dataset="demo", subject="01", fixed="T1", modality="FLAIR")),
    ("normalized", dict(dataset="demo", subject="01", space="T1_res-32x48x40", modality="FLAIR")),
    ("model", dict(dataset="demo", pair="T1-FLAIR", method="lpmnet")),
    ("fused", dict(dataset="demo", pair="T1-FLAIR", subject="01", space="T1", method="lpmnet")),
    ("fused_sidecar", dict(dataset="demo", pair="T1-FLAIR", subject="01", space="T1", method="lpmnet")),
    ("subject_metrics", dict(dataset="demo", pair="T1-FLAIR", subject="01", method="lpmnet")),
    ("montage", dict(dataset="demo", pair="T1-FLAIR", subject="01")),
    ("split", dict(dataset="demo")),
    ("pretrained_model", dict(kind="mri-pet")),
])
def test_a_template_filled_with_its_wildcards_is_the_path(name, args):
    build = getattr(PATHS, name)
    assert fill(build(), **args) == build(**args)


def test_subject_files_are_named_as_bids_derivatives():
    assert PATHS.normalized("demo", "01", "T1", "FLAIR") == \
        "results/demo/sub-01/anat/sub-01_space-T1_desc-norm_FLAIR.nii.gz"
    assert PATHS.normalized("demo", "01_ses-2", "T1_res-128x192x192", "T1") == \
        "results/demo/sub-01/ses-2/anat/sub-01_ses-2_space-T1_res-128x192x192_desc-norm_T1w.nii.gz"
    assert PATHS.converted("demo", "01", "PET") == "results/demo/sub-01/pet/sub-01_pet.nii.gz"
    assert PATHS.transform("demo", "01_ses-2", "T1", "PET") == \
        "results/demo/sub-01/ses-2/pet/sub-01_ses-2_from-pet_to-T1_mode-image_xfm.mat"
    assert PATHS.converted("demo", "01", "CT") == "results/demo/sub-01/anat/sub-01_CT.nii.gz"
    assert PATHS.normalized(space="{fixed}_res-{shape}") == \
        "results/{dataset}/{scan_dir}/sub-{subject}_space-{fixed}_res-{shape}_desc-norm_{modality}.nii.gz"
    assert PATHS.fused("d", "T1-FLAIR", "01_ses-2", "T1", "m") == \
        "results/d/T1-FLAIR/fused/sub-01_ses-2_space-T1_desc-m_fused.nii.gz"


def test_a_subject_file_takes_subject_and_modality_both_given_or_both_wildcards():
    with pytest.raises(ValueError, match="both given or both wildcards"):
        PATHS.converted("demo", "01", "{modality}")


def test_subject_keys_and_bids_names():
    assert unit_key("01") == "01" and unit_key("01", "2") == "01_ses-2"
    assert split_unit("01_ses-2") == ("01", "2") and split_unit("01") == ("01", None)
    assert unit_folder("01_ses-2") == "sub-01/ses-2"
    with pytest.raises(ValueError, match="not a subject key"):
        split_unit("01_run-2")
    assert [file_suffix(m) for m in ("T1", "T1w", "T2", "PD", "FLAIR", "PET", "pet", "CT")] == \
        ["T1w", "T1w", "T2w", "PDw", "FLAIR", "pet", "pet", "CT"]
    assert is_bids_suffix("T1") and is_bids_suffix("PET") and not is_bids_suffix("T1CE")
    assert datatype("PET") == "pet" and datatype("FLAIR") == "anat"


def test_the_other_paths_are_unchanged():
    assert PATHS.fused_sidecar("d", "T1-FLAIR", "01", "T1", "m") == "results/d/T1-FLAIR/fused/sub-01_space-T1_desc-m_fused.json"
    assert PATHS.kept_checkpoint("d", "T1-FLAIR", "m", 20) == "results/d/T1-FLAIR/model/m/checkpoints/iteration-000020.pt"
    assert PATHS.log("convert/{scan_dir}/sub-{subject}_{modality}") == \
        "results/{dataset}/logs/convert/{scan_dir}/sub-{subject}_{modality}.log"
    assert PATHS.benchmark("split", "demo") == "results/demo/benchmarks/split.tsv"
    assert PATHS.manifest_log("demo") == "results/demo/logs/manifest.log"
    assert manifest_path("demo", "out") == "out/demo/manifest.tsv"
    assert PATHS.model_card() == "results/pretrained/MODEL_CARD.md"
    assert PATHS.nifti_download("d", "oms07", "T1", ".nii") == "results/d/downloads/sub-oms07_T1.nii"
    assert PATHS.nifti_download() == "results/{dataset}/downloads/sub-{subject}_{modality}{extension}"
