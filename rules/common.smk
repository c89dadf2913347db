import functools
import os
import sys
from pathlib import Path
from types import MappingProxyType

from snakemake.utils import validate

validate(config, schema="../config/schema.yaml")

# The rules run the lpmnet package of this repository, installed or not.
sys.path.insert(0, str(Path(workflow.basedir)))
from snakemake.logging import logger

from lpmnet import memory
from lpmnet.methods import DEFAULT_JOB_MB, get_method
from lpmnet.volumes.io import sidecar_path
from lpmnet.methods.pretrained import CHOICES as PRETRAINED_CHOICES, KINDS as PRETRAINED_KINDS, kind_of_modalities, shipped_checkpoint
from lpmnet.workflow.checks import failed_inputs, read_input_status
from lpmnet.workflow.config import MethodConfigs, resolve_pretraining
from lpmnet.workflow.derivatives import bidsignore_lines, describe_derivatives
from lpmnet.workflow.index import (bids_dataset_index, check_dataset_config, check_dataset_modalities, colour_pair,
                                   dataset_sources, grid_entity, ignored_table_rows, ixi_modalities,
                                   modality_of_suffix, needed_modalities, pair_label, with_defaults)
from lpmnet.workflow.paths import RESULTS, Paths, split_unit
from lpmnet.workflow.runner import importable_working_directory
from lpmnet.workflow.splits import BOTH, OVERLAP_NOTE, dataset_splits, subjects_in

# Every output path, as the rules' templates and as the input functions' paths (lpmnet/workflow/paths.py).
paths = Paths(RESULTS)

DATASETS = {name: with_defaults(cfg) for name, cfg in config["datasets"].items()}
for _name, _cfg in DATASETS.items():
    check_dataset_config(_name, _cfg)

# The dataset index (sources, subjects, splits) is a pure function of the config and, for an IXI dataset, of
# the version of its manifest, which the checkpoint `manifest` (re)writes: the functions below are cached by
# those arguments (functools.cache), so a rewritten manifest is read again and nothing at module level is
# ever changed by an input function.


@functools.cache
def warn_once(message):
    """A warning on the console of the run (not again in each job, which re-reads this file): the cache
    remembers the messages already given."""
    if workflow.is_main_process:
        logger.warning(f"Warning: {message}")


def manifest_version(name):
    """What a dataset's index depends on besides the config: the modification time of an IXI dataset's
    manifest (None before its download); None for every other source, which is indexed from the config."""
    if DATASETS[name]["source"] != "ixi":
        return None
    try:
        return os.stat(paths.manifest(name)).st_mtime_ns
    except FileNotFoundError:
        return None


@functools.cache
def bids_index(name):
    """The index of a bids dataset (lpmnet.volumes.bids.index_bids), built once per run; the subjects and
    sessions that lack a modality (or have it ambiguously) are named in the manifest's log."""
    index = bids_dataset_index(DATASETS[name])
    lacking = sorted({(i.subject, i.session or "") for i in index.issues if i.kind != "chosen"})
    if lacking:
        warn_once(f"datasets.{name}: {len(lacking)} subject(s) or session(s) of {DATASETS[name]['root']} lack a "
                  f"modality (or have it ambiguously) and are left out of the pairs that need it; "
                  f"{paths.manifest_log(name)} says which and why")
    return index


@functools.cache
def indexed_sources(name, version):
    """(subject, modality) -> Source of one dataset at one ``version`` of its manifest (manifest_version)."""
    bids = bids_index(name) if DATASETS[name]["source"] == "bids" else None
    sources = dataset_sources(name, DATASETS[name], RESULTS, bids_index=bids)
    check_dataset_modalities(name, DATASETS[name], sources)
    ignored = ignored_table_rows(DATASETS[name], sources)
    if ignored:
        warn_once(f"datasets.{name}: {len(ignored)} row(s) of {DATASETS[name]['table']} have a modality that no "
                  f"pair and not fixed uses ({', '.join(sorted({s.modality for s in ignored}))}) and are ignored; "
                  f"they are listed in {paths.manifest_log(name)}")
    return MappingProxyType({(s.subject, s.modality): s for s in sources})


