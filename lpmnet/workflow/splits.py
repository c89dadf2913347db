"""Train/test split of the subjects of a study.

:func:`make_split` assigns every subject to ``"train"`` or ``"test"``:

* by default a fraction of the subjects is held out for testing, drawn deterministically
  (subjects are sorted by name, then permuted with ``numpy.random.default_rng(seed)``), so
  the same subject list and seed always give the same split whatever order the subjects
  came in.  Adding or removing a subject may reshuffle the whole split.
* explicit ``train`` / ``test`` lists override the fraction.

With two or more subjects there is always at least one training and one test subject.  A
single subject cannot be split; ``allow_overlap=True`` then labels it ``"train+test"``
(trained on and evaluated on the same data).  That is only for smoke runs of the
workflow: metrics of such a subject say nothing about generalisation.

The split is stored as a TSV (``subject<TAB>split<TAB>note``, sorted by subject) with
:func:`write_split_tsv` / :func:`read_split_tsv`; a ``"train+test"`` subject's note says that its
metrics are not an evaluation. :func:`subjects_in` lists the subjects used for one role.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from lpmnet.errors import InputError
from lpmnet.volumes.io import atomic_write_text

__all__ = [
    "ROLES",
    "TRAIN",
    "TEST",
    "BOTH",
    "make_split",
    "subjects_in",
    "write_split_tsv",
    "read_split_tsv",
]

TRAIN = "train"
TEST = "test"
#: Label of a subject used for training and testing (single-subject smoke runs only).
BOTH = "train+test"
#: Every label a split may hold.
ROLES = (TRAIN, TEST, BOTH)

_HEADER = ("subject", "split")
_NOTE = "note"
#: What split.tsv, the console and the metric tables say of a subject trained and tested on.
OVERLAP_NOTE = ("trained and tested on the same subject (fewer subjects than a train/test split needs): "
                "its metrics say nothing about how the model does on unseen data")


def _check_name(name) -> str:
    if not isinstance(name, str):
        raise ValueError(f"subject names must be strings, got {name!r} ({type(name).__name__})")
    if not name or name != name.strip() or any(c in name for c in "\t\r\n"):
        raise ValueError(f"invalid subject name {name!r} (empty, surrounding spaces, tab or newline)")
    return name


def _as_names(values, what: str) -> list[str]:
    if isinstance(values, str):
        raise ValueError(f"{what} must be a list of subject names, not the string {values!r}")
    names = [_check_name(v) for v in values]
    seen, dups = set(), set()
    for n in names:
        (dups if n in seen else seen).add(n)
    if dups:
        raise ValueError(f"{what} lists subject(s) more than once: {sorted(dups)}")
    return names


def _n_test(n: int, test_fraction: float) -> int:
    # Round half up (Python's round() would round 0.5 to even), then clamp to 1..n-1.
    return min(max(int(math.floor(test_fraction * n + 0.5)), 1), n - 1)


def make_split(subjects, test_fraction: float = 0.34, seed: int = 0, train=None, test=None,
               *, allow_overlap: bool = False) -> dict[str, str]:
    """Assign each subject to ``"train"`` or ``"test"``; returns ``{subject: role}`` sorted by subject.

    ``subjects``: the subject names (unique, non-empty strings).

    Without explicit lists, ``round(test_fraction * n)`` subjects (half rounded up), clamped to
    ``1 .. n-1``, are drawn for testing: the sorted subjects are permuted with
    ``numpy.random.default_rng(seed)`` and the first ones of the permutation are the test set.
    ``test_fraction`` must be within [0, 1].

    ``train`` / ``test`` (lists of names) override the fraction.  Giving only one of them puts
    every other subject into the other role; giving both requires every subject to be in one
    of them.  Names not in ``subjects`` raise :class:`ValueError` naming them, as does a split
    that leaves either role empty.

    A subject in both lists raises :class:`ValueError` unless ``allow_overlap=True``; it is then
    labelled ``"train+test"``.  ``allow_overlap=True`` with a single subject and no lists also
    gives ``"train+test"`` (a single subject otherwise raises).  Overlap is meant for
    single-subject smoke runs of the workflow, never for evaluation.
    """
    names = sorted(_as_names(subjects, "subjects"))
    if not names:
        raise ValueError("no subjects to split")
    known = set(names)

    if train is None and test is None:
        if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float, np.number)):
            raise ValueError(f"test_fraction must be a number, got {test_fraction!r}")
        if not (math.isfinite(float(test_fraction)) and 0.0 <= float(test_fraction) <= 1.0):
            raise ValueError(f"test_fraction must be within [0, 1], got {test_fraction!r}")
        if len(names) == 1:
            if allow_overlap:
                return {names[0]: BOTH}
            raise ValueError(
                f"only one subject ({names[0]}): cannot hold out a test subject; pass "
                "allow_overlap=True to train and test on it (smoke runs only, not an evaluation)")
        n_test = _n_test(len(names), float(test_fraction))
        order = np.random.default_rng(seed).permutation(len(names))
        held_out = {names[i] for i in order[:n_test]}
        return {n: (TEST if n in held_out else TRAIN) for n in names}

    train_set = set(_as_names(train, "train")) if train is not None else None
    test_set = set(_as_names(test, "test")) if test is not None else None
    for what, given in (("train", train_set), ("test", test_set)):
        unknown = sorted(given - known) if given is not None else []
        if unknown:
            raise ValueError(f"{what} list names unknown subject(s) {unknown}; known subjects: {names}")
    if train_set is None:
        train_set = known - test_set
    elif test_set is None:
        test_set = known - train_set
    else:
        missing = sorted(known - train_set - test_set)
        if missing:
            raise ValueError(f"subject(s) {missing} are in neither the train nor the test list")
    overlap = sorted(train_set & test_set)
    if overlap and not allow_overlap:
        raise ValueError(
            f"subject(s) {overlap} are in both the train and the test list; pass allow_overlap=True "
            "only for smoke runs (evaluating on training data is not an evaluation)")
    if not train_set:
        raise ValueError("the split has no training subject")
    if not test_set:
        raise ValueError("the split has no test subject")
    split = {}
    for n in names:
        if n in train_set and n in test_set:
            split[n] = BOTH
        else:
            split[n] = TRAIN if n in train_set else TEST
    return split


def subjects_in(split: dict, role: str) -> list[str]:
    """Sorted subjects used for ``role`` (``"train"`` or ``"test"``); ``"train+test"`` counts for both."""
    if role not in (TRAIN, TEST):
        raise ValueError(f"role must be 'train' or 'test', not {role!r}")
    bad = {s: r for s, r in split.items() if r not in ROLES}
    if bad:
        raise ValueError(f"unknown split label(s) {bad}; expected one of {ROLES}")
    return sorted(s for s, r in split.items() if r in (role, BOTH))


def write_split_tsv(path, split: dict) -> Path:
    """Write ``split`` atomically as ``subject<TAB>split<TAB>note`` rows sorted by subject; returns the path."""
    lines = ["\t".join((*_HEADER, _NOTE))]
    for subject in sorted(split):
        role = split[subject]
        _check_name(subject)
        if role not in ROLES:
            raise ValueError(f"subject {subject}: unknown split label {role!r}; expected one of {ROLES}")
        lines.append(f"{subject}\t{role}\t{OVERLAP_NOTE if role == BOTH else ''}")
    return atomic_write_text(path, "\n".join(lines) + "\n")


def read_split_tsv(path) -> dict[str, str]:
    """Read a split written by :func:`write_split_tsv`; returns ``{subject: role}`` sorted by subject.

    Raises :class:`InputError` naming the file when it is missing or malformed (wrong header,
    wrong column count, unknown label, repeated subject).
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "split file not found")
    lines = [line.rstrip("\r") for line in p.read_text(encoding="utf-8").split("\n")]
    lines = [line for line in lines if line.strip()]
    header = tuple(c.strip() for c in lines[0].split("\t")) if lines else ()
    if header not in (_HEADER, (*_HEADER, _NOTE)):
        raise InputError(p, f"expected the header 'subject<TAB>split<TAB>note', got {lines[0] if lines else 'an empty file'!r}")
    split = {}
    for number, line in enumerate(lines[1:], start=2):
        cells = [c.strip() for c in line.split("\t")]
        if len(cells) != len(header):
            raise InputError(p, f"line {number}: expected {len(header)} tab-separated columns, got {len(cells)}")
        subject, role = cells[:2]
        if not subject:
            raise InputError(p, f"line {number}: empty subject name")
        if role not in ROLES:
            raise InputError(p, f"line {number}: unknown split label {role!r}; expected one of {ROLES}")
        if subject in split:
            raise InputError(p, f"line {number}: subject {subject} is listed twice")
        split[subject] = role
    return dict(sorted(split.items()))


