import os
import sys
from pathlib import Path

from snakemake.utils import validate

validate(config, schema="../config/schema.yaml")

# The rules run the lpmnet package of this repository, installed or not.
sys.path.insert(0, str(Path(workflow.basedir)))
from snakemake.logging import logger

from lpmnet import memory
from lpmnet.volumes.io import sidecar_path
from lpmnet.methods import DEFAULT_JOB_MB, get_method
from lpmnet.methods.lpmnet.pretrained import CHOICES as PRETRAINED_CHOICES, KINDS as PRETRAINED_KINDS, kind_of_modalities, pretrained_path
from lpmnet.workflow.splits import BOTH, OVERLAP_NOTE, subjects_in
from lpmnet.workflow import (RESULTS, check_dataset_config, check_dataset_modalities, dataset_sources,
                             dataset_splits, failed_inputs, grid_entity, ignored_table_rows, ixi_modalities,
                             importable_working_directory, manifest_path, needed_modalities, pair_label,
                             read_input_status, resolve_pretraining, MethodConfigs, with_defaults)

DATASETS = {name: with_defaults(cfg) for name, cfg in config["datasets"].items()}
for _name, _cfg in DATASETS.items():
    check_dataset_config(_name, _cfg)

# (dataset, subject, modality) -> Source, read while the job graph is built; an IXI dataset's rows are
# read again from its manifest once the checkpoint `manifest` has (re)written it (see all_targets).
SOURCES = {}
SUBJECTS = {}
SPLITS = {}
WARNED = set()


def warn_once(message):
    """A warning on the console of the run (not again in each job, which re-reads this file)."""
    if workflow.is_main_process and message not in WARNED:
        WARNED.add(message)
        logger.warning(f"Warning: {message}")


def index_dataset(name):
    """(Re)index one dataset's sources and subjects."""
    for key in [key for key in SOURCES if key[0] == name]:
        del SOURCES[key]
    sources = dataset_sources(name, DATASETS[name])
    check_dataset_modalities(name, DATASETS[name], sources)
    SOURCES.update({(s.dataset, s.subject, s.modality): s for s in sources})
    SUBJECTS[name] = sorted({subject for dataset, subject, _ in SOURCES if dataset == name})
    ignored = ignored_table_rows(DATASETS[name], sources)
    if ignored:
        warn_once(f"datasets.{name}: {len(ignored)} row(s) of {DATASETS[name]['table']} have a modality that no "
                  f"pair and not fixed uses ({', '.join(sorted({s.modality for s in ignored}))}) and are ignored; "
                  f"they are listed in {RESULTS}/{name}/logs/manifest.log")


def split_datasets():
    """Split every dataset that has subjects (explicit subject lists span all datasets)."""
    SPLITS.clear()
    SPLITS.update(dataset_splits(SUBJECTS, config["split"]))
    for name, split in SPLITS.items():
        if BOTH in split.values():
            warn_once(f"dataset {name} has {len(split)} subject(s), fewer than a train/test split needs: "
                      f"{OVERLAP_NOTE}")


for _name in DATASETS:
    index_dataset(_name)
split_datasets()
# Pair folders carry the grid (native or paper-style resized), so results of both grids coexist.
PAIRS = {name: {pair_label(p, cfg): p for p in cfg["pairs"]} for name, cfg in DATASETS.items()}
importable_working_directory()
# The fusion methods (config section `methods`, checked and with their recipes filled in), those that the
# workflow trains (the others fuse with a given checkpoint), and every row of the tables.
METHOD_CONFIGS = MethodConfigs(config["methods"], config["training"], config["fusion"]["classical"])
if workflow.is_main_process:
    METHOD_CONFIGS.resolve()  # a bad entry stops the run here, with its key named