def dataset_index(name):
    """(subject, modality) -> Source of a dataset as it is now (an IXI dataset's once its manifest exists)."""
    return indexed_sources(name, manifest_version(name))


def source_of(dataset, subject, modality):
    """The Source of one subject's modality (None if the dataset has no such row)."""
    return dataset_index(dataset).get((subject, modality))


def dataset_subjects(name):
    """A dataset's subjects, sorted."""
    return sorted({subject for subject, _ in dataset_index(name)})


@functools.cache
def versioned_splits(versions):
    """Train/test split of every dataset that has subjects (explicit subject lists span all datasets), at
    ``versions`` ((dataset, manifest_version) of every dataset)."""
    result = dataset_splits({name: sorted({s for s, _ in indexed_sources(name, version)})
                             for name, version in versions}, config["split"])
    for name, split in result.items():
        if BOTH in split.values():
            warn_once(f"dataset {name} has {len(split)} subject(s), fewer than a train/test split needs: "
                      f"{OVERLAP_NOTE}")
    return MappingProxyType(result)


def splits():
    """{dataset: {subject: role}} of every dataset that has subjects now."""
    return versioned_splits(tuple((name, manifest_version(name)) for name in DATASETS))


# Index and split at once: a bad dataset or split setting stops the run here, with its key named.
splits()
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
PRETRAINED_DATASETS = PRETRAINED.get("datasets", [])
PRETRAINED_HELD_OUT = PRETRAINED.get("held_out", [])
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
    subject="[A-Za-z0-9]+(?:_ses-[A-Za-z0-9]+)?",
    scan_dir="sub-[A-Za-z0-9]+(?:/ses-[A-Za-z0-9]+)?/(?:anat|pet)",
    modality="[A-Za-z0-9]+",
    fixed="[A-Za-z0-9]+",
    pair=f"[A-Za-z0-9]+-[A-Za-z0-9]+{RESIZED}",
    space=f"[A-Za-z0-9]+{RESIZED}",
    shape=SHAPE,
    method="[a-z0-9]+(?:-[a-z0-9]+)*",


def pair_modalities(wildcards):
    return PAIRS[wildcards.dataset][wildcards.pair]


def sidecar(image):
    """The JSON sidecar of a NIfTI output (template or path)."""
    return str(sidecar_path(image))


def source_root(dataset):
    """The folder a dataset's inputs lie in, where that is outside its results (linked from the derivatives'
    description as their source dataset): a BIDS, BraTS or folders root, a user's table's folder."""
    cfg = DATASETS[dataset]
    if cfg["source"] == "table":
        return os.path.dirname(os.path.abspath(cfg["table"]))
    return cfg.get("root")


def derivative_params(wildcards):
    """What a subject-level job writes into its volume's sidecar besides its own description: the
    derivatives dataset's root, the input dataset's, whether the volumes are skull-stripped, and whether its
    source has BIDS sidecars to carry (TracerName of a PET, ...)."""
    cfg = DATASETS[wildcards.dataset]
    return {"dataset_root": paths.dataset(wildcards.dataset), "source_root": source_root(wildcards.dataset),
            "skull_stripped": cfg["skull_stripped"], "bids_source": cfg["source"] == "bids"}


def derivatives_description(wildcards):
    """The dataset_description.json of a dataset's results (lpmnet.workflow.derivatives)."""
    from lpmnet import __version__

    dataset = wildcards.dataset
    methods = {m: METHOD_CONFIGS[m]["network"] for m in METHOD_CONFIGS}
    methods.update({m: "classical" for m in config["fusion"]["classical"]})
    raw = bids_index(dataset).description if DATASETS[dataset]["source"] == "bids" else None
    return describe_derivatives(dataset, version=__version__, methods=methods, source_description=raw,
                                source_root=source_root(dataset))


def modality_named(dataset, suffix):
    """The dataset's modality whose files end in ``suffix`` (the {modality} wildcard of a subject's files,
    lpmnet.workflow.paths.file_suffix: "T1w" for T1)."""
    return modality_of_suffix(DATASETS[dataset])[suffix]


