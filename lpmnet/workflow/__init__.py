"""What the Snakemake workflow needs to know before any job runs: datasets, subjects, sources, pairs.

Every dataset, whatever its source, becomes one table of :class:`Source` rows (dataset, subject,
modality, path, kind). The rules read this table when Snakemake builds its job graph, so no rule
crawls folders. A problem that concerns one subject (a file that does not exist, a modality missing
for a subject) does not stop the graph from being built: it is carried to that subject's conversion
job, which fails with a message naming the file, while the other subjects go on (``--keep-going``).
"""

from __future__ import annotations

import csv
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lpmnet import PRELOADED_MODULES
from lpmnet.errors import InputError
from lpmnet.methods.lpmnet.pretrained import CHOICES as PRETRAINED_CHOICES, KINDS as PRETRAINED_KINDS

RESULTS = "results"
#: Environment variable naming a folder where every job records the third-party modules it imported.
RECORD_IMPORTS = "LPMNET_RECORD_IMPORTS"
LABEL = re.compile(r"^[A-Za-z0-9]+$")
TABLE_COLUMNS = ("dataset", "subject", "modality", "path")


@dataclass(frozen=True)
class Source:
    """One input volume: a NIfTI file or a DICOM series folder (``kind`` "nifti", "dicom" or "missing").

    ``problem`` explains a "missing" source; the conversion job reports it. ``where`` is the line of
    the user's subjects table that lists it ("" for other sources).
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


#: What a dataset entry means where it leaves a key out, by source: the demo's generator settings; IXI's
#: T1 lies off the T2/PD grid and is registered onto T2; BraTS volumes are co-registered by the challenge.
SOURCE_DEFAULTS = {
    "demo": {"subjects": 6, "seed": 0, "modalities": ["T1", "FLAIR", "PET"], "dicom_modalities": ["T1"],
             "voxel_mm": 2.0, "rigid_motion": True},
    "ixi": {"fixed": "T2", "retries": 5, "checksums": {}},
    "brats": {"register": False},
}


def with_defaults(dataset_config):
    """A dataset entry completed with the defaults of its source (``target_shape`` [] = native grid)."""
    return {"register": True, "target_shape": [], **SOURCE_DEFAULTS.get(dataset_config["source"], {}),
            **dataset_config}


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

    root = Path(results) / name / "sourcedata"
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


def manifest_path(name, results=RESULTS):
    """The subjects table every dataset becomes (see :mod:`lpmnet.volumes.sources`)."""
    return f"{results}/{name}/manifest.tsv"


def ixi_modalities(dataset_config):
    """The IXI modalities to fetch: ``modalities`` or those the fixed image and the pairs use."""
    return list(dataset_config.get("modalities") or needed_modalities(dataset_config))


def manifest_sources(name, manifest):
    """Rows of an existing IXI manifest (written after download and extraction)."""
    from lpmnet.volumes.sources import read_manifest

    return [Source(name, r["subject"], r["modality"], r["path"], "nifti")
            for r in read_manifest(manifest) if r["dataset"] == name]


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


def dataset_sources(name, dataset_config, results=RESULTS):
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
    else:
        sources = folder_sources(name, dataset_config)
        where = dataset_config["root"]
    have = {(s.subject, s.modality) for s in sources}
    for subject in sorted({s.subject for s in sources}):
        for modality in needed_modalities(dataset_config):
            if (subject, modality) not in have:
                sources.append(Source(name, subject, modality, str(where), "missing",
                                      f"{where}: subject {subject} has no {modality} volume"))
    return sources


def check_dataset_modalities(name, dataset_config, sources):
    """A modality that ``fixed`` or ``pairs`` names and no subject has is a mistake: refuse it now, naming the
    key, rather than fail every subject's conversion later. (An IXI dataset has no sources before its
    download: nothing to check yet.)"""
    have = sorted({s.modality for s in sources if s.kind != "missing"})
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
    if dataset_config["source"] == "folders" and not dataset_config.get("patterns"):
        raise ValueError(f"datasets.{name}.patterns: give a file-name regex per modality")
    if dataset_config["source"] == "demo":
        modalities = dataset_config["modalities"]
        for m in needed_modalities(dataset_config):
            if m not in modalities:
                raise ValueError(f"datasets.{name}: modality {m} is used but not in modalities {modalities}")
        if fixed not in modalities:
            raise ValueError(f"datasets.{name}.fixed: {fixed} is not among modalities {modalities}")


def convert_source(kind, path, problem="", out_path=None):
    """Read one source as the conversion does, refusing bad input with an InputError naming the file.

    ``kind`` is a :class:`Source` kind; a "missing" source raises its ``problem``. With ``out_path``
    the checked volume is written there as NIfTI (DICOM series with a scanner-space header); without
    it the source is only checked, which is how a subject's inputs are vetted before anything else
    runs (:func:`check_subject_sources`).
    """
    from lpmnet.volumes.io import load_volume, save_volume

    if kind == "missing":
        where, _, reason = problem.partition(": ")
        raise InputError(where, reason)
    if kind == "dicom":
        from lpmnet.volumes.dicom import dicom_series_to_nifti, read_dicom_series

        if out_path is None:
            read_dicom_series(path)
        else:
            dicom_series_to_nifti(path, out_path)
        return
    volume = load_volume(path)  # refuses missing, unreadable, 4D, NaN and constant volumes
    if out_path is not None:
        save_volume(out_path, volume.data, volume.affine, header=volume.header)


#: Columns of a subject's input check (``sub-<id>_inputs.tsv``) and of a dataset's ``input_status.tsv``.
INPUT_STATUS_COLUMNS = ("subject", "modality", "status", "problem")


def check_subject_sources(subject, sources):
    """Status rows of one subject's sources: ``sources`` maps modality -> (kind, path, problem).

    A source that its conversion would refuse gets status "failed" and the conversion's one-line
    message; nothing is raised, so that the other subjects' results can still be tabulated.
    """
    from lpmnet.errors import LPMNetError

    rows = []
    for modality, (kind, path, problem) in sorted(sources.items()):
        try:
            convert_source(kind, path, problem)
            rows.append({"subject": subject, "modality": modality, "status": "ok", "problem": ""})
        except LPMNetError as err:
            rows.append({"subject": subject, "modality": modality, "status": "failed",
                         "problem": " ".join(str(err).split())})
    return rows


def write_input_status(path, rows):
    from lpmnet.volumes.io import atomic_write_text

    lines = ["\t".join(INPUT_STATUS_COLUMNS)]
    lines += ["\t".join(str(row[c]) for c in INPUT_STATUS_COLUMNS) for row in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")


def read_input_status(path):
    """Rows of :func:`write_input_status` (one subject's check or a whole dataset's)."""
    from lpmnet.volumes.io import read_tsv_rows

    return read_tsv_rows(path, INPUT_STATUS_COLUMNS)


def failed_inputs(status_rows):
    """{subject: {modality: problem}} of the sources that failed their check."""
    failed = {}
    for row in status_rows:
        if row["status"] != "ok":
            failed.setdefault(row["subject"], {})[row["modality"]] = row["problem"]
    return failed


def pair_failures(status_rows, split, modalities):
    """Rows (subject, split, modality, problem) of the split's subjects that a pair of ``modalities``
    (with the fixed one) cannot use, because one of those sources failed its check."""
    failures = failed_inputs(status_rows)
    return [{"subject": subject, "split": split[subject], "modality": modality, "problem": problem}
            for subject in sorted(split) for modality, problem in sorted(failures.get(subject, {}).items())
            if modality in modalities]


def importable_working_directory():
    """Put the working directory on ``sys.path``: a user's own method (``methods.<name>.network``, a dotted
    module name) is a module there, imported by the workflow and by each job, whose scripts start in
    their own folder."""
    import os
    import sys

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def run_job(smk, main):
    """Entry point of the workflow's scripts: ``run_job(snakemake, main)``.

    The job's stderr and log records go to its ``log:`` file. Bad input (an
    :class:`~lpmnet.errors.LPMNetError`) ends the job with one line naming the file and the problem,
    in the log and on the console, and a non-zero exit so that Snakemake removes the job's outputs.
    """
    import logging
    import os

    from lpmnet.errors import LPMNetError
    from lpmnet.runtime import keep_freed_memory_for_reuse

    keep_freed_memory_for_reuse()
    importable_working_directory()
    record_folder = os.environ.get(RECORD_IMPORTS)
    console = sys.stderr
    log_file = open(smk.log[0], "w", buffering=1) if smk.log else console
    sys.stderr = log_file
    logging.basicConfig(stream=log_file, level=logging.INFO, force=True,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        main(smk)
    except LPMNetError as err:
        message = f"lpmnet: error in rule {smk.rule}: {err}"
        print(message, file=log_file)
        if log_file is not console:
            print(message, file=console)
        sys.exit(1)
    finally:
        if record_folder:
            record_job_imports(record_folder, smk.rule)


def job_imports():
    """What this process imported after Snakemake's preamble: ``(third_party, own)``, the sorted top-level
    names of the third-party modules and the names of the lpmnet modules."""
    loaded = [name for name, module in list(sys.modules.items())
              if module is not None and name not in PRELOADED_MODULES]
    own = sorted(name for name in loaded if name == "lpmnet" or name.startswith("lpmnet."))
    tops = {name.partition(".")[0] for name in loaded} - set(sys.stdlib_module_names) - {"lpmnet", "__main__"}
    return sorted(tops), own


def record_job_imports(folder, rule):
    """Write ``<folder>/<rule>.<pid>.json`` with :func:`job_imports`; the conda environments' test reads
    these to check that each rule's environment provides what its jobs import."""
    import json
    import os

    third_party, own = job_imports()
    path = Path(folder) / f"{rule}.{os.getpid()}.json"
    partial = path.with_name(f".{path.name}.partial")  # lpmnet.volumes.io's writer would import numpy and nibabel
    partial.write_text(json.dumps({"rule": rule, "third_party": third_party, "lpmnet": own}, indent=1))
    os.replace(partial, path)