TRAINED = METHOD_CONFIGS.trained()
METHODS = [*METHOD_CONFIGS, *config["fusion"]["classical"]]
# The shipped models' training (config section `pretrained`, given by config/pretrained.yaml).
PRETRAINED = config.get("pretrained") or {}
PRETRAINED_MODELS = PRETRAINED.get("models", {})
PRETRAINED_DATASET = PRETRAINED.get("dataset")
PRETRAINED_TRAINING = resolve_pretraining(PRETRAINED, DATASETS) if PRETRAINED else None
# The method every other one is tested against in the comparison table.
REFERENCE = "lpmnet" if "lpmnet" in METHOD_CONFIGS else next(iter(METHOD_CONFIGS))


def alternatives(names):
    """A wildcard constraint matching exactly these names (none: nothing)."""
    return "|".join(names) or "(?!)"


# The optional grid entity of pair folders and spaces (paper-style resized volumes, see grid_entity).
SHAPE = "[0-9]+x[0-9]+x[0-9]+"
RESIZED = f"(_res-{SHAPE})?"


wildcard_constraints:
    dataset="[A-Za-z0-9]+",
    subject="[A-Za-z0-9]+",
    modality="[A-Za-z0-9]+",
    fixed="[A-Za-z0-9]+",
    pair=f"[A-Za-z0-9]+-[A-Za-z0-9]+{RESIZED}",
    space=f"[A-Za-z0-9]+{RESIZED}",
    shape=SHAPE,
    method="[a-z0-9]+(?:-[a-z0-9]+)*",


def pair_modalities(wildcards):
    return PAIRS[wildcards.dataset][wildcards.pair]


def subject_dir(dataset, subject):
    return f"{RESULTS}/{dataset}/sub-{subject}"


def space_label(dataset):
    """The fixed modality's space, with the resized grid where the dataset asks for one: "T1_res-128x192x192"."""
    return DATASETS[dataset]["fixed"] + grid_entity(DATASETS[dataset])


def normalized(dataset, subject, modality):
    """A modality as the model sees it: normalised in the fixed space, on the native or resized grid."""
    return f"{subject_dir(dataset, subject)}/sub-{subject}_space-{space_label(dataset)}_desc-norm_{modality}.nii.gz"


def pair_dir(dataset, pair):
    return f"{RESULTS}/{dataset}/{pair}"


# Memory of the heavy jobs from the sizes of their inputs (lpmnet.memory, each method's estimate;
# benchmarks/bench_memory.py). Before the inputs exist these raise FileNotFoundError, and Snakemake
# evaluates them once they do.
def fusion_mem_mb(wildcards, input):
    """A fusion job's memory; a job fusing several volumes (a learning curve) needs that of its first."""
    cfg = METHOD_CONFIGS[wildcards.method]
    estimate = get_method(cfg["network"]).fusion_mem_mb
    fixed = input.x1 if isinstance(input.x1, str) else input.x1[0]
    return estimate(fixed, cfg["model"], cfg["fusion"]) if estimate else DEFAULT_JOB_MB


def training_mem_mb(wildcards, input):
    from lpmnet.engine.train import TrainConfig

    cfg = METHOD_CONFIGS[wildcards.method]
    estimate = get_method(cfg["network"]).training_mem_mb
    return estimate(input.x1, TrainConfig(**cfg["training"])) if estimate else DEFAULT_JOB_MB


def metrics_mem_mb(wildcards, input):
    return memory.metrics_mem_mb(input.x1)


def registration_mem_mb(wildcards, input):
    return memory.registration_mem_mb(input.fixed, input.moving)


def gpu_resources(section):
    """GPU switch: device "cuda" both requests a GPU from the scheduler and selects it in the job."""
    return 1 if config[section]["device"] == "cuda" else 0


FAILURES = {}


def input_failures(dataset):
    """{subject: {modality: problem}} of the dataset's sources that failed their check (a checkpoint).

    Read once per version of the file: every training, table and target function asks for it."""
    path = checkpoints.input_status.get(dataset=dataset).output[0]
    key = (path, os.stat(path).st_mtime_ns)
    if key not in FAILURES:
        FAILURES[key] = failed_inputs(read_input_status(path))
    return FAILURES[key]


