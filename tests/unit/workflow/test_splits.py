import pytest

from lpmnet.errors import InputError
from lpmnet.workflow.splits import (OVERLAP_NOTE, dataset_splits, make_split, read_split_tsv, subjects_in,
                                    write_split_tsv)

SUBJECTS = [f"sub-{i:02d}" for i in range(1, 11)]


def test_split_is_deterministic_and_independent_of_input_order():
    a = make_split(SUBJECTS, seed=3)
    b = make_split(list(reversed(SUBJECTS)), seed=3)
    assert a == b and list(a) == sorted(SUBJECTS)
    assert set(a.values()) == {"train", "test"}
    assert sum(r == "test" for r in a.values()) == 3  # round(3.4)
    others = [make_split(SUBJECTS, seed=s) for s in range(8)]
    assert any(o != a for o in others)  # the seed matters


@pytest.mark.parametrize("n, fraction, n_test", [
    (10, 0.34, 3), (10, 0.25, 3), (4, 0.125, 1),  # 0.5 rounds up
    (2, 0.34, 1), (3, 0.0, 1), (3, 1.0, 2), (5, 0.9, 4), (6, 0.5, 3),
])
def test_fraction_is_rounded_then_clamped(n, fraction, n_test):
    split = make_split(SUBJECTS[:n], test_fraction=fraction)
    assert len(subjects_in(split, "test")) == n_test
    assert len(subjects_in(split, "train")) == n - n_test


def test_explicit_lists_override_the_fraction():
    split = make_split(SUBJECTS[:4], test=["sub-02"])
    assert subjects_in(split, "test") == ["sub-02"]
    assert subjects_in(split, "train") == ["sub-01", "sub-03", "sub-04"]
    split = make_split(SUBJECTS[:4], train=["sub-04"])
    assert subjects_in(split, "train") == ["sub-04"]
    split = make_split(SUBJECTS[:3], train=["sub-01", "sub-03"], test=["sub-02"])
    assert split == {"sub-01": "train", "sub-02": "test", "sub-03": "train"}


def test_overlap_only_when_allowed():
    with pytest.raises(ValueError, match="both"):
        make_split(["a", "b"], train=["a", "b"], test=["b"])
    split = make_split(["a", "b"], train=["a", "b"], test=["b"], allow_overlap=True)
    assert split == {"a": "train", "b": "train+test"}
    assert subjects_in(split, "train") == ["a", "b"] and subjects_in(split, "test") == ["b"]
    assert make_split(["solo"], allow_overlap=True) == {"solo": "train+test"}
    with pytest.raises(ValueError, match="allow_overlap"):
        make_split(["solo"])


def test_errors():
    with pytest.raises(ValueError, match="sub-99"):
        make_split(SUBJECTS, test=["sub-99", "sub-01"])
    with pytest.raises(ValueError, match="neither"):
        make_split(SUBJECTS[:3], train=["sub-01"], test=["sub-02"])
    with pytest.raises(ValueError, match="no test subject"):
        make_split(SUBJECTS[:3], train=SUBJECTS[:3])
    with pytest.raises(ValueError, match="more than once"):
        make_split(["a", "a", "b"])
    with pytest.raises(ValueError, match="no subjects"):
        make_split([])
    with pytest.raises(ValueError, match="within"):
        make_split(SUBJECTS, test_fraction=1.5)
    with pytest.raises(ValueError, match="invalid subject"):
        make_split(["a", "b\tc"])
    with pytest.raises(ValueError, match="role"):
        subjects_in({"a": "train"}, "val")


def test_tsv_round_trip(tmp_path):
    split = make_split(["b", "a", "c"], train=["a", "b"], test=["b", "c"], allow_overlap=True)
    path = write_split_tsv(tmp_path / "out" / "split.tsv", split)
    assert path.read_text() == f"subject\tsplit\tnote\na\ttrain\t\nb\ttrain+test\t{OVERLAP_NOTE}\nc\ttest\t\n"
    assert read_split_tsv(path) == split
    old = tmp_path / "old.tsv"  # written before the note column existed
    old.write_text("subject\tsplit\na\ttrain\nb\ttrain+test\nc\ttest\n")
    assert read_split_tsv(old) == split
    assert [p.name for p in path.parent.iterdir()] == ["split.tsv"]  # no temp file left


def test_bad_tsv_names_the_file(tmp_path):
    bad = tmp_path / "split.tsv"
    bad.write_text("subject\tsplit\na\tvalidation\n")
    with pytest.raises(InputError, match="split.tsv.*validation"):
        read_split_tsv(bad)
    bad.write_text("name\trole\na\ttrain\n")
    with pytest.raises(InputError, match="header"):
        read_split_tsv(bad)
    bad.write_text("subject\tsplit\na\ttrain\na\ttest\n")
    with pytest.raises(InputError, match="twice"):
        read_split_tsv(bad)
    with pytest.raises(InputError, match="not found"):
        read_split_tsv(tmp_path / "missing.tsv")


def test_dataset_splits_wait_for_datasets_without_subjects_before_refusing_names():
    from lpmnet.workflow.splits import dataset_splits

    config = {"test_fraction": 0.34, "seed": 0, "train": [], "test": ["IXI002Guys0828"]}
    # An IXI dataset has no subjects before its download: its subject may be named already.
    splits = dataset_splits({"demo": ["a", "b", "c"], "ixi": []}, config)
    assert set(splits) == {"demo"} and sorted(splits["demo"].values()).count("test") == 1
    splits = dataset_splits({"demo": ["a", "b", "c"], "ixi": ["IXI002Guys0828", "IXI012HH1211"]}, config)
    assert splits["ixi"] == {"IXI002Guys0828": "test", "IXI012HH1211": "train"}
    with pytest.raises(ValueError, match="IXI002Guys0828 are in no dataset"):
        dataset_splits({"demo": ["a", "b", "c"], "ixi": ["IXI012HH1211"]}, config)