def dataset_splits(subjects_by_dataset, split_config):
    """Train/test split of every dataset that has subjects (see :func:`lpmnet.workflow.splits.make_split`).

    Explicit ``train``/``test`` lists name subjects across all datasets; each dataset takes the names it
    has. A name that no dataset has is an error (a typo would otherwise silently change the split), checked
    once every dataset's subjects are known (an IXI dataset has none before its download).
    """
    from lpmnet.workflow.splits import make_split

    train = [subject_label(s, "split") for s in split_config.get("train") or []]
    test = [subject_label(s, "split") for s in split_config.get("test") or []]
    known = {s for subjects in subjects_by_dataset.values() for s in subjects}
    unknown = sorted(set(train + test) - known)
    if unknown and all(subjects_by_dataset.values()):
        raise ValueError(f"split: subject(s) {', '.join(unknown)} are in no dataset")
    splits = {}
    for name, subjects in subjects_by_dataset.items():
        if not subjects:
            continue
        mine_train = [s for s in train if s in subjects]
        mine_test = [s for s in test if s in subjects]
        splits[name] = make_split(subjects, split_config["test_fraction"], split_config["seed"],
                                  train=mine_train or None, test=mine_test or None, allow_overlap=True)
    return splits


# --- The fusion methods of the workflow (config section ``methods``) -------------------------------