def space_label(dataset):
    """The fixed modality's space, with the resized grid where the dataset asks for one: "T1_res-128x192x192"."""
    return DATASETS[dataset]["fixed"] + grid_entity(DATASETS[dataset])


def space_reference(dataset, subject):
    """The volume that defines a subject's fixed space (the SpatialReference of the volumes in it): the fixed
    modality as converted, or resized where the dataset resizes."""
    fixed = DATASETS[dataset]["fixed"]
    if grid_entity(DATASETS[dataset]):
        return paths.resized(dataset, subject, space_label(dataset), fixed)
    return paths.converted(dataset, subject, fixed)


def normalized(dataset, subject, modality):
    """A modality as the model sees it: normalised in the fixed space, on the native or resized grid."""
    return paths.normalized(dataset, subject, space_label(dataset), modality)


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


def viewer_mem_mb(wildcards, input):
    return memory.viewer_mem_mb(input.sources[0], len(input.sources) + len(input.fused))


def registration_mem_mb(wildcards, input):
    return memory.registration_mem_mb(input.fixed, input.moving)


def gpu_resources(section):
    """GPU switch: device "cuda" both requests a GPU from the scheduler and selects it in the job."""
    return 1 if config[section]["device"] == "cuda" else 0


@functools.cache
def versioned_failures(path, version, statuses):
    """{subject: {modality: problem}} of the sources with one of ``statuses`` in the input status ``path`` at
    ``version`` (its modification time): read once per version of the file, though every training, table
    and target function asks for it."""
    return failed_inputs(read_input_status(path), statuses)


def input_failures(dataset, statuses=("failed", "absent")):
    """{subject: {modality: problem}} of the dataset's sources that a pair cannot use (a checkpoint): those
    that failed their check and those a BIDS session or a downloads subject does not have; ``("failed",)``: the
    failed only."""
    path = checkpoints.input_status.get(dataset=dataset).output[0]
    return versioned_failures(path, os.stat(path).st_mtime_ns, statuses)


def usable_subjects(dataset, role, modalities):
    """Subjects of a split role whose sources of ``modalities`` (and the fixed one) passed their check."""
    needed = {DATASETS[dataset]["fixed"], *modalities}
    failures = input_failures(dataset)
    return [s for s in subjects_in(splits()[dataset], role) if not needed & set(failures.get(s, {}))]


def wait_for_manifests():
    """Wait for the manifest checkpoint of every IXI dataset on the first run; the index then reads the
    manifest it (re)wrote."""
    for name, cfg in DATASETS.items():
        if cfg["source"] == "ixi":
            checkpoints.manifest.get(dataset=name)


def all_targets(wildcards):
    """Everything of every dataset; an IXI dataset's subjects once it is downloaded and paired.

    Subjects whose sources failed their check are left out of the training sets, tables and figures;
    their failing conversions are requested so that the run reports them and exits non-zero.
    """
    wait_for_manifests()
    targets = [paths.report()]
    targets += [path for name in DATASETS
                for path in (paths.manifest(name), paths.description(name), paths.bidsignore(name))]
    for name in splits():
        failures = input_failures(name)
        for pair, modalities in PAIRS[name].items():
            targets += [paths.metrics_summary(name, pair), paths.metrics_long(name, pair),
                        paths.metrics_html(name, pair), paths.failed_subjects(name, pair),
                        paths.comparison(name, pair, "tsv"), paths.comparison(name, pair, "html"),
                        paths.comparison(name, pair, "png")]
            targets += [paths.training_curves(name, pair, m) for m in TRAINED]
            targets += [paths.learning_curve_figure(name, pair, m) for m in TRAINED
                        if METHOD_CONFIGS[m]["training"]["keep_every"]]
            targets += [paths.montage(name, pair, s) for s in usable_subjects(name, "test", modalities)]
            targets += [paths.viewer(name, pair, s) for s in usable_subjects(name, "test", modalities)]
        if DATASETS[name]["register"]:
            fixed = DATASETS[name]["fixed"]
            moving = {m for p in DATASETS[name]["pairs"] for m in p if m != fixed}
            targets += [paths.registration_qc(name, s, fixed, m)
                        for s in dataset_subjects(name) for m in sorted(moving)
                        if not {fixed, m} & set(failures.get(s, {}))]
        targets += [paths.converted(name, s, m) for s, bad in input_failures(name, ("failed",)).items() for m in bad]
    return targets


