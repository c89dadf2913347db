"""Dataset indexing for the workflow (lpmnet.workflow.index) with a ``source: bids`` dataset: its sources (one
subject key per subject or session, "absent" rows for what a session lacks or has ambiguously), the
dataset-config checks and the source defaults; and the sources of a ``source: downloads`` dataset."""

import json

import nibabel as nib
import numpy as np
import pytest

from lpmnet.volumes.bids import index_bids, modality_filters
from lpmnet.workflow.index import (Source, bids_dataset_index, bids_sources, check_dataset_config,
                                   check_dataset_modalities, colour_pair, dataset_sources, modality_of_suffix,
                                   with_defaults)

#: The files of the raw dataset (relative to its root).
FILES = (
    "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz",
    "sub-01/ses-1/anat/sub-01_ses-1_FLAIR.nii.gz",
    "sub-01/ses-1/pet/sub-01_ses-1_pet.nii.gz",
    # ses-2: two runs of T1w (the highest is taken), no PET
    "sub-01/ses-2/anat/sub-01_ses-2_run-1_T1w.nii.gz",
    "sub-01/ses-2/anat/sub-01_ses-2_run-2_T1w.nii.gz",
    "sub-01/ses-2/anat/sub-01_ses-2_FLAIR.nii.gz",
    # sub-02 has no sessions, and two FLAIR acquisitions that nothing tells apart but acq
    "sub-02/anat/sub-02_T1w.nii.gz",
    "sub-02/anat/sub-02_acq-2d_FLAIR.nii.gz",
    "sub-02/anat/sub-02_acq-3d_FLAIR.nii.gz",
    "sub-02/pet/sub-02_pet.nii.gz",
)