def test_dataset_defaults_and_grid_names():
    from lpmnet.workflow.index import pair_label, with_defaults

    ixi = with_defaults({"source": "ixi", "pairs": [["T2", "T1"]]})
    assert ixi["fixed"] == "T2" and ixi["register"] is True and ixi["target_shape"] == []
    assert with_defaults({"source": "brats", "fixed": "T1", "pairs": []})["register"] is False
    assert with_defaults({"source": "brats", "fixed": "T1", "pairs": [], "register": True})["register"] is True
    assert pair_label(["T2", "T1"], ixi) == "T2-T1"
    assert pair_label(["T2", "T1"], {**ixi, "target_shape": [128, 160, 160]}) == "T2-T1_res-128x160x160"


# --- dataset_splits over BIDS subjects and their sessions ---------------------------------------------------

#: Subject keys of a BIDS dataset: subjects with one to three sessions, and two without sessions.
UNITS = ([f"{s:02d}_ses-{n}" for s in range(1, 9) for n in range(1, 1 + s % 3 + 1)]
         + ["09", "10"])


def subject_of(unit):
    return unit.partition("_ses-")[0]


def test_the_sessions_of_a_subject_share_its_role_whatever_the_seed():
    subjects = sorted({subject_of(u) for u in UNITS})
    assert len(subjects) == 10 and len(UNITS) == 19
    seen_roles = set()
    for seed in range(40):
        split = dataset_splits({"ds": list(reversed(UNITS))}, {"test_fraction": 0.34, "seed": seed})["ds"]
        assert list(split) == sorted(UNITS)  # every subject key, sorted
        by_subject = {}
        for unit, role in split.items():
            by_subject.setdefault(subject_of(unit), set()).add(role)
        assert all(len(roles) == 1 for roles in by_subject.values()), (seed, split)
        roles = {s: r.pop() for s, r in by_subject.items()}
        # drawn over the subjects, as make_split draws them: 3 test subjects of 10, whatever their sessions
        assert roles == make_split(subjects, 0.34, seed, allow_overlap=True)
        assert sum(r == "test" for r in roles.values()) == 3
        seen_roles.add(tuple(sorted(roles.items())))
    assert len(seen_roles) > 5  # the seed matters


def test_explicit_lists_name_subjects_and_carry_their_sessions():
    units = ["01_ses-1", "01_ses-2", "02_ses-1", "02_ses-2", "02_ses-3", "03"]
    split = dataset_splits({"ds": units}, {"test_fraction": 0.34, "seed": 0, "test": ["sub-02"]})["ds"]
    assert split == {"01_ses-1": "train", "01_ses-2": "train", "02_ses-1": "test", "02_ses-2": "test",
                     "02_ses-3": "test", "03": "train"}
    split = dataset_splits({"ds": units}, {"test_fraction": 0.34, "seed": 0, "train": ["01"]})["ds"]
    assert split == {"01_ses-1": "train", "01_ses-2": "train", "02_ses-1": "test", "02_ses-2": "test",
                     "02_ses-3": "test", "03": "test"}
    # a list names each dataset's subjects it has; the others are split by their own
    split = dataset_splits({"a": units, "b": ["02_ses-1", "04_ses-1"]},
                           {"test_fraction": 0.34, "seed": 0, "train": ["01", "03", "04"], "test": ["02"]})
    assert split["b"] == {"02_ses-1": "test", "04_ses-1": "train"}
    assert {u for u, r in split["a"].items() if r == "test"} == {"02_ses-1", "02_ses-2", "02_ses-3"}
    # a session is no subject: a list naming one is refused, as is a subject no dataset has
    with pytest.raises(InputError, match="not a BIDS label"):
        dataset_splits({"ds": units}, {"test_fraction": 0.34, "seed": 0, "test": ["02_ses-1"]})
    with pytest.raises(ValueError, match="subject\\(s\\) 05 are in no dataset"):
        dataset_splits({"ds": units}, {"test_fraction": 0.34, "seed": 0, "test": ["sub-05"]})


def test_a_single_subject_with_sessions_is_trained_and_tested_on():
    split = dataset_splits({"ds": ["01_ses-1", "01_ses-2"]}, {"test_fraction": 0.34, "seed": 0})["ds"]
    assert split == {"01_ses-1": "train+test", "01_ses-2": "train+test"}


@pytest.mark.parametrize("subjects", [[f"{i:02d}" for i in range(1, 12)],
                                      ["IXI002Guys0828", "IXI012HH1211", "IXI013HH1212", "IXI014HH1691"],
                                      ["a", "b"], ["solo"]])
def test_a_dataset_without_sessions_is_split_as_before(subjects):
    for seed in range(20):
        for fraction in (0.2, 0.34, 0.5):
            config = {"test_fraction": fraction, "seed": seed}
            split = dataset_splits({"ds": list(reversed(subjects))}, config)["ds"]
            assert split == make_split(subjects, fraction, seed, allow_overlap=True)
            assert list(split) == sorted(subjects)
    config = {"test_fraction": 0.34, "seed": 0, "test": [subjects[0]]}
    if len(subjects) > 1:
        assert dataset_splits({"ds": subjects}, config)["ds"] == make_split(subjects, test=[subjects[0]])