def source_input(dataset, subject, modality):
    """The file a source is read from: itself (a downloads dataset's: its download), the demo's table, the IXI
    manifest, or the user's table."""
    source = source_of(dataset, subject, modality)
    if source is None:
        raise ValueError(f"dataset {dataset} has no subject {subject} with {modality}")
    if DATASETS[dataset]["source"] == "demo":
        return paths.demo_table(dataset)
    if DATASETS[dataset]["source"] == "ixi":
        # Its files lie inside the extraction folders; ancient(): re-pairing reconverts no subject.
        return ancient(paths.manifest(dataset))
    if source.kind == "missing":  # the folder or table that lacks it (the conversion job reports it)
        return DATASETS[dataset].get("table") or DATASETS[dataset]["root"]
    if source.kind == "absent":  # a BIDS session or a downloads subject without it: nothing to read
        return None
    return source.path


def subject_source_inputs(wildcards):
    # dict, not set: keeps the ancient() flag of an IXI manifest
    inputs = (source_input(wildcards.dataset, wildcards.subject, m) for m in needed_modalities(DATASETS[wildcards.dataset]))
    return list(dict.fromkeys(path for path in inputs if path is not None))


def subject_sources(wildcards):
    """modality -> (kind, path, problem) of the sources a subject's check reads."""
    index = dataset_index(wildcards.dataset)
    sources = {m: index[(wildcards.subject, m)] for m in needed_modalities(DATASETS[wildcards.dataset])}
    return {m: (s.kind, s.path, s.problem) for m, s in sources.items()}


def conversion_source(wildcards):
    return source_of(wildcards.dataset, wildcards.subject, modality_named(wildcards.dataset, wildcards.modality))


def conversion_input(wildcards):
    """The conversion's input (see source_input). brats, folders and bids datasets are indexed while the job
    graph is built (the same rows their manifest records), so a conversion depends on its file only."""
    return source_input(wildcards.dataset, wildcards.subject, modality_named(wildcards.dataset, wildcards.modality))


def registration_source(wildcards, modality):
    volume = paths.n4 if config["registration"]["n4"] else paths.converted
    return volume(wildcards.dataset, wildcards.subject, modality)


def native_grid_volume(dataset, subject, modality):
    """A modality on the fixed modality's native grid, before normalisation: the fixed one as converted, a
    moving one after registration (or as converted, when the dataset's modalities share one grid)."""
    fixed = DATASETS[dataset]["fixed"]
    if modality == fixed or not DATASETS[dataset]["register"]:
        return paths.converted(dataset, subject, modality)
    return paths.registered(dataset, subject, fixed, modality)


def resize_input(wildcards):
    dataset = wildcards.dataset
    return native_grid_volume(dataset, wildcards.subject, modality_named(dataset, wildcards.modality))


def normalization_input(wildcards):
    """The volume to normalise, on the native grid or resized (a space with a grid entity), and the fixed
    modality on that same grid, whose affine the output takes."""
    dataset, subject, space = wildcards.dataset, wildcards.subject, wildcards.space
    modality, fixed = modality_named(dataset, wildcards.modality), DATASETS[dataset]["fixed"]
    if space == fixed:
        return {"fixed": native_grid_volume(dataset, subject, fixed),
                "volume": native_grid_volume(dataset, subject, modality)}
    return {"fixed": paths.resized(dataset, subject, space, fixed), "volume": paths.resized(dataset, subject, space, modality)}


