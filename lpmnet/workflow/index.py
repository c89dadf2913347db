"""Dataset indexing: what the Snakemake workflow needs to know before any job runs (datasets, subjects,
sources, pairs), and the dataset-config checks that the JSON schema cannot express.

Every dataset, whatever its source, becomes one table of :class:`Source` rows (dataset, subject,
modality, path, kind). The rules read this table when Snakemake builds its job graph, so no rule
crawls folders. A problem that concerns one subject (a file that does not exist, a modality missing
for a subject) does not stop the graph from being built: it is carried to that subject's conversion
job, which fails with a message naming the file, while the other subjects go on (``--keep-going``).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from lpmnet.errors import InputError
from lpmnet.workflow.paths import RESULTS, Paths, file_suffix, manifest_path, unit_key

LABEL = re.compile(r"^[A-Za-z0-9]+$")
TABLE_COLUMNS = ("dataset", "subject", "modality", "path")


@dataclass(frozen=True)
class Source:
    """One input volume: a NIfTI file or a DICOM series folder (``kind`` "nifti", "dicom", "missing" or
    "absent").

    ``problem`` explains a "missing" source (a file the dataset lists and that is not there: the run
    reports it and fails) or an "absent" one (a BIDS session or a downloads subject without that modality: it is
    left out of the pairs that need it). ``where`` is the line of the user's subjects table that lists it
    ("" for other sources).
    """

    dataset: str
    subject: str
    modality: str
    path: str
    kind: str
    problem: str = ""
    where: str = ""


def subject_label(raw, where):
    """BIDS label of a subject: "sub-01" and "01" both give "01"; only letters and digits are allowed."""
    label = str(raw).strip().removeprefix("sub-")
    if not LABEL.match(label):
        raise InputError(where, f"subject {raw!r} is not a BIDS label (letters and digits only)")
    return label


def _kind(path):
    p = Path(path)
    if p.is_dir():
        return "dicom"
    if p.name.endswith((".nii", ".nii.gz")):
        return "nifti"
    return "dicom" if not p.suffix else "nifti"


#: What a dataset entry means where it leaves a key out, by source: the demo's generator settings (its
#: template is skull-stripped); IXI's T1 lies off the T2/PD grid and is registered onto T2; BraTS volumes are
#: co-registered and skull-stripped by the challenge; the public volumes worth listing file by file are
#: mostly released co-registered, and a volume off the fixed grid stops its normalisation with a message
#: rather than being fused misaligned.
SOURCE_DEFAULTS = {
    "demo": {"subjects": 6, "seed": 0, "modalities": ["T1", "FLAIR", "PET"], "dicom_modalities": ["T1"],
             "voxel_mm": 2.0, "rigid_motion": True, "skull_stripped": True},
    "ixi": {"fixed": "T2", "retries": 5, "checksums": {}},
    "brats": {"register": False, "skull_stripped": True},
    "downloads": {"register": False, "retries": 5},
}


#: Modality names read as functional images (fused in colour) unless a dataset says otherwise.
FUNCTIONAL = ("PET", "SPECT")


def with_defaults(dataset_config):
    """A dataset entry completed with the defaults of its source (``target_shape`` [] = native grid; the
    modalities named PET or SPECT functional, shown through the colour map ``hot``)."""
    from lpmnet.volumes.colour import DEFAULT_COLOUR_MAP

    completed = {"register": True, "target_shape": [], "skull_stripped": False, "colour_map": DEFAULT_COLOUR_MAP,
                 **SOURCE_DEFAULTS.get(dataset_config["source"], {}), **dataset_config}
    if "functional" not in completed:
        completed["functional"] = [m for m in needed_modalities(completed) if m.upper() in FUNCTIONAL]
    return completed


def colour_pair(pair, dataset_config):
    """Whether a pair is fused in colour: its second modality is functional (see :func:`with_defaults`)."""
    return pair[1] in dataset_config["functional"]


def modality_of_suffix(dataset_config):
    """{file suffix: modality} of the modalities a dataset uses (lpmnet.workflow.paths.file_suffix)."""
    return {file_suffix(m): m for m in needed_modalities(dataset_config)}


def grid_entity(dataset_config):
    """The part of output names that tells the grid: "" on the native grid, "_res-128x192x192" when resized."""
    from lpmnet.volumes.resample import shape_label

    shape = dataset_config.get("target_shape")
    return f"_res-{shape_label(shape)}" if shape else ""


def pair_label(pair, dataset_config):
    """A pair's folder name: "T1-FLAIR", or "T1-FLAIR_res-128x192x192" for paper-style resized volumes."""
    return f"{pair[0]}-{pair[1]}{grid_entity(dataset_config)}"