def usable_subjects(dataset, role, modalities):
    """Subjects of a split role whose sources of ``modalities`` (and the fixed one) passed their check."""
    needed = {DATASETS[dataset]["fixed"], *modalities}
    failures = input_failures(dataset)
    return [s for s in subjects_in(SPLITS[dataset], role) if not needed & set(failures.get(s, {}))]


def all_targets(wildcards):
    """Everything of every dataset; an IXI dataset's subjects once it is downloaded and paired.

    Subjects whose sources failed their check are left out of the training sets, tables and figures;
    their failing conversions are requested so that the run reports them and exits non-zero.
    """
    downloaded = [name for name, cfg in DATASETS.items() if cfg["source"] == "ixi"]
    for name in downloaded:
        # Waits for the checkpoint on the first run; re-reads a manifest that was rewritten.
        checkpoints.manifest.get(dataset=name)
        index_dataset(name)
    if downloaded:
        split_datasets()
    targets = [manifest_path(name) for name in DATASETS]
    for name in SPLITS:
        failures = input_failures(name)
        for pair, modalities in PAIRS[name].items():
            base = pair_dir(name, pair)
            targets += [f"{base}/metrics.tsv", f"{base}/metrics_long.tsv", f"{base}/metrics.html",
                        f"{base}/failed_subjects.tsv", f"{base}/comparison.tsv", f"{base}/comparison.html",
                        f"{base}/comparison.png"]
            targets += [f"{base}/model/{m}/training_curves.png" for m in TRAINED]
            targets += [f"{base}/model/{m}/learning_curve.png" for m in TRAINED
                        if METHOD_CONFIGS[m]["training"]["keep_every"]]
            targets += [f"{base}/qc/sub-{s}_montage.png" for s in usable_subjects(name, "test", modalities)]
        if DATASETS[name]["register"]:
            fixed = DATASETS[name]["fixed"]
            moving = {m for p in DATASETS[name]["pairs"] for m in p if m != fixed}
            targets += [f"{subject_dir(name, s)}/qc/sub-{s}_from-{m}_to-{fixed}_regqc.png"
                        for s in SUBJECTS[name] for m in sorted(moving)
                        if not {fixed, m} & set(failures.get(s, {}))]
        targets += [f"{subject_dir(name, s)}/sub-{s}_{m}.nii.gz" for s, bad in failures.items() for m in bad]
    return targets


def source_input(dataset, subject, modality):
    """The file a source is read from: itself, the demo's table, the IXI manifest, or the user's table."""
    source = SOURCES.get((dataset, subject, modality))
    if source is None:
        raise ValueError(f"dataset {dataset} has no subject {subject} with {modality}")
    if DATASETS[dataset]["source"] == "demo":
        return f"{RESULTS}/{dataset}/sourcedata/subjects.tsv"
    if DATASETS[dataset]["source"] == "ixi":
        # Its files lie inside the extraction folders; ancient(): re-pairing reconverts no subject.
        return ancient(manifest_path(dataset))
    if source.kind == "missing":  # the folder or table that lacks it (the conversion job reports it)
        return DATASETS[dataset].get("table") or DATASETS[dataset]["root"]
    return source.path


def subject_source_inputs(wildcards):
    # dict, not set: keeps the ancient() flag of an IXI manifest
    return list(dict.fromkeys(source_input(wildcards.dataset, wildcards.subject, m)
                              for m in needed_modalities(DATASETS[wildcards.dataset])))


def subject_sources(wildcards):
    """modality -> (kind, path, problem) of the sources a subject's check reads."""
    sources = {m: SOURCES[(wildcards.dataset, wildcards.subject, m)]
               for m in needed_modalities(DATASETS[wildcards.dataset])}
    return {m: (s.kind, s.path, s.problem) for m, s in sources.items()}


def conversion_input(wildcards):
    """The conversion's input (see source_input). brats and folders datasets are indexed while the job
    graph is built (the same rows their manifest records), so a conversion depends on its file only."""
    return source_input(wildcards.dataset, wildcards.subject, wildcards.modality)


