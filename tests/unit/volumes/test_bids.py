"""Unit tests of lpmnet.volumes.bids: modality filters, the BIDS index (units, runs, ambiguity, missing
modalities, subject/session selection, participants) and sidecar inheritance."""

import gzip
import json

import nibabel as nib
import numpy as np
import pytest

from lpmnet.errors import InputError
from lpmnet.volumes.bids import (DEFAULT_FILTERS, BidsImage, index_bids, modality_filters, read_sidecar)

_NIFTI = None


def nifti_bytes():
    """A tiny real NIfTI (4x4x4 float32), gzip-compressed; made once and copied (the big layout has 600)."""
    global _NIFTI
    if _NIFTI is None:
        data = np.arange(64, dtype=np.float32).reshape(4, 4, 4)
        _NIFTI = gzip.compress(nib.Nifti1Image(data, np.eye(4)).to_bytes(), mtime=0)
    return _NIFTI


def dataset(root, files, participants=None, description=None):
    """A BIDS dataset at ``root``: ``files`` are paths relative to it (a NIfTI, or a JSON sidecar given as
    (path, dict))."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps(description or {"Name": "test", "BIDSVersion": "1.9.0"}))
    for f in files:
        path, content = (f, None) if isinstance(f, str) else f
        p = root / path
        p.parent.mkdir(parents=True, exist_ok=True)
        if content is not None:
            p.write_text(json.dumps(content))
        elif path.endswith(".nii.gz"):
            p.write_bytes(nifti_bytes())
        else:  # .nii
            p.write_bytes(gzip.decompress(nifti_bytes()))
    if participants is not None:
        (root / "participants.tsv").write_text("\n".join("\t".join(row) for row in participants) + "\n")
    return root


def table(index):
    return [(im.subject, im.session, im.modality, im.relpath) for im in index.images]


def kinds(index):
    return [(i.subject, i.session, i.modality, i.kind) for i in index.issues]


# ---------------------------------------------------------------------------------------------- filters

def test_default_filters_of_the_common_names():
    f = modality_filters(["T1", "FLAIR", "PET", "T2w"])
    assert f == {"T1": {"suffix": "T1w"}, "FLAIR": {"suffix": "FLAIR"},
                 "PET": {"datatype": "pet", "suffix": "pet"}, "T2w": {"suffix": "T2w"}}
    assert DEFAULT_FILTERS["pet"] == DEFAULT_FILTERS["PET"] and DEFAULT_FILTERS["CT"] == {"suffix": "ct"}


def test_given_filters_win_and_are_normalised():
    f = modality_filters(["T1", "PET"], {"T1": {"suffix": "T1w", "acq": "mprage", "run": "02", "ce": None},
                                         "unused": {"suffix": "x"}})
    assert f == {"T1": {"suffix": "T1w", "acq": "mprage", "run": 2, "ce": None},
                 "PET": {"datatype": "pet", "suffix": "pet"}}
    assert modality_filters(["T1"], {"T1": {"suffix": "T1w", "extension": "nii"}})["T1"]["extension"] == ".nii"


def test_a_modality_without_filter_is_an_error_listing_the_defaults():
    with pytest.raises(ValueError, match=r"'T1CE' has no BIDS filter.*T1w, T1, T2w"):
        modality_filters(["T1", "T1CE"])


@pytest.mark.parametrize("flt, message", [
    ({"suffix": "T1w", "acquisition": "x"}, r"modality 'T1': unknown key 'acquisition'; use .*acq.*extension"),
    ({"suffix": "T1w", "sub": "01"}, r"'sub' is not a filter key; subjects are selected"),
    ({"suffix": "T1w", "ses": "1"}, r"'ses' is not a filter key; sessions are selected"),
    ({"suffix": "T1w", "run": "one"}, r"run must be a non-negative integer"),
    ({"suffix": "T1w", "acq": 3}, r"the value of acq must be a string"),
    ({"suffix": "T1w", "acq": "acq-mprage"}, r"not a BIDS label.*without the 'acq-' prefix"),
    ({"suffix": "T1w", "extension": ".json"}, r"only NIfTI images"),
    ({}, r"is empty"),
    ("T1w", r"must be a mapping"),
])
def test_bad_filters_are_errors_naming_the_modality(flt, message):
    with pytest.raises(ValueError, match=message):
        modality_filters(["T1"], {"T1": flt})


# ---------------------------------------------------------------------------------------------- index

def test_index_without_sessions(tmp_path):
    root = dataset(tmp_path / "ds", [
        "sub-01/anat/sub-01_T1w.nii.gz", ("sub-01/anat/sub-01_T1w.json", {"MagneticFieldStrength": 3}),
        "sub-01/anat/sub-01_FLAIR.nii.gz",
        "sub-02/anat/sub-02_T1w.nii", "sub-02/anat/sub-02_FLAIR.nii.gz",
        "sub-02/sub-02_scans.tsv",
    ], description={"Name": "two subjects", "BIDSVersion": "1.9.0"})
    (root / "sub-02/sub-02_scans.tsv").write_text("filename\n")
    index = index_bids(root, modality_filters(["T1", "FLAIR"]))
    assert table(index) == [("01", None, "T1", "sub-01/anat/sub-01_T1w.nii.gz"),
                            ("01", None, "FLAIR", "sub-01/anat/sub-01_FLAIR.nii.gz"),
                            ("02", None, "T1", "sub-02/anat/sub-02_T1w.nii"),
                            ("02", None, "FLAIR", "sub-02/anat/sub-02_FLAIR.nii.gz")]
    assert index.issues == () and index.participants == {}
    assert index.description == {"Name": "two subjects", "BIDSVersion": "1.9.0"}
    first = index.images[0]
    assert isinstance(first, BidsImage) and first.path == str((root / first.relpath).absolute())
    assert nib.load(first.path).shape == (4, 4, 4)


def test_a_filter_with_acq_selects_one_acquisition(tmp_path):
    root = dataset(tmp_path / "ds", ["sub-01/anat/sub-01_acq-mprage_T1w.nii.gz",
                                     "sub-01/anat/sub-01_acq-spgr_T1w.nii.gz",
                                     "sub-01/anat/sub-01_FLAIR.nii.gz"])
    filters = modality_filters(["T1", "FLAIR"], {"T1": {"suffix": "T1w", "acq": "spgr"}})
    index = index_bids(root, filters)
    assert table(index)[0] == ("01", None, "T1", "sub-01/anat/sub-01_acq-spgr_T1w.nii.gz")
    assert index.issues == ()


def test_a_null_value_selects_the_files_without_the_entity(tmp_path):
    root = dataset(tmp_path / "ds", ["sub-01/anat/sub-01_T1w.nii.gz", "sub-01/anat/sub-01_ce-gadolinium_T1w.nii.gz"])
    filters = {"T1": {"suffix": "T1w", "ce": None}, "T1CE": {"suffix": "T1w", "ce": "gadolinium"}}
    assert [r[3] for r in table(index_bids(root, filters))] == ["sub-01/anat/sub-01_T1w.nii.gz",
                                                                "sub-01/anat/sub-01_ce-gadolinium_T1w.nii.gz"]


def test_sessions_give_units(tmp_path):
    root = dataset(tmp_path / "ds", [
        "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz", "sub-01/ses-1/pet/sub-01_ses-1_trc-FDG_pet.nii.gz",
        "sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz", "sub-01/ses-2/pet/sub-01_ses-2_trc-FDG_pet.nii.gz",
        "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz", "sub-02/ses-1/pet/sub-02_ses-1_trc-FDG_pet.nii.gz",
    ])
    index = index_bids(root, modality_filters(["T1", "PET"]))
    assert [(s, ses, m) for s, ses, m, _ in table(index)] == [
        ("01", "1", "T1"), ("01", "1", "PET"), ("01", "2", "T1"), ("01", "2", "PET"),
        ("02", "1", "T1"), ("02", "1", "PET")]
    assert table(index)[3][3] == "sub-01/ses-2/pet/sub-01_ses-2_trc-FDG_pet.nii.gz"
    assert index.issues == ()


def test_two_runs_take_the_highest_and_say_so(tmp_path):
    root = dataset(tmp_path / "ds", ["sub-01/anat/sub-01_run-1_T1w.nii.gz", "sub-01/anat/sub-01_run-02_T1w.nii.gz",
                                     "sub-01/anat/sub-01_FLAIR.nii.gz"])
    index = index_bids(root, modality_filters(["T1", "FLAIR"]))
    assert table(index)[0] == ("01", None, "T1", "sub-01/anat/sub-01_run-02_T1w.nii.gz")
    assert kinds(index) == [("01", None, "T1", "chosen")]
    message = index.issues[0].message
    assert message.startswith("sub-01: 2 runs of T1") and "\n" not in message
    assert "took the highest run sub-01/anat/sub-01_run-02_T1w.nii.gz, not sub-01/anat/sub-01_run-1_T1w.nii.gz" \
        in message
    # run compared as an integer: run-02 is run 2
    pinned = index_bids(root, modality_filters(["T1"], {"T1": {"suffix": "T1w", "run": 1}}))
    assert table(pinned) == [("01", None, "T1", "sub-01/anat/sub-01_run-1_T1w.nii.gz")] and pinned.issues == ()


def test_two_acquisitions_without_acq_in_the_filter_are_ambiguous(tmp_path):
    root = dataset(tmp_path / "ds", [
        "sub-01/anat/sub-01_acq-mprage_T1w.nii.gz", "sub-01/anat/sub-01_acq-spgr_T1w.nii.gz",
        "sub-01/anat/sub-01_FLAIR.nii.gz",
        "sub-02/anat/sub-02_acq-mprage_T1w.nii.gz", "sub-02/anat/sub-02_FLAIR.nii.gz",
    ])
    index = index_bids(root, modality_filters(["T1", "FLAIR"]))
    assert [(im.subject, im.modality) for im in index.images] == [("01", "FLAIR"), ("02", "T1"), ("02", "FLAIR")]
    assert kinds(index) == [("01", None, "T1", "ambiguous")]
    message = index.issues[0].message
    assert "\n" not in message and message.startswith("sub-01: 2 images match the filter of T1 {suffix: T1w}")
    assert "they differ in acq:" in message
    assert "sub-01/anat/sub-01_acq-mprage_T1w.nii.gz, sub-01/anat/sub-01_acq-spgr_T1w.nii.gz" in message
    assert "add acq to the filter of T1 in the dataset's modalities" in message


def test_images_that_differ_in_run_and_more_are_ambiguous(tmp_path):
    root = dataset(tmp_path / "ds", ["sub-01/anat/sub-01_run-1_T1w.nii.gz", "sub-01/anat/sub-01_run-2_T1w.nii",
                                     "sub-01/anat/sub-01_T2w.nii.gz"])
    index = index_bids(root, modality_filters(["T1", "T2"]))
    assert [im.modality for im in index.images] == ["T2"] and kinds(index) == [("01", None, "T1", "ambiguous")]
    assert "differ in extension, run" in index.issues[0].message
    assert "add extension to the filter of T1" in index.issues[0].message


def test_a_missing_modality_is_reported_and_the_session_keeps_the_others(tmp_path):
    root = dataset(tmp_path / "ds", [
        "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz", "sub-01/ses-1/anat/sub-01_ses-1_FLAIR.nii.gz",
        "sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz",
        "sub-01/ses-3/anat/sub-01_ses-3_T2w.nii.gz",  # matches no filter: not a unit
    ])
    index = index_bids(root, modality_filters(["T1", "FLAIR"]))
    assert [(s, ses, m) for s, ses, m, _ in table(index)] == [("01", "1", "T1"), ("01", "1", "FLAIR"),
                                                              ("01", "2", "T1")]
    assert kinds(index) == [("01", "2", "FLAIR", "missing")]
    message = index.issues[0].message
    assert message.startswith("sub-01 ses-2: no FLAIR image (filter {suffix: FLAIR})")
    assert "sub-01_ses-2_T1w.nii.gz" in message


def test_a_unit_reports_every_problem_and_choice(tmp_path):
    root = dataset(tmp_path / "ds", ["sub-01/anat/sub-01_run-1_T1w.nii.gz", "sub-01/anat/sub-01_run-2_T1w.nii.gz",
                                     "sub-01/anat/sub-01_acq-a_T2w.nii.gz", "sub-01/anat/sub-01_acq-b_T2w.nii.gz"])
    index = index_bids(root, modality_filters(["T1", "T2", "FLAIR"]))
    assert table(index) == [("01", None, "T1", "sub-01/anat/sub-01_run-2_T1w.nii.gz")]
    assert kinds(index) == [("01", None, "T2", "ambiguous"), ("01", None, "FLAIR", "missing"),
                            ("01", None, "T1", "chosen")]


def test_subject_and_session_selection(tmp_path):
    files = []
    for sub in ("01", "02", "03"):
        for ses in ("1", "2"):
            files += [f"sub-{sub}/ses-{ses}/anat/sub-{sub}_ses-{ses}_T1w.nii.gz"]
    root = dataset(tmp_path / "ds", files)
    filters = modality_filters(["T1"])
    units = lambda index: [(im.subject, im.session) for im in index.images]  # noqa: E731
    assert units(index_bids(root, filters, subjects=["sub-03", "01"])) == [("01", "1"), ("01", "2"), ("03", "1"),
                                                                            ("03", "2")]
    assert units(index_bids(root, filters, sessions=["ses-2"])) == [("01", "2"), ("02", "2"), ("03", "2")]
    assert units(index_bids(root, filters, subjects=["02"], sessions=["1"])) == [("02", "1")]
    assert len(index_bids(root, filters, subjects=[], sessions=None).images) == 6
    with pytest.raises(ValueError, match=r"subject\(s\) sub-04 not in the BIDS dataset .*: no files under sub-04/ "
                                          r"\(subjects: sub-01, sub-02, sub-03\)"):
        index_bids(root, filters, subjects=["01", "sub-04"])
    with pytest.raises(ValueError, match=r"session\(s\) ses-3 not in .*ses-1, ses-2"):
        index_bids(root, filters, sessions=["ses-3"])
    with pytest.raises(ValueError, match=r"subject 'sub-0 1' is not a BIDS label"):
        index_bids(root, filters, subjects=["sub-0 1"])


def test_sessions_asked_of_a_dataset_without_sessions_are_an_error(tmp_path):
    root = dataset(tmp_path / "ds", ["sub-01/anat/sub-01_T1w.nii.gz"])
    with pytest.raises(ValueError, match=r"session\(s\) ses-1 not in the BIDS dataset"):
        index_bids(root, modality_filters(["T1"]), sessions=["1"])


def test_participants_are_carried(tmp_path):
    root = dataset(tmp_path / "ds", ["sub-01/anat/sub-01_T1w.nii.gz", "sub-02/anat/sub-02_T1w.nii.gz"],
                   participants=[("participant_id", "age", "sex"), ("sub-01", "34", "F"), ("sub-02", "n/a", "M")])
    index = index_bids(root, modality_filters(["T1"]))
    assert index.participants == {"01": {"age": "34", "sex": "F"}, "02": {"age": "n/a", "sex": "M"}}


def test_a_broken_participants_table_names_the_file(tmp_path):
    root = dataset(tmp_path / "ds", ["sub-01/anat/sub-01_T1w.nii.gz"],
                   participants=[("participant_id", "age"), ("sub-01",)])
    with pytest.raises(InputError, match=r"participants.tsv: line 2 does not have one value per column"):
        index_bids(root, modality_filters(["T1"]))


def test_a_folder_without_dataset_description_is_not_bids(tmp_path):
    (tmp_path / "ds/sub-01/anat").mkdir(parents=True)
    with pytest.raises(InputError, match=r"ds: not a BIDS dataset: dataset_description.json is missing"):
        index_bids(tmp_path / "ds", modality_filters(["T1"]))
    with pytest.raises(InputError, match=r"absent: BIDS dataset folder not found"):
        index_bids(tmp_path / "absent", modality_filters(["T1"]))


def test_an_unknown_filter_key_is_an_error(tmp_path):
    root = dataset(tmp_path / "ds", ["sub-01/anat/sub-01_T1w.nii.gz"])
    with pytest.raises(ValueError, match=r"modality 'T1': unknown key 'sequence'"):
        index_bids(root, {"T1": {"suffix": "T1w", "sequence": "mprage"}})


def test_derivatives_sourcedata_and_code_are_not_indexed(tmp_path):
    root = dataset(tmp_path / "ds", [
        "sub-01/anat/sub-01_T1w.nii.gz",
        "derivatives/prep/sub-01/anat/sub-01_T1w.nii.gz",
        "derivatives/prep/sub-02/anat/sub-02_T1w.nii.gz",
        "sourcedata/sub-01/anat/sub-01_T1w.nii.gz",
        "code/sub-01/sub-01_T1w.nii.gz",
        ("sub-01/anat/sub-01_T1w.json", {}),  # a sidecar, not an image
    ])
    (root / "derivatives/prep/dataset_description.json").write_text('{"Name": "prep", "DatasetType": "derivative"}')
    index = index_bids(root, modality_filters(["T1"]))
    assert table(index) == [("01", None, "T1", "sub-01/anat/sub-01_T1w.nii.gz")] and index.issues == ()


def test_a_bigger_layout(tmp_path):
    """200 subjects: every 10th has two T1 runs, every 25th lacks FLAIR; the index stays exact."""
    files = []
    for n in range(1, 201):
        sub = f"{n:03d}"
        files.append(f"sub-{sub}/anat/sub-{sub}_run-1_T1w.nii.gz")
        if n % 10 == 0:
            files.append(f"sub-{sub}/anat/sub-{sub}_run-2_T1w.nii.gz")
        if n % 25:
            files.append(f"sub-{sub}/anat/sub-{sub}_FLAIR.nii.gz")
        files.append(f"sub-{sub}/pet/sub-{sub}_pet.nii.gz")
    root = dataset(tmp_path / "ds", files)
    index = index_bids(root, modality_filters(["T1", "FLAIR", "PET"]))
    assert [(im.subject, im.modality) for im in index.images] == [
        (f"{n:03d}", m) for n in range(1, 201) for m in ("T1", "FLAIR", "PET") if n % 25 or m != "FLAIR"]
    assert [im.modality for im in index.images[:3]] == ["T1", "FLAIR", "PET"]
    t1 = {im.subject: im.relpath for im in index.images if im.modality == "T1"}
    assert t1["010"] == "sub-010/anat/sub-010_run-2_T1w.nii.gz" and t1["011"].endswith("_run-1_T1w.nii.gz")
    assert [(i.subject, i.kind) for i in index.issues if i.kind == "missing"] == [
        (f"{n:03d}", "missing") for n in range(25, 201, 25)]
    assert [i.subject for i in index.issues if i.kind == "chosen"] == [f"{n:03d}" for n in range(10, 201, 10)]


# ---------------------------------------------------------------------------------------------- sidecars

def test_read_sidecar_inherits_and_the_file_level_key_wins(tmp_path):
    root = dataset(tmp_path / "ds", [
        ("pet.json", {"TracerName": "FDG", "TracerRadionuclide": "F18", "Manufacturer": "Siemens",
                      "InjectedRadioactivity": 200}),
        "sub-01/ses-1/pet/sub-01_ses-1_pet.nii.gz",
        "sub-02/ses-1/pet/sub-02_ses-1_pet.nii.gz",
        ("sub-02/ses-1/pet/sub-02_ses-1_pet.json", {"TracerName": "PiB", "SkullStripped": False}),
    ])
    assert read_sidecar(root / "sub-01/ses-1/pet/sub-01_ses-1_pet.nii.gz") == {
        "TracerName": "FDG", "TracerRadionuclide": "F18", "Manufacturer": "Siemens"}
    assert read_sidecar(root / "sub-02/ses-1/pet/sub-02_ses-1_pet.nii.gz") == {
        "TracerName": "PiB", "TracerRadionuclide": "F18", "Manufacturer": "Siemens", "SkullStripped": False}


def test_read_sidecar_sees_a_sidecar_written_after_a_first_read(tmp_path):
    root = dataset(tmp_path / "ds", ["sub-01/anat/sub-01_T1w.nii.gz"])
    image = root / "sub-01/anat/sub-01_T1w.nii.gz"
    assert read_sidecar(image) == {}
    (root / "sub-01/anat/sub-01_T1w.json").write_text('{"MagneticFieldStrength": 3}')
    assert read_sidecar(image) == {"MagneticFieldStrength": 3}


def test_read_sidecar_errors_name_the_file(tmp_path):
    root = dataset(tmp_path / "ds", ["sub-01/anat/sub-01_T1w.nii.gz"])
    (root / "sub-01/anat/sub-01_T1w.json").write_text("{not json")
    with pytest.raises(InputError, match=r"sub-01_T1w.json: not valid JSON"):
        read_sidecar(root / "sub-01/anat/sub-01_T1w.nii.gz")
    with pytest.raises(InputError, match=r"sub-01_T2w.nii.gz: file not found"):
        read_sidecar(root / "sub-01/anat/sub-01_T2w.nii.gz")