#: A method's name: one row of every table and the desc- entity of its files.
METHOD_NAME = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
#: The keys of one entry of ``methods``.
METHOD_KEYS = ("network", "model", "training", "fusion", "checkpoint")
#: Engine settings of the ``training`` section shared by every method (not part of a recipe).
ENGINE_KEYS = ("checkpoint_every",)


def resolve_methods(methods_config, training_config, classical=()):
    """Every method of the config's ``methods`` section, checked and with its recipe filled in.

    Returns {name: {"network", "model", "training" (the full :class:`lpmnet.engine.train.TrainConfig` as a
    dict; None with ``checkpoint``), "fusion", "checkpoint"}} in the config's order. An entry's
    ``network`` (default: its name) is a registered method or the dotted name of a module defining
    METHOD; ``training`` overrides the recipe of the network's original, ``fusion`` gives settings of
    its fusion, ``checkpoint`` a file to fuse with instead of training. Anything wrong raises one
    ValueError naming the key, e.g. ``methods.mambadfuse.training.lr: ...``.
    """
    import inspect
    from dataclasses import asdict

    from lpmnet.methods import get_method
    from lpmnet.engine.train import TrainConfig

    if not methods_config:
        raise ValueError("methods: list at least one fusion method")
    resolved = {}
    for name, entry in methods_config.items():
        where = f"methods.{name}"
        if not METHOD_NAME.fullmatch(str(name)):
            raise ValueError(f"{where}: a method name is lower-case letters and digits, words joined by '-'")
        if name in classical:
            raise ValueError(f"{where}: {name} is a classical rule of fusion.classical")
        entry = dict(entry or {})
        unknown = sorted(set(entry) - set(METHOD_KEYS))
        if unknown:
            raise ValueError(f"{where}.{unknown[0]}: unknown key; an entry has {', '.join(METHOD_KEYS)}")
        network = entry.get("network", name)
        try:
            spec = get_method(network)
        except ValueError as err:
            raise ValueError(f"{where}.network: {err}") from None
        model = dict(entry.get("model") or {})
        try:
            inspect.signature(spec.build).bind(**model)
        except TypeError as err:
            raise ValueError(f"{where}.model: {err} (of {spec.name}'s network)") from None
        fusion = dict(entry.get("fusion") or {})
        unknown = sorted(set(fusion) - set(spec.settings))
        if unknown:
            raise ValueError(f"{where}.fusion.{unknown[0]}: {spec.name} has no such fusion setting; its settings: "
                             f"{', '.join(spec.settings) or 'none'}")
        checkpoint = entry.get("checkpoint")
        given = entry.get("training", {}) or {}
        for key, value in (("checkpoint", checkpoint), ("training.init", given.get("init"))):
            if value in PRETRAINED_CHOICES and spec.name != "lpmnet":
                raise ValueError(f"{where}.{key}: the pretrained models are LPM-Net's, not {spec.name}'s")
        training = None
        if checkpoint is None:
            overrides = dict(entry.get("training") or {})
            allowed = set(TrainConfig.settings()) - {"method", "model", *ENGINE_KEYS}
            unknown = sorted(set(overrides) - allowed)
            if unknown:
                raise ValueError(f"{where}.training.{unknown[0]}: unknown training setting; settings: "
                                 f"{', '.join(sorted(allowed))}")
            engine = {k: training_config[k] for k in ENGINE_KEYS if k in training_config}
            try:
                training = asdict(TrainConfig(method=network, model=model, **engine, **overrides))
            except (TypeError, ValueError) as err:
                raise ValueError(f"{where}.training: {err}") from None
        else:
            for key in ("training", "model"):
                if entry.get(key):
                    raise ValueError(f"{where}.{key}: a method fused with a given checkpoint is not trained and "
                                     "takes its network from the checkpoint")
        resolved[name] = {"network": network, "model": model, "training": training,
                          "fusion": fusion, "checkpoint": checkpoint}
    return resolved


