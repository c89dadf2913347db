"""A dataset's results as a BIDS derivatives dataset (lpmnet.workflow.derivatives): BIDS URIs, the dataset
description, the .bidsignore, the volumes' sidecars, and a small derivatives dataset written with these
functions that the official BIDS validator accepts."""

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_validator import show, validator_errors
from lpmnet import __version__
from lpmnet.volumes.io import atomic_write_json, sidecar_path
from lpmnet.workflow.derivatives import (BIDS_VERSION, NON_BIDS, SOURCE_LINK, add_job_derivative_fields,
                                         bids_uri, bidsignore_lines, derivative_fields, describe_derivatives,
                                         resolution_of, write_derivatives_description, write_job_sidecar,
                                         write_volume_sidecar)
from lpmnet.workflow.paths import Paths, datatype, file_suffix

METHODS = {"lpmnet": "lpmnet", "mambadfuse": "mambadfuse", "mean": "classical"}


def roots(tmp_path):
    """(derivatives root, input dataset root) side by side, as a run's results and a BIDS input lie."""
    return tmp_path / "results" / "ds", tmp_path / "raw"


def params(tmp_path, skull_stripped=False):
    """A job's ``bids`` parameter (rules/common.smk derivative_params)."""
    dataset_root, source_root = roots(tmp_path)
    return {"dataset_root": str(dataset_root), "source_root": str(source_root), "skull_stripped": skull_stripped,
            "bids_source": True}


