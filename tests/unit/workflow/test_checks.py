"""Job-side checks of a subject's inputs (lpmnet.workflow.checks): status rows, "absent" sources of a BIDS
session, the input status table and which sources a pair cannot use."""

import numpy as np
import pytest

from helpers import TEST_AFFINE, smooth_pair
from lpmnet.errors import InputError
from lpmnet.volumes.io import load_volume, save_volume
from lpmnet.workflow.checks import (ABSENT, INPUT_STATUS_COLUMNS, check_subject_sources, convert_source,
                                    failed_inputs, pair_failures, read_input_status, write_input_status)

ABSENT_PROBLEM = ("sub-01 ses-2: no PET image (filter {datatype: pet, suffix: pet}) among its 2 NIfTI file(s) "
                  "(sub-01_ses-2_FLAIR.nii.gz, sub-01_ses-2_T1w.nii.gz)")


def sources(tmp_path):
    """modality -> (kind, path, problem) of one session: a good T1, a constant FLAIR, a missing T2 and an
    absent PET."""
    t1, _ = smooth_pair((8, 9, 10))
    good = save_volume(tmp_path / "t1.nii.gz", t1, TEST_AFFINE)
    flat = save_volume(tmp_path / "flair.nii.gz", np.ones((8, 9, 10), np.float32), TEST_AFFINE)
    return {
        "T1": ("nifti", str(good), ""),
        "FLAIR": ("nifti", str(flat), ""),
        "T2": ("missing", str(tmp_path / "t2.nii.gz"), f"{tmp_path / 't2.nii.gz'}: file not found (listed in x.tsv)"),
        "PET": ("absent", "", ABSENT_PROBLEM),
    }


def test_an_absent_source_gets_its_own_status_and_no_conversion(tmp_path):
    rows = check_subject_sources("01_ses-2", sources(tmp_path))
    assert [(r["subject"], r["modality"], r["status"]) for r in rows] == [
        ("01_ses-2", "FLAIR", "failed"), ("01_ses-2", "PET", ABSENT), ("01_ses-2", "T1", "ok"),
        ("01_ses-2", "T2", "failed")]
    assert ABSENT == "absent"
    by_modality = {r["modality"]: r for r in rows}
    assert by_modality["PET"]["problem"] == ABSENT_PROBLEM  # the index's message, as it is
    assert by_modality["T1"]["problem"] == ""
    assert "t2.nii.gz: file not found" in by_modality["T2"]["problem"]
    assert "flair.nii.gz" in by_modality["FLAIR"]["problem"]
    for row in rows:
        assert list(row) == list(INPUT_STATUS_COLUMNS)


def test_an_absent_source_is_never_read(tmp_path):
    """Its path is "" (or anything): the check does not try to load it, as it would a NIfTI."""
    rows = check_subject_sources("02", {"FLAIR": ("absent", str(tmp_path / "nothing.nii.gz"), "sub-02: ambiguous")})
    assert rows == [{"subject": "02", "modality": "FLAIR", "status": "absent", "problem": "sub-02: ambiguous"}]
    rows = check_subject_sources("02", {"FLAIR": ("nifti", str(tmp_path / "nothing.nii.gz"), "")})
    assert rows[0]["status"] == "failed"


def test_converting_an_absent_source_raises_its_problem(tmp_path):
    with pytest.raises(InputError) as error:
        convert_source("absent", "", ABSENT_PROBLEM, tmp_path / "out.nii.gz")
    assert error.value.path == "sub-01 ses-2"
    assert error.value.problem.startswith("no PET image (filter {datatype: pet, suffix: pet})")
    assert not (tmp_path / "out.nii.gz").exists()
    with pytest.raises(InputError, match="file not found"):
        convert_source("missing", "", "/data/t2.nii.gz: file not found", tmp_path / "out.nii.gz")
    # a good source is converted
    t1, _ = smooth_pair((8, 9, 10))
    convert_source("nifti", save_volume(tmp_path / "t1.nii.gz", t1, TEST_AFFINE), "", tmp_path / "out.nii.gz")
    assert np.allclose(load_volume(tmp_path / "out.nii.gz").data, t1)


def test_the_input_status_keeps_absent_rows(tmp_path):
    rows = check_subject_sources("01_ses-2", sources(tmp_path))
    path = tmp_path / "checks" / "sub-01_ses-2_inputs.tsv"
    write_input_status(path, rows)
    assert read_input_status(path) == rows


def test_failed_inputs_by_status(tmp_path):
    rows = (check_subject_sources("01_ses-2", sources(tmp_path))
            + [{"subject": "02", "modality": "T1", "status": "ok", "problem": ""},
               {"subject": "03", "modality": "PET", "status": "absent", "problem": "sub-03: no PET image"}])
    by_modality = {r["modality"]: r["problem"] for r in rows if r["subject"] == "01_ses-2"}
    # by default: every source a pair cannot use
    assert failed_inputs(rows) == {
        "01_ses-2": {"FLAIR": by_modality["FLAIR"], "PET": ABSENT_PROBLEM, "T2": by_modality["T2"]},
        "03": {"PET": "sub-03: no PET image"}}
    assert failed_inputs(rows, statuses=("failed", "absent")) == failed_inputs(rows)
    # the failed only: what the run reports as errors
    assert failed_inputs(rows, statuses=("failed",)) == {
        "01_ses-2": {"FLAIR": by_modality["FLAIR"], "T2": by_modality["T2"]}}
    assert failed_inputs(rows, statuses=("absent",)) == {"01_ses-2": {"PET": ABSENT_PROBLEM},
                                                          "03": {"PET": "sub-03: no PET image"}}
    assert failed_inputs(rows, statuses=()) == {}
    assert failed_inputs([{"subject": "04", "modality": "T1", "status": "ok", "problem": ""}]) == {}


def test_a_pair_leaves_out_the_sessions_without_its_modalities():
    rows = [{"subject": "01_ses-1", "modality": m, "status": "ok", "problem": ""} for m in ("T1", "FLAIR", "PET")]
    rows += [{"subject": "01_ses-2", "modality": "PET", "status": "absent", "problem": "sub-01 ses-2: no PET image"},
             {"subject": "01_ses-2", "modality": "T1", "status": "ok", "problem": ""},
             {"subject": "01_ses-2", "modality": "FLAIR", "status": "ok", "problem": ""}]
    split = {"01_ses-1": "train", "01_ses-2": "train"}
    assert pair_failures(rows, split, {"T1", "FLAIR"}) == []
    assert pair_failures(rows, split, {"T1", "PET"}) == [
        {"subject": "01_ses-2", "split": "train", "modality": "PET", "problem": "sub-01 ses-2: no PET image"}]
