"""A BIDS dataset as a workflow input source: the images of each (subject, session), one per modality.

* :func:`modality_filters` gives each modality name of the workflow its BIDS entity filter: the one the
  configuration gives, else the default of :data:`DEFAULT_FILTERS` (T1w/T1, T2w/T2, FLAIR, PDw/PD, T2starw,
  pet/PET, ct/CT), and checks its keys and values.
* :func:`index_bids` indexes the raw dataset with bids2table (no path parsing here) and picks, for every
  unit, the one image of each modality; what it could not decide is reported as :class:`BidsIssue` lines.
* :func:`read_sidecar` reads the :data:`SIDECAR_FIELDS` of one image from its JSON sidecars, inherited the
  BIDS way (a job calls it for its own file; :func:`index_bids` reads no sidecar, so that the index of a
  1,000-subject dataset takes well under two seconds while Snakemake builds its job graph).

The rules
---------
* ``root`` must be a folder holding ``dataset_description.json``; otherwise an
  :class:`~lpmnet.errors.InputError` names the folder and what is missing. Only NIfTI images (``.nii``,
  ``.nii.gz``) in the subject folders (``sub-<label>/``) are candidates: files under ``derivatives/``,
  ``sourcedata/`` and ``code/`` are never indexed. Subject folders whose label is not letters and digits
  are not BIDS and are skipped (with a warning in the log).
* ``subjects`` / ``sessions`` are optional lists of labels, with or without the ``sub-`` / ``ses-`` prefix,
  that select the units to index (none or an empty list: all). A listed label the dataset does not have
  is a :class:`ValueError` naming it: a typo must not silently shrink the study.
* A unit is one (subject, session); in a dataset without sessions the session is ``None``. The units are
  the (subject, session) that have at least one image matching one of the modality filters.
* A filter maps BIDS entities (``acq``, ``ce``, ``rec``, ``run``, ``trc``, ``echo``, ``part``, ``inv``...,
  but not ``sub`` / ``ses``, which the lists above select), ``datatype``, ``suffix`` and ``extension`` to
  a value; ``null`` (``None``) asks for the files without that entity (``ce: null``: not contrast
  enhanced). For each unit and modality the candidates are the images matching every key of the filter
  (index entities such as ``run`` compared as integers, so ``run: 1`` matches ``run-01``). Then:

  - none: the unit has no image of that modality (it is fused for the pairs whose modalities it has; the
    workflow says so in each pair's ``failed_subjects.tsv``) and an issue of kind ``"missing"`` says which
    modality, with its filter, it lacks;
  - several that differ only in ``run``: the highest run is taken (the last acquired, usually the repeat
    of a failed first; a file without ``run`` counts as the earliest), and an issue of kind ``"chosen"``
    names the chosen and the other files;
  - several that differ otherwise: none of them is taken (the unit goes on as if it had none) and an issue
    of kind ``"ambiguous"`` lists the files and names the entities that tell them apart ("add acq to the
    filter of T1 in the dataset's modalities"). Never a silent pick.

* The images are sorted by subject, then session; within a unit they follow the order of the filters.
  Issues come in the same order.
* ``participants.tsv`` columns are carried per subject label (values as the strings in the file, ``n/a``
  kept as ``n/a``); a dataset without the file gives ``{}``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import bids2table

from lpmnet.errors import InputError
from lpmnet.volumes.io import read_json_object, read_tsv_rows, sidecar_path

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_FILTERS",
    "SIDECAR_FIELDS",
    "BidsImage",
    "BidsIssue",
    "BidsIndex",
    "modality_filters",
    "index_bids",
    "read_sidecar",
]

#: The filter of each common modality name (both spellings the configurations use).
DEFAULT_FILTERS: dict[str, dict] = {
    "T1w": {"suffix": "T1w"},
    "T1": {"suffix": "T1w"},
    "T2w": {"suffix": "T2w"},
    "T2": {"suffix": "T2w"},
    "FLAIR": {"suffix": "FLAIR"},
    "PDw": {"suffix": "PDw"},
    "PD": {"suffix": "PDw"},
    "T2starw": {"suffix": "T2starw"},
    "pet": {"datatype": "pet", "suffix": "pet"},
    "PET": {"datatype": "pet", "suffix": "pet"},
    "ct": {"suffix": "ct"},
    "CT": {"suffix": "ct"},
}

#: The sidecar fields :func:`read_sidecar` returns (those the workflow records or checks).
SIDECAR_FIELDS = ("Modality", "TracerName", "TracerRadionuclide", "ContrastBolusIngredient",
                  "MagneticFieldStrength", "Manufacturer", "SkullStripped")

NIFTI_EXTENSIONS = (".nii", ".nii.gz")
#: Folders of a BIDS dataset that hold no raw data (bids2table only walks sub-* folders; this guards it).
NOT_RAW = frozenset({"derivatives", "sourcedata", "code"})
#: Filter keys that are not entities, and the bids2table column each one reads.
SPECIAL_KEYS = {"datatype": "datatype", "suffix": "suffix", "extension": "ext"}
#: The entities the subjects / sessions lists select (a filter must not).
UNIT_KEYS = {"sub": "subjects", "ses": "sessions"}
_LABEL = re.compile(r"[A-Za-z0-9]+")
_SUBJECT_FOLDER = re.compile(r"sub-[A-Za-z0-9]+")  # what bids2table takes for a subject folder


@dataclass(frozen=True)
class BidsImage:
    """One image of a unit: ``subject`` / ``session`` labels without prefix (session ``None`` in a dataset
    without sessions), the workflow's ``modality`` name, the absolute ``path`` of the NIfTI file and its
    ``relpath`` below the BIDS root (for BIDS URIs in the derivatives)."""

    subject: str
    session: str | None
    modality: str
    path: str
    relpath: str


@dataclass(frozen=True)
class BidsIssue:
    """Something :func:`index_bids` decided (``kind`` ``"chosen"``) or could not decide (``"ambiguous"``,
    ``"missing"``: the unit has no image of that modality); ``message`` is one line naming the unit,
    modality and files."""

    subject: str
    session: str | None
    modality: str | None
    kind: str
    message: str


@dataclass(frozen=True)
class BidsIndex:
    """The indexed dataset: the ``images`` of every unit (sorted), the ``issues``, the
    ``participants`` table (subject label -> {column: value}) and the raw ``description``
    (dataset_description.json)."""

    images: tuple[BidsImage, ...]
    issues: tuple[BidsIssue, ...]
    participants: dict
    description: dict


# ---------------------------------------------------------------------------------------------- filters

@lru_cache(maxsize=1)
def _entity_columns() -> dict[str, bool]:
    """The BIDS entities bids2table has columns for (minus sub/ses and the special keys) -> index (int)?"""
    out = {}
    for field in bids2table.get_arrow_schema():
        meta = field.metadata or {}
        if b"entity" not in meta or field.name in UNIT_KEYS or field.name in ("datatype", "suffix", "ext"):
            continue
        out[field.name] = meta.get(b"format") == b"index"
    return out


def _allowed_keys() -> str:
    return ", ".join([*_entity_columns(), *SPECIAL_KEYS])


def _check_filter(modality, flt) -> dict:
    """``flt`` checked and normalised (index entities as int, extension with its dot); ValueError otherwise."""
    if not isinstance(flt, Mapping):
        raise ValueError(f"the BIDS filter of modality {modality!r} must be a mapping of entities to values, "
                         f"got {flt!r}")
    if not flt:
        raise ValueError(f"the BIDS filter of modality {modality!r} is empty (it would match every image); "
                         "give at least its suffix")
    entities = _entity_columns()
    out = {}
    for key, value in flt.items():
        where = f"BIDS filter of modality {modality!r}"
        if key in UNIT_KEYS:
            raise ValueError(f"{where}: {key!r} is not a filter key; {UNIT_KEYS[key]} are selected with the "
                             f"'{UNIT_KEYS[key]}' list")
        if key not in entities and key not in SPECIAL_KEYS:
            raise ValueError(f"{where}: unknown key {key!r}; use {_allowed_keys()}")
        if value is None:
            if key in ("suffix", "extension"):
                raise ValueError(f"{where}: {key} cannot be null (every BIDS file has one)")
            out[key] = None  # the file must not have this entity
        elif entities.get(key):  # an index entity (run, echo, inv...): compared as an integer
            if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str)
                                                                           and value.isdigit())):
                raise ValueError(f"{where}: {key} must be a non-negative integer, got {value!r}")
            out[key] = int(value)
        elif not isinstance(value, str):
            raise ValueError(f"{where}: the value of {key} must be a string, got {value!r}")
        elif key == "extension":
            ext = value if value.startswith(".") else "." + value
            if ext not in NIFTI_EXTENSIONS:
                raise ValueError(f"{where}: extension {value!r}: only NIfTI images ({', '.join(NIFTI_EXTENSIONS)}) "
                                 "are indexed")
            out[key] = ext
        elif not _LABEL.fullmatch(value):
            raise ValueError(f"{where}: {key} value {value!r} is not a BIDS label (letters and digits only"
                             + (f", without the '{key}-' prefix)" if value.startswith(f"{key}-") else ")"))
        else:
            out[key] = value
    return out


def modality_filters(modalities, given=None) -> dict[str, dict]:
    """The BIDS filter of each modality name in ``modalities``: ``given[name]`` if given, else
    ``DEFAULT_FILTERS[name]``; a ValueError names a modality with neither, and an unknown key or a bad value.

    Filter keys: the BIDS entities bids2table has columns for (not ``sub`` / ``ses``), ``datatype``,
    ``suffix`` and ``extension``. Values are strings (index entities such as ``run`` may be ints; they are
    returned as ints), or ``None`` for "the file has no such entity".
    """
    if isinstance(modalities, str):
        modalities = [modalities]
    given = dict(given or {})
    out = {}
    for name in modalities:
        if name in given:
            flt = given[name]
        elif name in DEFAULT_FILTERS:
            flt = DEFAULT_FILTERS[name]
        else:
            raise ValueError(f"modality {name!r} has no BIDS filter: give one (e.g. {{suffix: T1w, acq: mprage}}) "
                             f"or use a name with a default ({', '.join(DEFAULT_FILTERS)})")
        out[name] = _check_filter(name, flt)
    return out


def _show_filter(flt) -> str:
    return "{" + ", ".join(f"{k}: {'null' if v is None else v}" for k, v in flt.items()) + "}"


# ---------------------------------------------------------------------------------------------- indexing

def _labels(values, prefix, what):
    """Requested labels without their prefix, checked; None for 'all'."""
    if not values:
        return None
    if isinstance(values, (str, int)):
        values = [values]
    out = []
    for value in values:
        text = str(value)
        label = text[len(prefix) + 1:] if text.startswith(prefix + "-") else text
        if not _LABEL.fullmatch(label):
            raise ValueError(f"{what} {text!r} is not a BIDS label (letters and digits, optionally after "
                             f"'{prefix}-')")
        out.append(label)
    return list(dict.fromkeys(out))


def _some(names, n=10) -> str:
    names = sorted(names)
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "") if names else "none"


def _unit_name(subject, session) -> str:
    return f"sub-{subject}" + (f" ses-{session}" if session is not None else "")


def _forget_bids2table_caches():
    """bids2table memoises 'is this a dataset', globs and JSON reads for the life of the process; a long
    process (tests, a Snakemake run: block) must see the files as they are now."""
    for module in ("_indexing", "_metadata"):
        mod = getattr(bids2table, module, None)
        for name in ("_is_bids_dataset", "_get_bids_dataset", "_glob", "_load_json"):
            clear = getattr(getattr(mod, name, None), "cache_clear", None)
            if clear is not None:
                clear()


def _read_participants(path: Path) -> dict:
    if not path.is_file():
        return {}
    rows = read_tsv_rows(path, ["participant_id"])
    out = {}
    for line, row in enumerate(rows, start=2):
        if None in row or None in row.values():
            raise InputError(path, f"line {line} does not have one value per column (tab-separated)")
        pid = row["participant_id"]
        label = pid[4:] if pid.startswith("sub-") else pid
        if label in out:
            raise InputError(path, f"line {line}: participant {pid!r} is listed twice")
        out[label] = {k: v for k, v in row.items() if k != "participant_id"}
    return out


def _signature(cols, i, entity_names):
    """What tells image ``i`` apart from others of its unit: its entities (valid or not), datatype, extension."""
    sig = {name: cols[name][i] for name in entity_names if cols[name][i] is not None}
    sig["datatype"] = cols["datatype"][i]
    sig["suffix"] = cols["suffix"][i]
    sig["extension"] = cols["ext"][i]
    for key, value in cols["extra_entities"][i] or ():  # entities bids2table does not know or could not read
        sig.setdefault(key, value)
    return sig


def _resolve(cols, cands, entity_names):
    """(chosen index or None, the keys that tell the candidates apart, their signatures)."""
    sigs = [_signature(cols, i, entity_names) for i in cands]
    keys = sorted({k for s in sigs for k in s})
    differ = [k for k in keys if len({s.get(k) for s in sigs}) > 1]
    runs = [cols["run"][i] for i in cands]
    if differ == ["run"] and len(set(runs)) == len(runs) and all(s.get("run") == r for s, r in zip(sigs, runs)):
        return max(cands, key=lambda i: -1 if cols["run"][i] is None else cols["run"][i]), differ, sigs
    return None, differ, sigs


def _ambiguous(where, name, flt, paths, differ, sigs, entity_names) -> str:
    """The message of an ambiguous modality: the files, what tells them apart and how to choose."""
    addable = [k for k in differ if k != "run" and (k in entity_names or k in SPECIAL_KEYS) and k not in flt]
    foreign = [k for k in differ if k not in entity_names and k not in SPECIAL_KEYS]
    if addable:
        hint = f"add {', '.join(addable)} to the filter of {name} in the dataset's modalities"
        if any(k not in s for k in addable for s in sigs):
            hint += " (null selects the files without it)"
    elif foreign:
        hint = (f"{', '.join(foreign)} {'is not a BIDS entity' if len(foreign) == 1 else 'are not BIDS entities'}"
                " a filter can use: rename the files or move the unwanted ones out of the dataset")
    else:
        hint = "keep one of them and move the others out of the dataset"
    told = f"they differ in {', '.join(differ)}" if differ else "they differ only in their folder"
    return (f"{where}: {len(paths)} images match the filter of {name} {_show_filter(flt)} and {told}: "
            f"{', '.join(paths)}; the unit is left out: {hint}")


def index_bids(root, filters, subjects=None, sessions=None) -> BidsIndex:
    """Index the raw BIDS dataset at ``root``: one image per modality of ``filters`` (name -> filter, see
    :func:`modality_filters`) for every unit that has one, following the rules of the module docstring."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "BIDS dataset folder not found" if not root.exists() else "is not a folder")
    desc_path = root / "dataset_description.json"
    if not desc_path.is_file():
        raise InputError(root, "not a BIDS dataset: dataset_description.json is missing")
    description = read_json_object(desc_path, "dataset description")
    filters = {name: _check_filter(name, flt) for name, flt in dict(filters).items()}
    if not filters:
        raise ValueError("no modality filters given: the BIDS index needs at least one modality")
    want_subjects = _labels(subjects, "sub", "subject")
    want_sessions = _labels(sessions, "ses", "session")

    skipped = [d for d in os.listdir(root) if d.startswith("sub-") and not _SUBJECT_FOLDER.fullmatch(d)
               and (root / d).is_dir()]
    if skipped:
        log.warning("%s: skipped %s: a BIDS subject label is letters and digits only", root, _some(skipped))

    _forget_bids2table_caches()
    table = bids2table.index_dataset(root, include_subjects=[f"sub-{s}" for s in want_subjects or ()] or None)
    entity_names = [name for name in _entity_columns() if name in table.column_names]
    needed = ["sub", "ses", "datatype", "suffix", "ext", "extra_entities", "root", "path", *entity_names]
    cols = {name: table.column(name).to_pylist() for name in dict.fromkeys(needed)}  # column lists: fast

    if want_subjects:
        have = set(cols["sub"])
        unknown = [s for s in want_subjects if s not in have]
        if unknown:
            present = [d for d in os.listdir(root) if _SUBJECT_FOLDER.fullmatch(d)]
            raise ValueError(f"subject(s) {', '.join('sub-' + s for s in unknown)} not in the BIDS dataset {root}: "
                             f"no files under {', '.join('sub-' + s + '/' for s in unknown)} "
                             f"(subjects: {_some(present)})")
    if want_sessions:
        have = {s for s in cols["ses"] if s is not None}
        unknown = [s for s in want_sessions if s not in have]
        if unknown:
            scope = "the selected subjects" if want_subjects else "the BIDS dataset"
            raise ValueError(f"session(s) {', '.join('ses-' + s for s in unknown)} not in {scope} at {root} "
                             f"(sessions: {_some('ses-' + s for s in have)})")
        want_sessions = set(want_sessions)

    # One pass over the rows: which image matches which modality, per unit. Filter values were normalised
    # to the column's type, so a plain == compares them (None: the entity is absent).
    checks = {name: [(SPECIAL_KEYS.get(k, k), v) for k, v in flt.items()] for name, flt in filters.items()}
    units: dict[tuple, dict[str, list[int]]] = {}
    files: dict[tuple, list[str]] = {}
    for i, relpath in enumerate(cols["path"]):
        if cols["ext"][i] not in NIFTI_EXTENSIONS:
            continue
        parts = relpath.replace(os.sep, "/").split("/")
        if not parts[0].startswith("sub-") or NOT_RAW.intersection(parts):
            continue
        unit = (cols["sub"][i], cols["ses"][i])
        if want_sessions is not None and unit[1] not in want_sessions:
            continue
        files.setdefault(unit, []).append(parts[-1])
        for name, check in checks.items():
            if all(cols[col][i] == value for col, value in check):
                units.setdefault(unit, {}).setdefault(name, []).append(i)

    images, issues = [], []
    for unit in sorted(units, key=lambda u: (u[0], u[1] is not None, u[1] or "")):
        subject, session = unit
        where = _unit_name(subject, session)
        chosen, problems, notes = [], [], []
        for name, flt in filters.items():
            # bids2table lists a subject's files in the file system's order: sort them for stable messages
            cands = sorted(units[unit].get(name, ()), key=cols["path"].__getitem__)
            if not cands:
                problems.append(BidsIssue(subject, session, name, "missing",
                                          f"{where}: no {name} image (filter {_show_filter(flt)}) among its "
                                          f"{len(files[unit])} NIfTI file(s) ({_some(files[unit], 6)})"))
                continue
            if len(cands) == 1:
                chosen.append((name, cands[0]))
                continue
            pick, differ, sigs = _resolve(cols, cands, entity_names)
            if pick is not None:
                others = ", ".join(cols["path"][i] for i in cands if i != pick)
                chosen.append((name, pick))
                notes.append(BidsIssue(subject, session, name, "chosen",
                                       f"{where}: {len(cands)} runs of {name} match {_show_filter(flt)}; took "
                                       f"the highest run {cols['path'][pick]}, not {others}"))
                continue
            problems.append(BidsIssue(subject, session, name, "ambiguous",
                                      _ambiguous(where, name, flt, [cols["path"][i] for i in cands], differ,
                                                 sigs, entity_names)))
        issues.extend(problems + notes)
        for name, i in chosen:  # bids2table's root column is the absolute root folder
            relpath = cols["path"][i]
            images.append(BidsImage(subject, session, name, os.path.join(cols["root"][i], relpath), relpath))

    return BidsIndex(images=tuple(images), issues=tuple(issues),
                     participants=_read_participants(root / "participants.tsv"), description=description)


# ---------------------------------------------------------------------------------------------- sidecars

def read_sidecar(path) -> dict:
    """The :data:`SIDECAR_FIELDS` present in the JSON sidecars of the image ``path``, inherited the BIDS way
    (a file-level key overrides one of a sidecar higher up). An unreadable sidecar next to the file is an
    InputError naming it (bids2table would skip it silently)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "file not found")
    own = sidecar_path(p)
    if own.exists():
        read_json_object(own, "JSON sidecar")  # raises naming the file when it is not a JSON object
    _forget_bids2table_caches()
    meta = bids2table.load_bids_metadata(p, inherit=True)
    return {key: meta[key] for key in SIDECAR_FIELDS if key in meta}