def initial_weights(dataset, pair, method, value):
    """The file a setting ``init``/``checkpoint`` of ``method`` names: the model its network ships for the
    pair's kind for ``pretrained`` (or a kind), else the path itself."""
    if value in PRETRAINED_CHOICES:
        kind = value if value in PRETRAINED_KINDS else kind_of_modalities(*PAIRS[dataset][pair])
        return str(shipped_checkpoint(get_method(METHOD_CONFIGS[method]["network"]), kind))
    return value


def is_colour_pair(dataset, pair):
    """Whether a pair (its folder name) is fused in colour: its second modality is functional."""
    return colour_pair(PAIRS[dataset][pair], DATASETS[dataset])


def pair_colour_map(wildcards):
    """The colour map a pair is fused in, None for a grey pair."""
    return DATASETS[wildcards.dataset]["colour_map"] if is_colour_pair(wildcards.dataset, wildcards.pair) else None


def pair_inputs(dataset, pair, subject):
    """(first, second) volume a method reads for a pair: the normalised volumes, and in place of a colour
    pair's functional one its luminance through the dataset's colour map, which the method fuses, trains on
    and is scored with."""
    first, second = PAIRS[dataset][pair]
    luminance = paths.luminance(dataset, subject, space_label(dataset), second)
    return normalized(dataset, subject, first), luminance if is_colour_pair(dataset, pair) else normalized(
        dataset, subject, second)


def pair_input_lists(dataset, pair, subjects):
    """{"x1": [...], "x2": [...]} of :func:`pair_inputs` over ``subjects``."""
    inputs = [pair_inputs(dataset, pair, s) for s in subjects]
    return {"x1": [x1 for x1, _ in inputs], "x2": [x2 for _, x2 in inputs]}


def training_input(wildcards):
    subjects = usable_subjects(wildcards.dataset, "train", pair_modalities(wildcards))
    inputs = {"split": paths.split(wildcards.dataset), **pair_input_lists(wildcards.dataset, wildcards.pair, subjects)}
    init = METHOD_CONFIGS[wildcards.method]["training"]["init"]
    if init:
        inputs["init"] = initial_weights(wildcards.dataset, wildcards.pair, wildcards.method, init)
    return inputs


def training_config(wildcards):
    """The method's training settings, with ``init`` the file it starts from (also a job input)."""
    settings = METHOD_CONFIGS[wildcards.method]["training"]
    if not settings["init"]:
        return settings
    return {**settings, "init": initial_weights(wildcards.dataset, wildcards.pair, wildcards.method, settings["init"])}


def kept_checkpoints(wildcards):
    """The checkpoints that ``keep_every`` keeps over a method's training (written by its train job)."""
    settings = METHOD_CONFIGS[wildcards.method]["training"]
    every = settings["keep_every"]
    return [paths.kept_checkpoint(wildcards.dataset, wildcards.pair, wildcards.method, n)
            for n in range(every, settings["iterations"] + 1, every)]


def learning_curve_input(wildcards):
    """The trained model (its job kept the checkpoints) and the test subjects' pairs."""
    subjects = usable_subjects(wildcards.dataset, "test", pair_modalities(wildcards))
    return {"model": paths.model(wildcards.dataset, wildcards.pair, wildcards.method),
            **pair_input_lists(wildcards.dataset, wildcards.pair, subjects)}


def pretraining_input(wildcards):
    """The pairs of a pretrained model's kind in every pretraining dataset that has them, as the workflow
    fuses them (a colour pair's functional volume as its luminance): training subjects train, the other test
    subjects validate (a dataset of one subject only trains)."""
    inputs = {"splits": [paths.split(d) for d in PRETRAINED_DATASETS], "x1": [], "x2": [], "val_x1": [], "val_x2": []}
    for dataset in PRETRAINED_DATASETS:
        for modalities in PRETRAINED_MODELS[wildcards.kind]["pairs"]:
            pair = pair_label(modalities, DATASETS[dataset])
            if pair not in PAIRS[dataset]:
                continue
            train = usable_subjects(dataset, "train", modalities)
            validate = [s for s in usable_subjects(dataset, "test", modalities) if s not in train]
            for prefix, subjects in (("", train), ("val_", validate)):
                lists = pair_input_lists(dataset, pair, subjects)
                inputs[f"{prefix}x1"] += lists["x1"]
                inputs[f"{prefix}x2"] += lists["x2"]
    return inputs