def write_nifti(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(np.arange(60, dtype=np.float32).reshape(3, 4, 5), np.eye(4))
    image.header.set_xyzt_units("mm")
    nib.save(image, path)


def bids_dataset(root, files=FILES):
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.10.0"}))
    (root / "participants.tsv").write_text("participant_id\tage\nsub-01\t30\nsub-02\t40\n")
    for f in files:
        write_nifti(root / f)
    return root


def config(root, **more):
    return with_defaults({"source": "bids", "root": str(root), "fixed": "T1",
                          "pairs": [["T1", "FLAIR"], ["T1", "PET"]], **more})


def rows(sources, root):
    """(subject key, modality, path relative to root or "", kind) of the sources, sorted."""
    return sorted((s.subject, s.modality, s.path.removeprefix(f"{root}/"), s.kind) for s in sources)


EXPECTED = [
    ("01_ses-1", "FLAIR", "sub-01/ses-1/anat/sub-01_ses-1_FLAIR.nii.gz", "nifti"),
    ("01_ses-1", "PET", "sub-01/ses-1/pet/sub-01_ses-1_pet.nii.gz", "nifti"),
    ("01_ses-1", "T1", "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz", "nifti"),
    ("01_ses-2", "FLAIR", "sub-01/ses-2/anat/sub-01_ses-2_FLAIR.nii.gz", "nifti"),
    ("01_ses-2", "PET", "", "absent"),
    ("01_ses-2", "T1", "sub-01/ses-2/anat/sub-01_ses-2_run-2_T1w.nii.gz", "nifti"),
    ("02", "FLAIR", "", "absent"),
    ("02", "PET", "sub-02/pet/sub-02_pet.nii.gz", "nifti"),
    ("02", "T1", "sub-02/anat/sub-02_T1w.nii.gz", "nifti"),
]


def test_bids_sources_have_absent_rows_that_say_why(tmp_path):
    root = bids_dataset(tmp_path / "raw")
    index = index_bids(root, modality_filters(["T1", "FLAIR", "PET"]))
    sources = bids_sources("mine", index)
    assert rows(sources, root) == EXPECTED
    assert all(s.dataset == "mine" and s.where == "" for s in sources)
    found = {(s.subject, s.modality): s for s in sources}
    # an image's source is the absolute path of its file, without a problem
    assert found[("01_ses-1", "T1")].path == str(root / "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz")
    assert all(s.problem == "" for s in sources if s.kind == "nifti")
    # what the session lacks, and what it has twice, carried as the index's message
    messages = {(i.subject, i.session, i.modality): i.message for i in index.issues}
    assert found[("01_ses-2", "PET")].problem == messages[("01", "2", "PET")]
    assert found[("01_ses-2", "PET")].problem.startswith("sub-01 ses-2: no PET image")
    assert found[("02", "FLAIR")].problem == messages[("02", None, "FLAIR")]
    assert "sub-02_acq-2d_FLAIR.nii.gz" in found[("02", "FLAIR")].problem and "acq" in found[("02", "FLAIR")].problem
    # the run the index chose is a note, not a source
    assert ("01", "2", "T1") in messages and found[("01_ses-2", "T1")].kind == "nifti"
    assert len(sources) == len(EXPECTED)


def test_the_sources_of_a_bids_dataset(tmp_path):
    root = bids_dataset(tmp_path / "raw")
    cfg = config(root)
    sources = dataset_sources("mine", cfg, str(tmp_path / "results"))
    # every unit has a row per modality already: nothing is "missing"
    assert rows(sources, root) == EXPECTED
    assert all(isinstance(s, Source) for s in sources)
    # an index already made is used as it is (the workflow indexes once)
    index = bids_dataset_index(cfg)
    assert dataset_sources("mine", cfg, str(tmp_path / "results"), bids_index=index) == bids_sources("mine", index)
    check_dataset_modalities("mine", cfg, sources)


def test_the_dataset_entry_selects_subjects_sessions_and_filters(tmp_path):
    root = bids_dataset(tmp_path / "raw")
    assert rows(dataset_sources("mine", config(root, subjects=["sub-02"])), root) == [r for r in EXPECTED
                                                                                       if r[0] == "02"]
    assert rows(dataset_sources("mine", config(root, sessions=["1"])), root) == [r for r in EXPECTED
                                                                                 if r[0] == "01_ses-1"]
    # a filter of the entry settles the ambiguity; a unit without that acquisition has no FLAIR then
    cfg = config(root, modalities={"FLAIR": {"suffix": "FLAIR", "acq": "3d"}})
    found = {(s.subject, s.modality): s for s in dataset_sources("mine", cfg)}
    assert found[("02", "FLAIR")].kind == "nifti" and found[("02", "FLAIR")].path.endswith("_acq-3d_FLAIR.nii.gz")
    assert found[("01_ses-1", "FLAIR")].kind == "absent" and "acq: 3d" in found[("01_ses-1", "FLAIR")].problem
    # a modality with a filter of its own name (no default)
    cfg = config(root, pairs=[["T1", "FLAIR2d"]], modalities={"FLAIR2d": {"suffix": "FLAIR", "acq": "2d"}})
    found = {(s.subject, s.modality): s.kind for s in dataset_sources("mine", cfg)}
    assert found == {("01_ses-1", "T1"): "nifti", ("01_ses-1", "FLAIR2d"): "absent", ("01_ses-2", "T1"): "nifti",
                     ("01_ses-2", "FLAIR2d"): "absent", ("02", "T1"): "nifti", ("02", "FLAIR2d"): "nifti"}


def test_a_modality_that_no_session_has_is_refused(tmp_path):
    root = bids_dataset(tmp_path / "raw", [f for f in FILES if "/pet/" not in f])
    cfg = config(root)
    sources = dataset_sources("mine", cfg)
    assert {s.kind for s in sources if s.modality == "PET"} == {"absent"}
    with pytest.raises(ValueError) as error:
        check_dataset_modalities("mine", cfg, sources)
    assert str(error.value) == "datasets.mine.pairs: no subject has PET; the dataset's modalities are FLAIR, T1"


# ---------------------------------------------------------------------------------------------- config checks

@pytest.mark.parametrize("pairs, first, second, suffix", [
    ([["T1", "T1w"]], "T1", "T1w", "T1w"),
    ([["T1", "FLAIR"], ["T1", "PET"], ["T1", "pet"]], "PET", "pet", "pet"),
    ([["T1", "T2"], ["T2w", "FLAIR"]], "T2", "T2w", "T2w"),
    ([["T1", "PD"], ["T1", "PDw"]], "PD", "PDw", "PDw"),
])
@pytest.mark.parametrize("source", ["bids", "folders", "table"])
def test_two_modalities_written_with_one_bids_suffix_are_refused(tmp_path, source, pairs, first, second, suffix):
    cfg = with_defaults({"source": source, "root": str(tmp_path), "table": str(tmp_path / "t.tsv"),
                         "patterns": {"T1": "t1"}, "fixed": "T1", "pairs": pairs})
    with pytest.raises(ValueError) as error:
        check_dataset_config("mine", cfg)
    assert str(error.value) == (f"datasets.mine: modalities {first} and {second} are both written with the BIDS "
                                f"suffix {suffix}; name them once")


def test_the_fixed_modality_counts_for_the_suffix_check(tmp_path):
    cfg = with_defaults({"source": "bids", "root": str(tmp_path), "fixed": "T1w", "pairs": [["T1", "FLAIR"]]})
    with pytest.raises(ValueError, match="modalities T1w and T1 are both written with the BIDS suffix T1w"):
        check_dataset_config("mine", cfg)


@pytest.mark.parametrize("modalities, pairs, message", [
    ({}, [["T1", "T1CE"]], "modality 'T1CE' has no BIDS filter"),
    ({"T1": {"suffix": "T1w", "acquisition": "mprage"}}, [["T1", "FLAIR"]], "unknown key 'acquisition'"),
    ({"T1": {"suffix": "T1w", "sub": "01"}}, [["T1", "FLAIR"]], "'sub' is not a filter key"),
    ({"FLAIR": {}}, [["T1", "FLAIR"]], "is empty"),
    ({"FLAIR": {"suffix": "FLAIR", "acq": "acq-3d"}}, [["T1", "FLAIR"]], "without the 'acq-' prefix"),
])
def test_a_bad_modality_filter_names_the_key(tmp_path, modalities, pairs, message):
    cfg = with_defaults({"source": "bids", "root": str(tmp_path), "fixed": "T1", "pairs": pairs,
                         "modalities": modalities})
    with pytest.raises(ValueError, match=r"^datasets\.mine\.modalities: ") as error:
        check_dataset_config("mine", cfg)
    assert message in str(error.value)


def test_good_bids_entries_pass_the_checks(tmp_path):
    check_dataset_config("mine", with_defaults({"source": "bids", "root": str(tmp_path), "fixed": "T1",
                                                "pairs": [["T1", "FLAIR"], ["T1", "PET"]]}))
    check_dataset_config("mine", with_defaults({
        "source": "bids", "root": str(tmp_path), "fixed": "T1", "pairs": [["T1", "T1CE"]],
        "modalities": {"T1CE": {"suffix": "T1w", "ce": "gadolinium"}, "T1": {"suffix": "T1w", "ce": None}}}))
    # a filter only the bids source reads: another source does not check it
    check_dataset_config("mine", with_defaults({"source": "folders", "root": str(tmp_path), "fixed": "T1",
                                                "pairs": [["T1", "T1CE"]], "patterns": {"T1": "t1", "T1CE": "t1ce"}}))


@pytest.mark.parametrize("source, expected", [
    ("demo", True), ("brats", True), ("bids", False), ("table", False), ("folders", False), ("ixi", False),
    ("downloads", False),
])
def test_skull_stripped_defaults_by_source(source, expected):
    cfg = with_defaults({"source": source, "fixed": "T1", "pairs": [["T1", "T2"]]})
    assert cfg["skull_stripped"] is expected
    given = with_defaults({"source": source, "fixed": "T1", "pairs": [["T1", "T2"]], "skull_stripped": not expected})
    assert given["skull_stripped"] is (not expected)


def test_modality_of_suffix():
    cfg = {"fixed": "T1", "pairs": [["T1", "FLAIR"], ["T1", "PET"], ["T2", "T1CE"]]}
    assert modality_of_suffix(cfg) == {"T1w": "T1", "FLAIR": "FLAIR", "pet": "PET", "T2w": "T2", "T1CE": "T1CE"}


def test_pet_and_spect_are_functional_and_fused_in_colour_by_default():
    cfg = with_defaults({"source": "table", "fixed": "T1", "pairs": [["T1", "PET"], ["T1", "SPECT"], ["T1", "FLAIR"]]})
    assert cfg["functional"] == ["PET", "SPECT"] and cfg["colour_map"] == "hot"
    assert [colour_pair(p, cfg) for p in cfg["pairs"]] == [True, True, False]
    grey = with_defaults({"source": "table", "fixed": "T1", "pairs": [["T1", "PET"]], "functional": []})
    assert not colour_pair(["T1", "PET"], grey)
    check_dataset_config("d", cfg)


@pytest.mark.parametrize("entry, message", [
    ({"pairs": [["PET", "T1"]]}, r"datasets.d.pairs: \['PET', 'T1'\] puts the functional PET first"),
    ({"pairs": [["T1", "FLAIR"]], "functional": ["PET"]}, r"datasets.d.functional: no pair uses PET"),
    ({"pairs": [["T1", "PET"]], "colour_map": "pet-please"}, r"datasets.d.colour_map: unknown colour map"),
])
def test_colour_settings_are_checked(entry, message):
    with pytest.raises(ValueError, match=message):
        check_dataset_config("d", with_defaults({"source": "table", "fixed": "T1", **entry}))


def test_the_sources_of_a_downloads_dataset_are_its_downloads():
    sha256 = {"sha256": "0" * 64}
    cfg = with_defaults({"source": "downloads", "fixed": "T1", "pairs": [["T1", "FLAIR"]], "files": {
        "a": {"T1": {"url": "https://host/a/t1.nii.gz?raw=true", **sha256},
              "FLAIR": {"url": "https://host/a/F.NII", **sha256}},
        "b": {"T1": {"url": "https://host/b/t1.nii", **sha256}, "T2": {"url": "https://host/b/t2.nii.gz", **sha256}},
    }})
    assert cfg["register"] is False and cfg["retries"] == 5
    sources = dataset_sources("real", cfg, "out")
    check_dataset_modalities("real", cfg, sources)
    # b's T2 is downloaded and recorded though no pair uses it; b lacks FLAIR: left out of T1-FLAIR
    assert rows(sources, "out") == [
        ("a", "FLAIR", "real/downloads/sub-a_FLAIR.nii", "nifti"),
        ("a", "T1", "real/downloads/sub-a_T1.nii.gz", "nifti"),
        ("b", "FLAIR", "datasets.real.files", "absent"),
        ("b", "T1", "real/downloads/sub-b_T1.nii", "nifti"),
        ("b", "T2", "real/downloads/sub-b_T2.nii.gz", "nifti"),
    ]
    assert [s.problem for s in sources if s.kind == "absent"] == ["datasets.real.files: subject b has no FLAIR volume"]