def needed_modalities(dataset_config):
    """The fixed modality plus every modality of a pair, in a stable order."""
    names = [dataset_config["fixed"]]
    for pair in dataset_config["pairs"]:
        names += [m for m in pair if m not in names]
    return names


def demo_sources(name, dataset_config, results=RESULTS):
    from lpmnet.volumes.demo import demo_layout

    root = Path(Paths(results).sourcedata(name))
    dicom = dataset_config["dicom_modalities"]
    rows = demo_layout(dataset_config["subjects"], dataset_config["modalities"], dicom)
    return [Source(name, subject_label(r["subject"], root), r["modality"], str(root / r["path"]),
                   "dicom" if r["modality"] in dicom else "nifti")
            for r in rows]


def table_sources(name, table):
    """Rows of a user's subjects table for dataset ``name`` (paths relative to the table's folder)."""
    table = Path(table)
    if not table.is_file():
        raise InputError(table, "subjects table not found")
    with open(table, newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        missing = [c for c in TABLE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(table, f"missing column(s) {', '.join(missing)}; expected {', '.join(TABLE_COLUMNS)}")
        rows = [row for row in reader if row["dataset"] == name]
    if not rows:
        raise InputError(table, f"no rows for dataset {name!r}")
    sources, seen = [], set()
    for line, row in enumerate(rows, start=2):
        where = f"{table} line {line}"
        subject = subject_label(row["subject"], where)
        modality = row["modality"].strip()
        if not LABEL.match(modality):
            raise InputError(where, f"modality {modality!r} is not a label (letters and digits only)")
        if (subject, modality) in seen:
            raise InputError(where, f"subject {subject} has {modality} twice")
        seen.add((subject, modality))
        path = Path(row["path"].strip())
        path = path if path.is_absolute() else table.parent / path
        if path.exists():
            sources.append(Source(name, subject, modality, str(path), _kind(path), where=where))
        else:
            sources.append(Source(name, subject, modality, str(path), "missing",
                                  f"{path}: file not found (listed in {table})", where=where))
    return sources


def ixi_modalities(dataset_config):
    """The IXI modalities to fetch: ``modalities`` or those the fixed image and the pairs use."""
    return list(dataset_config.get("modalities") or needed_modalities(dataset_config))


def manifest_sources(name, manifest):
    """Rows of an existing IXI manifest (written after download and extraction)."""
    from lpmnet.volumes.sources import read_manifest

    return [Source(name, r["subject"], r["modality"], r["path"], "nifti")
            for r in read_manifest(manifest) if r["dataset"] == name]


def download_sources(name, dataset_config, results=RESULTS):
    """Sources of a ``downloads`` dataset: every file its entry lists, where the workflow downloads it to."""
    from lpmnet.volumes.sources import url_nifti_extension

    paths = Paths(results)
    return [Source(name, subject, modality,
                   paths.nifti_download(name, subject, modality, url_nifti_extension(entry["url"])), "nifti")
            for subject, files in dataset_config["files"].items() for modality, entry in files.items()]


def folder_sources(name, dataset_config):
    """Sources of a ``brats`` or ``folders`` dataset, indexed from its folder while the graph is built."""
    from lpmnet.volumes.sources import brats_subjects, folder_subjects

    if dataset_config["source"] == "brats":
        rows = brats_subjects(dataset_config["root"])
    else:
        rows = folder_subjects(dataset_config["root"], dataset_config["patterns"])
    limit = dataset_config.get("max_subjects")
    if limit:
        keep = set(sorted({r[0] for r in rows})[:limit])
        rows = [r for r in rows if r[0] in keep]
    return [Source(name, s, m, p, _kind(p)) for s, m, p in rows]


def bids_dataset_index(dataset_config):
    """The :class:`lpmnet.volumes.bids.BidsIndex` of a ``bids`` dataset: the images of the modalities it uses."""
    from lpmnet.volumes.bids import index_bids, modality_filters

    modalities = dataset_config.get("modalities") or {}
    filters = modality_filters(needed_modalities(dataset_config), modalities)
    return index_bids(dataset_config["root"], filters, dataset_config.get("subjects"), dataset_config.get("sessions"))


def bids_sources(name, index):
    """Sources of a ``bids`` dataset: one subject key per BIDS subject, or per session where it has sessions;
    a modality that a session lacks (or has ambiguously) is an "absent" source that says why."""
    sources = [Source(name, unit_key(image.subject, image.session), image.modality, image.path, "nifti")
               for image in index.images]
    sources += [Source(name, unit_key(issue.subject, issue.session), issue.modality, "", "absent", issue.message)
                for issue in index.issues if issue.kind != "chosen"]
    return sources


def dataset_sources(name, dataset_config, results=RESULTS, bids_index=None):
    """All sources of one dataset, completed with "missing" rows for modalities that a subject lacks.

    An ``ixi`` dataset has no sources until its manifest exists: the workflow writes it after download
    and extraction (a checkpoint), then reads it with this function.
    """
    kind = dataset_config["source"]
    if kind == "demo":
        sources = demo_sources(name, dataset_config, results)
        where = "the demo dataset"
    elif kind == "table":
        sources = table_sources(name, dataset_config["table"])
        where = dataset_config["table"]
    elif kind == "ixi":
        manifest = Path(manifest_path(name, results))
        sources = manifest_sources(name, manifest) if manifest.is_file() else []
        where = str(manifest)
    elif kind == "bids":
        # a modality a session lacks is an "absent" source (left out of its pairs), never "missing"
        sources = bids_sources(name, bids_index or bids_dataset_index(dataset_config))
        where = dataset_config["root"]
    elif kind == "downloads":
        sources = download_sources(name, dataset_config, results)
        where = f"datasets.{name}.files"
    else:
        sources = folder_sources(name, dataset_config)
        where = dataset_config["root"]
    # The files a downloads entry lists are all its subjects have: a modality it leaves out is absent (the
    # subject is left out of the pairs that need it), not a file that went missing.
    lacking = "absent" if kind == "downloads" else "missing"
    have = {(s.subject, s.modality) for s in sources}
    for subject in sorted({s.subject for s in sources}):
        for modality in needed_modalities(dataset_config):
            if (subject, modality) not in have:
                sources.append(Source(name, subject, modality, str(where), lacking,
                                      f"{where}: subject {subject} has no {modality} volume"))
    return sources


def check_dataset_modalities(name, dataset_config, sources):
    """A modality that ``fixed`` or ``pairs`` names and no subject has is a mistake: refuse it now, naming the
    key, rather than fail every subject's conversion later. (An IXI dataset has no sources before its
    download: nothing to check yet.)"""
    have = sorted({s.modality for s in sources if s.kind not in ("missing", "absent")})
    if not have:
        return
    for key, names in (("fixed", [dataset_config["fixed"]]), ("pairs", [m for p in dataset_config["pairs"] for m in p])):
        unknown = sorted({m for m in names if m not in have})
        if unknown:
            raise ValueError(f"datasets.{name}.{key}: no subject has {', '.join(unknown)}; "
                             f"the dataset's modalities are {', '.join(have)}")


def ignored_table_rows(dataset_config, sources):
    """Rows of a user's subjects table whose modality neither ``fixed`` nor a pair uses."""
    needed = set(needed_modalities(dataset_config))
    return [s for s in sources if s.where and s.modality not in needed]


def check_dataset_config(name, dataset_config):
    """Consistency that the JSON schema cannot express."""
    fixed = dataset_config["fixed"]
    for pair in dataset_config["pairs"]:
        if pair[0] == pair[1]:
            raise ValueError(f"datasets.{name}.pairs: {pair} fuses a modality with itself")
    for pair in dataset_config["pairs"]:
        if pair[0] in dataset_config.get("functional", ()):
            raise ValueError(f"datasets.{name}.pairs: {pair} puts the functional {pair[0]} first; the anatomical "
                             f"modality comes first, the functional one (fused in colour) second")
    unknown = sorted(set(dataset_config.get("functional", ())) - set(needed_modalities(dataset_config)))
    if unknown:
        raise ValueError(f"datasets.{name}.functional: no pair uses {', '.join(unknown)}")
    if "colour_map" in dataset_config:
        from lpmnet.volumes.colour import colour_map

        try:
            colour_map([0.0], dataset_config["colour_map"])
        except ValueError as err:
            raise ValueError(f"datasets.{name}.colour_map: {err}") from None
    by_suffix = {}
    for modality in needed_modalities(dataset_config):
        other = by_suffix.setdefault(file_suffix(modality), modality)
        if other != modality:
            raise ValueError(f"datasets.{name}: modalities {other} and {modality} are both written with the BIDS "
                             f"suffix {file_suffix(modality)}; name them once")
    if "seg" in needed_modalities(dataset_config):
        raise ValueError(f"datasets.{name}: the segmentation (seg) is carried along, never fused or trained on")
    if dataset_config["source"] == "ixi":
        from lpmnet.volumes.sources import IXI_MODALITIES

        unknown = [m for m in ixi_modalities(dataset_config) if m not in IXI_MODALITIES]
        if unknown:
            raise ValueError(f"datasets.{name}: IXI has T1, T2 and PD, not {', '.join(unknown)}")
        if not dataset_config.get("archive_dir"):
            no_url = [m for m in ixi_modalities(dataset_config) if m not in dataset_config.get("urls", {})]
            if no_url:
                raise ValueError(f"datasets.{name}.urls: no URL for {', '.join(no_url)} (or set archive_dir)")
    if dataset_config["source"] == "downloads":
        from lpmnet.volumes.sources import url_nifti_extension

        for subject, files in dataset_config["files"].items():
            if not isinstance(subject, str):  # the schema's label pattern passes numbers; 01 would become 1
                raise ValueError(f"datasets.{name}.files.{subject}: YAML reads this subject label as a number; "
                                 f"quote it as the label is written (\"01\")")
            for modality, entry in files.items():
                if not url_nifti_extension(entry["url"]):
                    raise ValueError(f"datasets.{name}.files.{subject}.{modality}: {entry['url']} names no .nii or "
                                     f".nii.gz file; only NIfTI volumes are downloaded")
    if dataset_config["source"] == "bids":
        from lpmnet.volumes.bids import modality_filters

        try:
            modality_filters(needed_modalities(dataset_config), dataset_config.get("modalities") or {})
        except ValueError as err:
            raise ValueError(f"datasets.{name}.modalities: {err}") from err
    if dataset_config["source"] == "folders" and not dataset_config.get("patterns"):
        raise ValueError(f"datasets.{name}.patterns: give a file-name regex per modality")
    if dataset_config["source"] == "demo":
        modalities = dataset_config["modalities"]
        for m in needed_modalities(dataset_config):
            if m not in modalities:
                raise ValueError(f"datasets.{name}: modality {m} is used but not in modalities {modalities}")
        if fixed not in modalities:
            raise ValueError(f"datasets.{name}.fixed: {fixed} is not among modalities {modalities}")