def registration_source(wildcards, modality):
    base = f"{subject_dir(wildcards.dataset, wildcards.subject)}/sub-{wildcards.subject}"
    return f"{base}_desc-n4_{modality}.nii.gz" if config["registration"]["n4"] else f"{base}_{modality}.nii.gz"


def normalization_input(wildcards):
    """The fixed modality as converted; a moving one after registration (or as converted, on one grid)."""
    dataset, subject, modality = wildcards.dataset, wildcards.subject, wildcards.modality
    fixed = DATASETS[dataset]["fixed"]
    base = f"{subject_dir(dataset, subject)}/sub-{subject}"
    inputs = {"fixed": f"{base}_{fixed}.nii.gz"}
    if modality == fixed or not DATASETS[dataset]["register"]:
        inputs["volume"] = f"{base}_{modality}.nii.gz"
    else:
        inputs["volume"] = f"{base}_space-{fixed}_desc-registered_{modality}.nii.gz"
    return inputs


def initial_weights(dataset, pair, value):
    """The file a setting ``init``/``checkpoint`` names: the shipped model of the pair's kind for
    ``pretrained`` (or a kind), else the path itself."""
    if value in PRETRAINED_CHOICES:
        return str(pretrained_path(value if value in PRETRAINED_KINDS else kind_of_modalities(*PAIRS[dataset][pair])))
    return value


def training_input(wildcards):
    first, second = pair_modalities(wildcards)
    subjects = usable_subjects(wildcards.dataset, "train", (first, second))
    inputs = {
        "split": f"{RESULTS}/{wildcards.dataset}/split.tsv",
        "x1": [normalized(wildcards.dataset, s, first) for s in subjects],
        "x2": [normalized(wildcards.dataset, s, second) for s in subjects],
    }
    init = METHOD_CONFIGS[wildcards.method]["training"]["init"]
    if init:
        inputs["init"] = initial_weights(wildcards.dataset, wildcards.pair, init)
    return inputs


def training_config(wildcards):
    """The method's training settings, with ``init`` the file it starts from (also a job input)."""
    settings = METHOD_CONFIGS[wildcards.method]["training"]
    if not settings["init"]:
        return settings
    return {**settings, "init": initial_weights(wildcards.dataset, wildcards.pair, settings["init"])}


def kept_checkpoints(wildcards):
    """The checkpoints that ``keep_every`` keeps over a method's training (written by its train job)."""
    settings = METHOD_CONFIGS[wildcards.method]["training"]
    every = settings["keep_every"]
    folder = f"{pair_dir(wildcards.dataset, wildcards.pair)}/model/{wildcards.method}/checkpoints"
    return [f"{folder}/iteration-{n:06d}.pt" for n in range(every, settings["iterations"] + 1, every)]


def learning_curve_input(wildcards):
    """The trained model (its job kept the checkpoints) and the test subjects' pairs."""
    first, second = pair_modalities(wildcards)
    subjects = usable_subjects(wildcards.dataset, "test", (first, second))
    return {
        "model": f"{pair_dir(wildcards.dataset, wildcards.pair)}/model/{wildcards.method}/model.pt",
        "x1": [normalized(wildcards.dataset, s, first) for s in subjects],
        "x2": [normalized(wildcards.dataset, s, second) for s in subjects],
    }


def pretraining_input(wildcards):
    """The pairs of a pretrained model's kind: training subjects to train, test subjects to validate."""
    inputs = {"split": f"{RESULTS}/{PRETRAINED_DATASET}/split.tsv"}
    for role, prefix in (("train", ""), ("test", "val_")):
        inputs[f"{prefix}x1"], inputs[f"{prefix}x2"] = [], []
        for first, second in PRETRAINED_MODELS[wildcards.kind]["pairs"]:
            subjects = usable_subjects(PRETRAINED_DATASET, role, (first, second))
            inputs[f"{prefix}x1"] += [normalized(PRETRAINED_DATASET, s, first) for s in subjects]
            inputs[f"{prefix}x2"] += [normalized(PRETRAINED_DATASET, s, second) for s in subjects]
    return inputs