def held_out_pairs(kind):
    """(dataset, subject, pair name) of every held-out pair of ``kind``: what validates the model of that kind."""
    return [(dataset, subject, pair) for dataset in PRETRAINED_HELD_OUT for pair, modalities in PAIRS[dataset].items()
            if kind_of_modalities(*modalities) == kind
            for subject in sorted({*usable_subjects(dataset, "train", modalities),
                                   *usable_subjects(dataset, "test", modalities)})]


def held_out_input(wildcards):
    """The model and the raw volumes of its held-out pairs (each normalisation starts from them)."""
    pairs = held_out_pairs(wildcards.kind)
    return {"model": paths.pretrained_model(wildcards.kind),
            "x1": [source_input(d, s, PAIRS[d][p][0]) for d, s, p in pairs],
            "x2": [source_input(d, s, PAIRS[d][p][1]) for d, s, p in pairs]}


def held_out_labels(wildcards):
    """For each held-out pair of :func:`held_out_input`: its dataset, subject, pair and colour map (None: grey)."""
    return [{"dataset": d, "subject": s, "pair": p,
             "colour": DATASETS[d]["colour_map"] if is_colour_pair(d, p) else None}
            for d, s, p in held_out_pairs(wildcards.kind)]


def method_checkpoint(dataset, pair, method):
    """The checkpoint a method fuses with: its trained model, or the file its config entry names
    (``pretrained``: the shipped model of the pair's kind)."""
    given = METHOD_CONFIGS[method]["checkpoint"]
    return initial_weights(dataset, pair, method, given) if given else paths.model(dataset, pair, method)


def fusion_sources(wildcards):
    x1, x2 = pair_inputs(wildcards.dataset, wildcards.pair, wildcards.subject)
    return {"x1": x1, "x2": x2}


def colour_fusion_input(wildcards):
    """A colour pair's fused luminance and the normalised functional volume whose chrominance it takes."""
    dataset, subject = wildcards.dataset, wildcards.subject
    return {"fused": fused_path(dataset, wildcards.pair, subject, wildcards.method),
            "functional": normalized(dataset, subject, PAIRS[dataset][wildcards.pair][1])}


def montage_colour(wildcards):
    """What the montage shows in colour: the functional source through the colour map and every method's
    colour fusion (RGB files); nothing for a grey pair."""
    dataset, pair, subject = wildcards.dataset, wildcards.pair, wildcards.subject
    if not is_colour_pair(dataset, pair):
        return {}
    return {"functional": normalized(dataset, subject, PAIRS[dataset][pair][1]),
            "rgb": [paths.fused_colour(dataset, pair, subject, space_label(dataset), m) for m in METHODS]}


def viewer_inputs(wildcards):
    """A viewer page's volumes: the normalised sources (a colour pair's functional one is shown through the
    colour map), every method's fused volume (in colour for a colour pair) and its metrics."""
    dataset, pair, subject = wildcards.dataset, wildcards.pair, wildcards.subject
    fused = paths.fused_colour if is_colour_pair(dataset, pair) else paths.fused
    return {"sources": [normalized(dataset, subject, m) for m in PAIRS[dataset][pair]],
            "fused": [fused(dataset, pair, subject, space_label(dataset), m) for m in METHODS],
            "metrics": [paths.subject_metrics(dataset, pair, subject, m) for m in METHODS]}


def report_inputs(wildcards):
    """What the report shows and links: per pair of every dataset its comparison, tables and box plots, and
    its test subjects' viewer pages and montages."""
    wait_for_manifests()
    inputs = {"comparison": [], "pages": [], "viewers": [], "montages": []}
    for name in splits():
        for pair, modalities in PAIRS[name].items():
            inputs["comparison"].append(paths.comparison(name, pair, "tsv"))
            inputs["pages"] += [paths.comparison(name, pair, "html"), paths.comparison(name, pair, "png"),
                                paths.metrics_html(name, pair)]
            subjects = usable_subjects(name, "test", modalities)
            inputs["viewers"] += [paths.viewer(name, pair, s) for s in subjects]
            inputs["montages"] += [paths.montage(name, pair, s) for s in subjects]
    return inputs


