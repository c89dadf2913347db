"""A BIDS dataset in (sessions, duplicate runs, a session without PET), a BIDS derivatives dataset out: the
workflow on volumes of ../shared/data laid out as BIDS (tests/support/bids_dataset.py)."""

import copy
import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_dataset import PET_SIDECAR, make_bids_dataset
from lpmnet.methods import read_payload
from lpmnet.volumes.sources import read_manifest
from lpmnet.workflow.paths import Paths
from workflow_runs import DEFAULT_CONFIG, planned_jobs, quick_lpmnet, snakemake, workdir_with

pytestmark = pytest.mark.slow
PATHS = Paths()


@pytest.fixture(scope="module")
def bids_run(tmp_path_factory, shared_data):
    root = make_bids_dataset(tmp_path_factory.mktemp("bids") / "raw", shared_data)
    config = quick_lpmnet(copy.deepcopy(DEFAULT_CONFIG))
    config["datasets"] = {"study": {"source": "bids", "root": str(root), "fixed": "T1",
                                    "pairs": [["T1", "FLAIR"], ["T1", "PET"]]}}
    workdir = workdir_with(tmp_path_factory.mktemp("run"), config)
    result = snakemake(workdir, "--cores", "2")  # a session without PET does not fail the run
    return workdir, root, result.stdout + result.stderr


def test_sessions_are_subjects_of_their_own_and_the_manifest_says_what_the_sidecars_say(bids_run):
    workdir, root, output = bids_run
    results = workdir / "results" / "study"
    rows = {(r["subject"], r["modality"]): r for r in read_manifest(results / "manifest.tsv")}
    assert set(rows) == {("01_ses-1", "T1"), ("01_ses-1", "FLAIR"), ("01_ses-1", "PET"),
                         ("01_ses-2", "T1"), ("01_ses-2", "FLAIR"),
                         ("02", "T1"), ("02", "FLAIR"), ("02", "PET")}
    assert rows[("01_ses-2", "T1")]["path"].endswith("sub-01_ses-2_run-2_T1w.nii.gz")  # the highest run
    assert (rows[("01_ses-1", "T1")]["participant_id"], rows[("01_ses-1", "T1")]["session"]) == ("sub-01", "1")
    assert rows[("02", "T1")]["session"] == "n/a" and rows[("02", "T1")]["diagnosis"] == "glioma"
    assert rows[("02", "PET")]["TracerName"] == PET_SIDECAR["TracerName"]  # inherited from the root's pet.json
    log = (results / "logs" / "manifest.log").read_text()
    assert "sub-01 ses-2: 2 runs of T1" in log and "took the highest run" in log
    assert "sub-01 ses-2: no PET image" in log
    assert "lack a modality" in output  # and said on the console

    # every session fused on its own, its outputs named with ses-<label> in sub-<label>/ses-<label>/<datatype>
    t1 = nib.load(workdir / PATHS.converted("study", "01_ses-2", "T1"))
    assert PATHS.converted("study", "01_ses-2", "T1").endswith("sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz")
    np.testing.assert_allclose(t1.affine, nib.load(rows[("01_ses-2", "T1")]["path"]).affine, atol=1e-5)
    pet = workdir / PATHS.normalized("study", "02", "T1", "PET")
    assert pet.as_posix().endswith("sub-02/pet/sub-02_space-T1_desc-norm_pet.nii.gz")
    assert nib.load(pet).shape == nib.load(workdir / PATHS.converted("study", "02", "T1")).shape
    converted_pet = json.loads((workdir / PATHS.converted("study", "02", "PET")).with_suffix("").with_suffix(".json")
                               .read_text())
    assert converted_pet["Sources"] == ["bids:source:sub-02/pet/sub-02_pet.nii.gz"]
    assert converted_pet["SourceMetadata"]["TracerName"] == PET_SIDECAR["TracerName"]
    normalized_pet = json.loads(pet.with_suffix("").with_suffix(".json").read_text())  # carried along the chain
    assert normalized_pet["SourceMetadata"] == converted_pet["SourceMetadata"]
    card = read_payload(results / "T1-PET" / "model" / "lpmnet" / "model.pt")["model_card"]
    assert card["source_metadata"]["x2"]["TracerName"] == [PET_SIDECAR["TracerName"]]
    assert card["source_metadata"]["x1"] == {"SkullStripped": [True]}