def method_checkpoint(dataset, pair, method):
    """The checkpoint a method fuses with: its trained model, or the file its config entry names
    (``pretrained``: the shipped model of the pair's kind)."""
    given = METHOD_CONFIGS[method]["checkpoint"]
    return initial_weights(dataset, pair, given) if given else f"{pair_dir(dataset, pair)}/model/{method}/model.pt"


def fusion_sources(wildcards):
    first, second = pair_modalities(wildcards)
    return {
        "x1": normalized(wildcards.dataset, wildcards.subject, first),
        "x2": normalized(wildcards.dataset, wildcards.subject, second),
    }


def metric_table_inputs(wildcards):
    """The metrics of the test subjects whose sources are usable, and the dataset's input status."""
    subjects = usable_subjects(wildcards.dataset, "test", pair_modalities(wildcards))
    return {
        "metrics": [f"{pair_dir(wildcards.dataset, wildcards.pair)}/metrics/sub-{s}_desc-{m}_metrics.json"
                    for s in subjects for m in METHODS],
        "input_status": checkpoints.input_status.get(dataset=wildcards.dataset).output[0],
        "split": f"{RESULTS}/{wildcards.dataset}/split.tsv",
    }


def comparison_inputs(wildcards):
    """The pair's long table, per method the sidecars of its fused volumes and (trained methods) its
    training log: what its cost figures are read from."""
    base = pair_dir(wildcards.dataset, wildcards.pair)
    subjects = usable_subjects(wildcards.dataset, "test", pair_modalities(wildcards))
    inputs = {"long": f"{base}/metrics_long.tsv"}
    for m in TRAINED:
        inputs[f"train_{m}"] = [f"{base}/model/{m}/training_log.csv"]
    for m in METHODS:
        inputs[f"fuse_{m}"] = [str(sidecar_path(fused_path(wildcards.dataset, wildcards.pair, s, m)))
                               for s in subjects]
    return inputs


def fused_path(dataset, pair, subject, method):
    return f"{pair_dir(dataset, pair)}/fused/sub-{subject}_space-{space_label(dataset)}_desc-{method}_fused.nii.gz"


def ixi_archive(wildcards):
    """A pre-downloaded IXI tarball (``archive_dir``) or the workflow's own download."""
    archive_dir = DATASETS[wildcards.dataset].get("archive_dir")
    if archive_dir:
        return f"{archive_dir}/IXI-{wildcards.modality}.tar"
    return f"{RESULTS}/{wildcards.dataset}/downloads/IXI-{wildcards.modality}.tar"


def manifest_input(wildcards):
    """What a dataset's manifest is made from: the extracted IXI folders, the demo's or the user's table."""
    cfg = DATASETS[wildcards.dataset]
    if cfg["source"] == "ixi":
        return {m: f"{RESULTS}/{wildcards.dataset}/sourcedata/IXI-{m}" for m in ixi_modalities(cfg)}
    if cfg["source"] == "demo":
        return {"table": f"{RESULTS}/{wildcards.dataset}/sourcedata/subjects.tsv"}
    if cfg["source"] == "table":
        return {"table": cfg["table"]}
    return {}


def ignored_rows(wildcards):
    """(table line, subject, modality) of the subjects-table rows that no pair and not fixed uses."""
    sources = [s for s in SOURCES.values() if s.dataset == wildcards.dataset]
    return [(s.where, s.subject, s.modality) for s in ignored_table_rows(DATASETS[wildcards.dataset], sources)]


def manifest_rows(wildcards):
    """(subject, modality, path) of every existing source of a dataset indexed while the graph is built."""
    if DATASETS[wildcards.dataset]["source"] == "ixi":
        return []
    return sorted((s.subject, s.modality, s.path) for s in SOURCES.values()
                  if s.dataset == wildcards.dataset and s.kind != "missing")