def dataset_splits(subjects_by_dataset, split_config):
    """Train/test split of every dataset that has subjects (see :func:`lpmnet.workflow.splits.make_split`).

    The split is drawn over BIDS subjects: a subject's sessions (subject keys "01_ses-1", "01_ses-2",
    :func:`lpmnet.workflow.paths.unit_key`) all take its side, so that no subject is trained on and tested on.
    Explicit ``train``/``test`` lists name subjects across all datasets; each dataset takes the names it
    has. A name that no dataset has is an error (a typo would otherwise silently change the split), checked
    once every dataset's subjects are known (an IXI dataset has none before its download).
    """
    from lpmnet.workflow.index import subject_label
    from lpmnet.workflow.paths import split_unit

    train = [subject_label(s, "split") for s in split_config.get("train") or []]
    test = [subject_label(s, "split") for s in split_config.get("test") or []]
    subject_of = {name: {unit: split_unit(unit)[0] for unit in units} for name, units in subjects_by_dataset.items()}
    known = {s for subjects in subject_of.values() for s in subjects.values()}
    unknown = sorted(set(train + test) - known)
    if unknown and all(subjects_by_dataset.values()):
        raise ValueError(f"split: subject(s) {', '.join(unknown)} are in no dataset")
    splits = {}
    for name, units in subject_of.items():
        if not units:
            continue
        subjects = sorted(set(units.values()))
        mine_train = [s for s in train if s in subjects]
        mine_test = [s for s in test if s in subjects]
        by_subject = make_split(subjects, split_config["test_fraction"], split_config["seed"],
                                train=mine_train or None, test=mine_test or None, allow_overlap=True)
        splits[name] = {unit: by_subject[subject] for unit, subject in sorted(units.items())}
    return splits