def resolve_pretraining(section, datasets):
    """The training settings (a full :class:`lpmnet.engine.train.TrainConfig` dict) of config section
    ``pretrained``, after checking that its dataset and every pair of its models exist; a bad entry
    raises ValueError naming the key."""
    from dataclasses import asdict

    from lpmnet.engine.train import TrainConfig

    dataset = section.get("dataset")
    if dataset not in datasets:
        raise ValueError(f"pretrained.dataset: {dataset!r} is not a dataset of section datasets")
    for kind, entry in section.get("models", {}).items():
        if kind not in PRETRAINED_KINDS:
            raise ValueError(f"pretrained.models.{kind}: the shipped kinds are {', '.join(PRETRAINED_KINDS)}")
        missing = [p for p in entry["pairs"] if list(p) not in [list(q) for q in datasets[dataset]["pairs"]]]
        if missing:
            raise ValueError(f"pretrained.models.{kind}.pairs: {missing[0]} is not a pair of datasets.{dataset}")
    try:
        return asdict(TrainConfig(method="lpmnet", **section.get("training", {})))
    except (TypeError, ValueError) as err:
        raise ValueError(f"pretrained.training: {err}") from None


class MethodConfigs(Mapping):
    """The resolved ``methods`` section (:func:`resolve_methods`), resolved on first use of a value.

    The names (and which entries train) are known from the config itself; resolving imports torch and
    every method's module, about 2 s that a job which reads no method's settings (conversion,
    registration, metrics) should not pay when it re-reads the workflow. The main process resolves at
    once (``resolve()``), so that a bad entry stops the run before any job.
    """

    def __init__(self, methods_config, training_config, classical=()):
        self._arguments = (methods_config, training_config, classical)
        self._names = list(methods_config or {})
        self._resolved = None

    def resolve(self):
        if self._resolved is None:
            self._resolved = resolve_methods(*self._arguments)
        return self._resolved

    def __getitem__(self, name):
        return self.resolve()[name]

    def __iter__(self):
        return iter(self._names)

    def __len__(self):
        return len(self._names)

    def trained(self):
        """The names of the entries that the workflow trains (those without a ``checkpoint``)."""
        return [name for name in self._names if not (self._arguments[0][name] or {}).get("checkpoint")]