def metric_table_inputs(wildcards):
    """The metrics of the test subjects whose sources are usable, and the dataset's input status."""
    subjects = usable_subjects(wildcards.dataset, "test", pair_modalities(wildcards))
    return {
        "metrics": [paths.subject_metrics(wildcards.dataset, wildcards.pair, s, m) for s in subjects for m in METHODS],
        "input_status": checkpoints.input_status.get(dataset=wildcards.dataset).output[0],
        "split": paths.split(wildcards.dataset),
    }


def comparison_inputs(wildcards):
    """The pair's long table, per method the sidecars of its fused volumes and (trained methods) its
    training log: what its cost figures are read from."""
    dataset, pair = wildcards.dataset, wildcards.pair
    subjects = usable_subjects(dataset, "test", pair_modalities(wildcards))
    inputs = {"long": paths.metrics_long(dataset, pair)}
    for m in TRAINED:
        inputs[f"train_{m}"] = [paths.training_log(dataset, pair, m)]
    for m in METHODS:
        inputs[f"fuse_{m}"] = [paths.fused_sidecar(dataset, pair, s, space_label(dataset), m) for s in subjects]
    return inputs


def fused_path(dataset, pair, subject, method):
    return paths.fused(dataset, pair, subject, space_label(dataset), method)


def ixi_archive(wildcards):
    """A pre-downloaded IXI tarball (``archive_dir``) or the workflow's own download."""
    archive_dir = DATASETS[wildcards.dataset].get("archive_dir")
    if archive_dir:
        return f"{archive_dir}/IXI-{wildcards.modality}.tar"
    return paths.ixi_archive(wildcards.dataset, wildcards.modality)


def download_entry(wildcards):
    """The address and sha256 of one volume of a downloads dataset (datasets.<name>.files.<subject>.<modality>)."""
    return DATASETS[wildcards.dataset]["files"][wildcards.subject][wildcards.modality]


def manifest_input(wildcards):
    """What a dataset's manifest is made from: the extracted IXI folders, the demo's or the user's table, the
    downloaded volumes (whose checksums it records)."""
    cfg = DATASETS[wildcards.dataset]
    if cfg["source"] == "ixi":
        return {m: paths.ixi_folder(wildcards.dataset, m) for m in ixi_modalities(cfg)}
    if cfg["source"] == "demo":
        return {"table": paths.demo_table(wildcards.dataset)}
    if cfg["source"] == "table":
        return {"table": cfg["table"]}
    if cfg["source"] == "downloads":
        return {"downloads": [path for _, _, path in manifest_rows(wildcards)]}
    return {}


def ignored_rows(wildcards):
    """(table line, subject, modality) of the subjects-table rows that no pair and not fixed uses."""
    sources = list(dataset_index(wildcards.dataset).values())
    return [(s.where, s.subject, s.modality) for s in ignored_table_rows(DATASETS[wildcards.dataset], sources)]


def bids_manifest(wildcards):
    """What a bids dataset's manifest adds: each subject key's participant and session, the participants.tsv
    columns, and the index's issues (runs chosen, sessions left out) for its log; None for other sources."""
    if DATASETS[wildcards.dataset]["source"] != "bids":
        return None
    index = bids_index(wildcards.dataset)
    units = {s.subject: split_unit(s.subject) for s in dataset_index(wildcards.dataset).values()}
    return {"units": units, "participants": index.participants,
            "issues": [(i.kind, i.message) for i in index.issues]}


def manifest_rows(wildcards):
    """(subject, modality, path) of every existing source of a dataset indexed while the graph is built."""
    if DATASETS[wildcards.dataset]["source"] == "ixi":
        return []
    return sorted((s.subject, s.modality, s.path) for s in dataset_index(wildcards.dataset).values()
                  if s.kind not in ("missing", "absent"))