def test_no_subject_is_on_both_sides_of_the_split_and_pairs_take_the_sessions_that_have_them(bids_run):
    workdir, _, _ = bids_run
    results = workdir / "results" / "study"
    split = pd.read_csv(results / "split.tsv", sep="\t", dtype=str).set_index("subject").split.to_dict()
    assert set(split) == {"01_ses-1", "01_ses-2", "02"}
    assert split["01_ses-1"] == split["01_ses-2"] != split["02"]
    assert set(split.values()) == {"train", "test"}
    tested = sorted(s for s, role in split.items() if role == "test")
    prefixes = [f"sub-{s}_" for s in tested]
    flair = sorted(p.name for p in (results / "T1-FLAIR" / "fused").glob("*_desc-lpmnet_fused.nii.gz"))
    assert flair == [f"{p}space-T1_desc-lpmnet_fused.nii.gz" for p in prefixes]
    failed = pd.read_csv(results / "T1-PET" / "failed_subjects.tsv", sep="\t", dtype=str)
    with_pet = [s for s in tested if s != "01_ses-2"]
    pet = sorted(p.name for p in (results / "T1-PET" / "fused").glob("*_desc-lpmnet_fused.nii.gz"))
    assert pet == [f"sub-{s}_space-T1_desc-lpmnet_fused.nii.gz" for s in with_pet]
    assert failed.subject.tolist() == ["01_ses-2"] and "no PET image" in failed.problem[0]
    assert planned_jobs(workdir) == {}


def test_the_pet_pairs_are_fused_in_colour(bids_run):
    from lpmnet.volumes.colour import fused_luminance_y, rgb_to_ycbcr
    from lpmnet.volumes.io import load_rgb_volume, load_volume

    workdir, _, _ = bids_run
    results = workdir / "results" / "study"
    luminance = workdir / PATHS.luminance("study", "02", "T1", "PET")
    assert luminance.name == "sub-02_space-T1_desc-luminance_pet.nii.gz"
    colour = sorted((results / "T1-PET" / "fused").glob("*_fused_rgb.nii.gz"))
    fused = sorted((results / "T1-PET" / "fused").glob("*_fused.nii.gz"))
    assert [c.name.replace("_rgb", "") for c in colour] == [f.name for f in fused] and len(fused) == 3
    for grey, rgb_file in zip(fused, colour):
        rgb, affine = load_rgb_volume(rgb_file)  # RGB24, on the fixed grid
        image = nib.load(rgb_file)
        assert image.header["datatype"] == 128 and image.header.get_intent()[0] == "rgb vector"
        np.testing.assert_allclose(affine, nib.load(grey).affine, atol=1e-5)
        np.testing.assert_allclose(rgb_to_ycbcr(rgb / 255.0)[0], fused_luminance_y(load_volume(grey).data),
                                   atol=0.5 / 255 + 1e-6)
        sidecar = json.loads(rgb_file.with_suffix("").with_suffix(".json").read_text())
        assert sidecar["Colour"]["ColourMap"] == "hot" and sidecar["Sources"][0].startswith("bids::T1-PET/fused/")
    html = (results / "T1-PET" / "metrics.html").read_text()
    assert "PET is functional and fused in colour (colour map hot)" in html
    assert "fused in colour" not in (results / "T1-FLAIR" / "metrics.html").read_text()


def test_the_results_are_a_valid_bids_derivatives_dataset(bids_run):
    from bids_validator import validator_errors

    workdir, root, _ = bids_run
    results = workdir / "results" / "study"
    description = json.loads((results / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["SourceDatasets"] == [{"URL": root.as_uri()}]
    assert description["DatasetLinks"] == {"source": root.as_uri()}
    assert validator_errors(results) == []