def read(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------- BIDS URIs

def test_a_file_of_the_derivatives_is_named_relative_to_their_root(tmp_path):
    dataset_root, source_root = roots(tmp_path)
    image = dataset_root / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_T1w.nii.gz"
    assert bids_uri(image, dataset_root, source_root) == "bids::sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz"
    assert bids_uri(image, dataset_root) == "bids::sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz"
    assert bids_uri(str(image), str(dataset_root), str(source_root)) == bids_uri(image, dataset_root, source_root)


def test_a_file_of_the_input_dataset_is_named_through_its_link(tmp_path):
    dataset_root, source_root = roots(tmp_path)
    raw = source_root / "sub-02" / "pet" / "sub-02_pet.nii.gz"
    assert bids_uri(raw, dataset_root, source_root) == f"bids:{SOURCE_LINK}:sub-02/pet/sub-02_pet.nii.gz"
    assert SOURCE_LINK == "source"


def test_a_file_outside_both_datasets_has_no_uri(tmp_path):
    dataset_root, source_root = roots(tmp_path)
    assert bids_uri(tmp_path / "elsewhere" / "x.nii.gz", dataset_root, source_root) is None
    assert bids_uri(source_root / "sub-01" / "x.nii.gz", dataset_root) is None  # no input dataset given
    # a folder whose name only begins like the root's is outside it
    assert bids_uri(tmp_path / "results" / "ds2" / "x.nii.gz", dataset_root, source_root) is None
    assert bids_uri(tmp_path / "raw_old" / "x.nii.gz", dataset_root, source_root) is None


def test_relative_paths_and_dot_dots_are_resolved_from_the_working_directory(tmp_path, monkeypatch):
    """The rules pass the dataset root as "results/<dataset>", relative to the workflow's directory."""
    monkeypatch.chdir(tmp_path)
    assert bids_uri("results/ds/sub-01/anat/a.nii.gz", "results/ds", "raw") == "bids::sub-01/anat/a.nii.gz"
    assert bids_uri(tmp_path / "raw" / "sub-01" / "a.nii.gz", "results/ds", "raw") == "bids:source:sub-01/a.nii.gz"
    assert bids_uri("results/ds/../../raw/sub-01/a.nii.gz", "results/ds", "raw") == "bids:source:sub-01/a.nii.gz"
    assert bids_uri("results/ds/../other/a.nii.gz", "results/ds", "raw") is None


def test_nested_roots_name_a_file_by_the_dataset_it_lies_in(tmp_path):
    # the demo's generated inputs lie inside its results (sourcedata/): a derivatives file
    dataset_root = tmp_path / "results" / "demo"
    assert bids_uri(dataset_root / "sourcedata" / "sub-01" / "t1.nii.gz", dataset_root, dataset_root / "sourcedata") \
        == "bids::sourcedata/sub-01/t1.nii.gz"
    # results written inside the input dataset (raw/derivatives/lpmnet): each file by its own dataset
    raw = tmp_path / "raw"
    inside = raw / "derivatives" / "lpmnet"
    assert bids_uri(inside / "sub-01" / "anat" / "x.nii.gz", inside, raw) == "bids::sub-01/anat/x.nii.gz"
    assert bids_uri(raw / "sub-01" / "anat" / "x.nii.gz", inside, raw) == "bids:source:sub-01/anat/x.nii.gz"


# ---------------------------------------------------------------------------------------------- description

def test_the_description_of_the_derivatives(tmp_path):
    d = describe_derivatives("ds", version="1.2.3", methods=METHODS)
    assert d["Name"] == "lpmnet fusion of ds"
    assert d["DatasetType"] == "derivative"
    assert d["BIDSVersion"] == BIDS_VERSION and re.fullmatch(r"1\.\d+\.\d+", BIDS_VERSION)
    pipeline, *methods = d["GeneratedBy"]
    assert pipeline["Name"] == "lpmnet" and pipeline["Version"] == "1.2.3"
    for method in METHODS:
        assert method in pipeline["Description"]
    assert [m["Name"] for m in methods] == list(METHODS)
    for entry, (method, network) in zip(methods, METHODS.items()):
        assert entry["Version"] == "1.2.3"
        assert method in entry["Description"] and network in entry["Description"]
    # no input dataset outside the results: nothing to cite or link
    assert "SourceDatasets" not in d and "DatasetLinks" not in d
    json.dumps(d)  # plain JSON


def test_the_input_dataset_is_cited_and_linked(tmp_path, monkeypatch):
    raw_description = {"Name": "raw", "BIDSVersion": "1.9.0", "DOI": "doi:10.18112/openneuro.ds000001.v1.0.0",
                       "Version": "1.0.0", "License": "CC0"}
    d = describe_derivatives("ds", version="0.1.0", methods=METHODS, source_description=raw_description,
                             source_root=tmp_path / "raw")
    url = (tmp_path / "raw").as_uri()
    assert url.startswith("file:///")
    assert d["SourceDatasets"] == [{"URL": url, "DOI": raw_description["DOI"], "Version": "1.0.0"}]
    assert d["DatasetLinks"] == {"source": url}
    # a relative root is made absolute; a description without DOI and version cites the URL alone
    monkeypatch.chdir(tmp_path)
    d = describe_derivatives("ds", version="0.1.0", methods=METHODS, source_description={"Name": "raw"},
                             source_root="raw")
    assert d["SourceDatasets"] == [{"URL": url}] and d["DatasetLinks"] == {"source": url}
    d = describe_derivatives("ds", version="0.1.0", methods=METHODS, source_root="raw")
    assert d["SourceDatasets"] == [{"URL": url}]
    # the raw description alone (no root) is not cited: there is nothing to link it to
    d = describe_derivatives("ds", version="0.1.0", methods=METHODS, source_description=raw_description)
    assert "SourceDatasets" not in d and "DatasetLinks" not in d


def test_the_bidsignore_lists_what_bids_has_no_name_for():
    lines = bidsignore_lines([["T1", "FLAIR"], ["T1", "PET"]], ["T1", "FLAIR", "PET"])
    assert lines == [*NON_BIDS, "T1-FLAIR", "T1-FLAIR_res-*", "T1-PET", "T1-PET_res-*"]
    for pattern in ("logs", "benchmarks", "checks", "manifest.tsv", "split.tsv", "input_status.tsv", "*_xfm.mat",
                    "*_registration.json", "*_regqc.png"):
        assert pattern in lines
    assert not any(line.endswith("/") for line in lines)  # the validator matches a folder without its slash
    assert not any("T1w" in line or "pet" in line or "FLAIR.nii" in line for line in lines)


def test_a_modality_without_bids_suffix_is_ignored_by_its_files():
    lines = bidsignore_lines([["T1", "T1CE"], ["T1", "FLAIR"]], ["T1", "T1CE", "FLAIR"])
    assert lines[:len(NON_BIDS)] == list(NON_BIDS)
    assert lines[len(NON_BIDS):] == ["T1-T1CE", "T1-T1CE_res-*", "T1-FLAIR", "T1-FLAIR_res-*", "*_T1CE.nii.gz",
                                     "*_T1CE.json"]
    assert bidsignore_lines([], ["T2", "PD", "T2star"]) == list(NON_BIDS)


def test_write_derivatives_description(tmp_path):
    description = describe_derivatives("ds", version="0.1.0", methods=METHODS)
    lines = bidsignore_lines([["T1", "FLAIR"]], ["T1", "FLAIR"])
    root = tmp_path / "results" / "ds"
    write_derivatives_description(root / "dataset_description.json", root / ".bidsignore", description, lines)
    assert read(root / "dataset_description.json") == description
    text = (root / ".bidsignore").read_text()
    assert text.endswith("\n") and text.splitlines() == lines


# ---------------------------------------------------------------------------------------------- sidecars

def test_write_job_sidecar(tmp_path):
    dataset_root, source_root = roots(tmp_path)
    p = params(tmp_path, skull_stripped=False)
    given = json.loads(json.dumps(p))
    image = dataset_root / "sub-01/ses-1/anat/sub-01_ses-1_space-T1_res-128x192x192_desc-norm_FLAIR.nii.gz"
    sources = [dataset_root / "sub-01/ses-1/anat/sub-01_ses-1_FLAIR.nii.gz",
               source_root / "sub-01/ses-1/anat/sub-01_ses-1_FLAIR.nii.gz",
               tmp_path / "elsewhere" / "flair.nii.gz"]
    written = write_job_sidecar(image, p, "normalised", sources,
                                space_reference=dataset_root / "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz",
                                resolution=resolution_of("T1_res-128x192x192"),
                                Normalization={"low_percentile": 1, "high_percentile": 99, "mask": "otsu"})
    assert written == sidecar_path(image) and written.name.endswith("_desc-norm_FLAIR.json")
    sidecar = read(written)
    assert sidecar == {
        "Description": "normalised",
        "Sources": ["bids::sub-01/ses-1/anat/sub-01_ses-1_FLAIR.nii.gz",
                    "bids:source:sub-01/ses-1/anat/sub-01_ses-1_FLAIR.nii.gz"],  # the third lies outside both
        "SpatialReference": "bids::sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz",
        "Resolution": resolution_of("T1_res-128x192x192"),
        "SkullStripped": False,
        "Normalization": {"low_percentile": 1, "high_percentile": 99, "mask": "otsu"},
    }
    assert list(sidecar)[:2] == ["Description", "Sources"]  # the derivative fields first
    assert p == given  # the job's parameter is not changed


def test_skull_stripped_comes_from_the_dataset_unless_the_job_knows_better(tmp_path):
    dataset_root, source_root = roots(tmp_path)
    image = dataset_root / "sub-01/anat/sub-01_T1w.nii.gz"
    raw = source_root / "sub-01/anat/sub-01_T1w.nii.gz"
    sidecar = read(write_job_sidecar(image, params(tmp_path, skull_stripped=True), "converted", [raw]))
    assert sidecar == {"Description": "converted", "Sources": ["bids:source:sub-01/anat/sub-01_T1w.nii.gz"],
                       "SkullStripped": True}
    # the source's own sidecar says otherwise (scripts/convert.py): it wins, and the project's keys are kept
    metadata = {"SkullStripped": False, "Manufacturer": "Siemens"}
    sidecar = read(write_job_sidecar(image, params(tmp_path, skull_stripped=True), "converted", [raw],
                                     skull_stripped=metadata["SkullStripped"], SourceMetadata=metadata))
    assert sidecar["SkullStripped"] is False and sidecar["SourceMetadata"] == metadata
    assert "skull_stripped" not in sidecar and "SpatialReference" not in sidecar and "Resolution" not in sidecar
    sidecar = read(write_job_sidecar(image, params(tmp_path, skull_stripped=False), "converted", [raw],
                                     skull_stripped=True))
    assert sidecar["SkullStripped"] is True


def test_a_volume_sidecar_without_derivative_settings(tmp_path):
    dataset_root, _ = roots(tmp_path)
    image = dataset_root / "sub-01/anat/sub-01_desc-n4_T1w.nii.gz"
    sidecar = read(write_volume_sidecar(image, dataset_root, "N4", [dataset_root / "sub-01/anat/sub-01_T1w.nii.gz"],
                                        Tool="ants"))
    assert sidecar == {"Description": "N4", "Sources": ["bids::sub-01/anat/sub-01_T1w.nii.gz"], "Tool": "ants"}
    fields = derivative_fields(dataset_root, "x", [], skull_stripped=0)
    assert fields == {"Description": "x", "Sources": [], "SkullStripped": False}


def test_a_fused_volume_keeps_its_methods_sidecar_under_the_derivative_fields(tmp_path):
    dataset_root, _ = roots(tmp_path)
    x1 = dataset_root / "sub-01/ses-1/anat/sub-01_ses-1_space-T1_desc-norm_T1w.nii.gz"
    x2 = dataset_root / "sub-01/ses-1/anat/sub-01_ses-1_space-T1_desc-norm_FLAIR.nii.gz"
    fused = Path(Paths(str(tmp_path / "results")).fused("ds", "T1-FLAIR", "01_ses-1", "T1", "lpmnet"))
    own = {"Description": "lpmnet fusion in the grid of the fixed (first) input", "Method": "lpmnet",
           "SourceFiles": [{"path": str(x1), "sha256": "ab"}, {"path": str(x2), "sha256": "cd"}],
           "SpaceOf": str(x1)}
    atomic_write_json(sidecar_path(fused), own)
    written = add_job_derivative_fields(fused, params(tmp_path, skull_stripped=True), [x1, x2], x1)
    assert written == sidecar_path(fused)
    sidecar = read(written)
    assert list(sidecar) == ["Description", "Sources", "SpatialReference", "SkullStripped", "Method", "SourceFiles",
                             "SpaceOf"]
    assert sidecar["Description"] == own["Description"]
    assert sidecar["Sources"] == ["bids::sub-01/ses-1/anat/sub-01_ses-1_space-T1_desc-norm_T1w.nii.gz",
                                  "bids::sub-01/ses-1/anat/sub-01_ses-1_space-T1_desc-norm_FLAIR.nii.gz"]
    assert sidecar["SpatialReference"] == "bids::sub-01/ses-1/anat/sub-01_ses-1_space-T1_desc-norm_T1w.nii.gz"
    assert sidecar["SkullStripped"] is True
    assert {k: sidecar[k] for k in own} == own
    assert "Resolution" not in sidecar


def test_resolution_of_a_space_label():
    assert resolution_of("T1") is None
    assert resolution_of("T2") is None
    text = resolution_of("T1_res-128x192x192")
    assert text.startswith("128x192x192 voxels") and "resize" in text
    assert resolution_of("FLAIR_res-32x48x40").startswith("32x48x40 voxels")


# ---------------------------------------------------------------------------------------------- a whole dataset

def write_nifti(path, shape=(4, 5, 6)):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(np.arange(np.prod(shape), dtype=np.float32).reshape(shape), np.diag([2.0, 2.0, 2.0, 1.0]))
    image.header.set_xyzt_units("mm")
    nib.save(image, path)
    return path


def raw_dataset(root):
    """The input BIDS dataset the derivatives cite: one subject, one session, its T1w and FLAIR."""
    root.mkdir(parents=True)
    description = {"Name": "raw", "BIDSVersion": "1.10.0", "DatasetType": "raw", "License": "CC0",
                   "DOI": "doi:10.0000/example", "Version": "1.0.0"}
    (root / "dataset_description.json").write_text(json.dumps(description))
    anat = root / "sub-01" / "ses-1" / "anat"
    for suffix in ("T1w", "FLAIR"):
        write_nifti(anat / f"sub-01_ses-1_{suffix}.nii.gz")
    return description


#: The modalities of the derivatives dataset: BIDS suffixes of both datatypes and one that BIDS has no name for.
MODALITIES = ("T1", "FLAIR", "PET", "T1CE")


def derivatives_dataset(tmp_path):
    """The results of dataset "ds" as the workflow lays them out, written with this module's functions."""
    dataset_root, source_root = roots(tmp_path)
    raw_description = raw_dataset(source_root)
    paths = Paths(str(tmp_path / "results"))
    p = params(tmp_path, skull_stripped=False)
    pairs = [["T1", "FLAIR"], ["T1", "T1CE"]]
    write_derivatives_description(
        paths.description("ds"), paths.bidsignore("ds"),
        describe_derivatives("ds", version=__version__, methods=METHODS, source_description=raw_description,
                             source_root=source_root),
        bidsignore_lines(pairs, MODALITIES))
    unit = "01_ses-1"
    converted = {}
    for modality in MODALITIES:
        converted[modality] = write_nifti(Path(paths.converted("ds", unit, modality)))
        raw = source_root / f"sub-01/ses-1/{datatype(modality)}/sub-01_ses-1_{file_suffix(modality)}.nii.gz"
        write_job_sidecar(converted[modality], p, "The source volume, checked and written as NIfTI", [raw],
                          SourceMetadata={"Manufacturer": "Siemens"})
    assert converted["T1"] == dataset_root / "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz"
    normalized = {}
    for modality in MODALITIES:
        normalized[modality] = write_nifti(Path(paths.normalized("ds", unit, "T1", modality)))
        write_job_sidecar(normalized[modality], p, "normalised", [converted[modality]],
                          space_reference=converted["T1"], resolution=resolution_of("T1"),
                          Normalization={"low_percentile": 1.0, "high_percentile": 99.0, "mask": "otsu"})
    assert normalized["T1"] == dataset_root / "sub-01/ses-1/anat/sub-01_ses-1_space-T1_desc-norm_T1w.nii.gz"
    assert normalized["PET"] == dataset_root / "sub-01/ses-1/pet/sub-01_ses-1_space-T1_desc-norm_pet.nii.gz"
    resized = write_nifti(Path(paths.normalized("ds", unit, "T1_res-4x5x6", "FLAIR")))
    write_job_sidecar(resized, p, "normalised", [converted["FLAIR"]], space_reference=converted["T1"],
                      resolution=resolution_of("T1_res-4x5x6"))
    registered = write_nifti(Path(paths.registered("ds", unit, "T1", "FLAIR")))
    write_job_sidecar(registered, p, "registered onto T1", [converted["FLAIR"]], space_reference=converted["T1"])
    Path(paths.transform("ds", unit, "T1", "FLAIR")).write_bytes(b"an ITK transform")
    atomic_write_json(paths.registration_report("ds", unit, "T1", "FLAIR"), {"metric": 0.5})
    Path(paths.registration_qc("ds", unit, "T1", "FLAIR")).write_bytes(b"a PNG")
    for a, b in pairs:
        pair = f"{a}-{b}"
        fused = write_nifti(Path(paths.fused("ds", pair, unit, "T1", "lpmnet")))
        atomic_write_json(sidecar_path(fused), {"Description": "lpmnet fusion", "Method": "lpmnet"})
        add_job_derivative_fields(fused, p, [normalized[a], normalized[b]], normalized[a])
        Path(paths.metrics_summary("ds", pair)).write_text("subject\tmethod\n01_ses-1\tlpmnet\n")
    for path, text in ((paths.log("x", "ds"), "a log\n"), (paths.manifest("ds"), "dataset\tsubject\n"),
                       (paths.split("ds"), "subject\tsplit\n"), (paths.input_status("ds"), "subject\tstatus\n"),
                       (paths.input_check("ds", unit), "subject\tstatus\n"), (paths.benchmark("x", "ds"), "s\n")):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    return dataset_root


def test_the_derivatives_dataset_files(tmp_path):
    root = derivatives_dataset(tmp_path)
    assert (root / "logs" / "x.log").is_file() and (root / "manifest.tsv").is_file()
    assert (root / "T1-FLAIR" / "fused" / "sub-01_ses-1_space-T1_desc-lpmnet_fused.nii.gz").is_file()
    description = read(root / "dataset_description.json")
    assert description["DatasetLinks"] == {"source": (tmp_path / "raw").as_uri()}
    sidecar = read(root / "sub-01/ses-1/anat/sub-01_ses-1_space-T1_desc-norm_T1w.json")
    assert sidecar["Sources"] == ["bids::sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz"]
    assert read(root / "sub-01/ses-1/anat/sub-01_ses-1_T1w.json")["Sources"] == [
        "bids:source:sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz"]


def test_the_bids_validator_accepts_the_derivatives(tmp_path):
    root = derivatives_dataset(tmp_path)
    errors = validator_errors(root)
    assert errors == [], f"the BIDS validator found errors in {root}:\n{show(errors)}"


def test_the_bids_validator_check_can_fail(tmp_path):
    """The check above would see a mistake: without the .bidsignore, what it lists is an error."""
    root = derivatives_dataset(tmp_path)
    (root / ".bidsignore").unlink()
    located = {e.get("location") for e in validator_errors(root)}
    anat = "/sub-01/ses-1/anat/sub-01_ses-1"
    for location in ("/T1-FLAIR/fused/sub-01_ses-1_space-T1_desc-lpmnet_fused.nii.gz", "/T1-T1CE/metrics.tsv",
                     "/manifest.tsv", "/split.tsv", "/input_status.tsv", "/checks/sub-01_ses-1_inputs.tsv",
                     "/benchmarks/x.tsv", f"{anat}_T1CE.nii.gz", f"{anat}_T1CE.json",
                     f"{anat}_space-T1_desc-norm_T1CE.nii.gz", f"{anat}_from-FLAIR_to-T1_mode-image_xfm.mat",
                     f"{anat}_from-FLAIR_to-T1_registration.json", f"{anat}_from-FLAIR_to-T1_regqc.png"):
        assert location in located, f"{location} is no error without the .bidsignore:\n{sorted(located)}"
