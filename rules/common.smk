import sys
from pathlib import Path

from snakemake.utils import validate

validate(config, schema="../config/schema.yaml")

# The rules run the lpmnet package of this repository, installed or not.
sys.path.insert(0, str(Path(workflow.basedir)))
from lpmnet.split import subjects_in
from lpmnet.workflow import (RESULTS, check_dataset_config, dataset_sources, dataset_splits, grid_entity,
                             ixi_modalities, manifest_path, pair_label, with_defaults)

DATASETS = {name: with_defaults(cfg) for name, cfg in config["datasets"].items()}
for _name, _cfg in DATASETS.items():
    check_dataset_config(_name, _cfg)

# (dataset, subject, modality) -> Source, read while the job graph is built; an IXI dataset's rows are
# read again from its manifest once the checkpoint `manifest` has (re)written it (see all_targets).
SOURCES = {}
SUBJECTS = {}
SPLITS = {}


def index_dataset(name):
    """(Re)index one dataset's sources and subjects."""
    for key in [key for key in SOURCES if key[0] == name]:
        del SOURCES[key]
    SOURCES.update({(s.dataset, s.subject, s.modality): s for s in dataset_sources(name, DATASETS[name])})
    SUBJECTS[name] = sorted({subject for dataset, subject, _ in SOURCES if dataset == name})


def split_datasets():
    """Split every dataset that has subjects (explicit subject lists span all datasets)."""
    SPLITS.clear()
    SPLITS.update(dataset_splits(SUBJECTS, config["split"]))


for _name in DATASETS:
    index_dataset(_name)
split_datasets()
# Pair folders carry the grid (native or paper-style resized), so results of both grids coexist.
PAIRS = {name: {pair_label(p, cfg): p for p in cfg["pairs"]} for name, cfg in DATASETS.items()}
METHODS = ["lpmnet", *config["fusion"]["classical"]]


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
    method="[a-z0-9]+",


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


def gpu_resources(section):
    """GPU switch: device "cuda" both requests a GPU from the scheduler and selects it in the job."""
    return 1 if config[section]["device"] == "cuda" else 0


def all_targets(wildcards):
    """Everything of every dataset; an IXI dataset's subjects once it is downloaded and paired."""
    downloaded = [name for name, cfg in DATASETS.items() if cfg["source"] == "ixi"]
    for name in downloaded:
        # Waits for the checkpoint on the first run; re-reads a manifest that was rewritten.
        checkpoints.manifest.get(dataset=name)
        index_dataset(name)
    if downloaded:
        split_datasets()
    targets = [manifest_path(name) for name in DATASETS]
    for name in SPLITS:
        for pair in PAIRS[name]:
            base = pair_dir(name, pair)
            targets += [f"{base}/metrics.tsv", f"{base}/metrics_long.tsv", f"{base}/metrics.html",
                        f"{base}/model/training_curves.png"]
            targets += [f"{base}/qc/sub-{s}_montage.png" for s in subjects_in(SPLITS[name], "test")]
        if DATASETS[name]["register"]:
            fixed = DATASETS[name]["fixed"]
            moving = {m for p in DATASETS[name]["pairs"] for m in p if m != fixed}
            targets += [f"{subject_dir(name, s)}/qc/sub-{s}_from-{m}_to-{fixed}_regqc.png"
                        for s in SUBJECTS[name] for m in sorted(moving)]
    return targets


def conversion_input(wildcards):
    """The source file, or the demo's table for generated data, or the user's table for a missing one.

    An IXI dataset is read through its manifest; brats and folders datasets are indexed while the job
    graph is built (the same rows their manifest records), so a conversion depends on its file only.
    """
    source = SOURCES.get((wildcards.dataset, wildcards.subject, wildcards.modality))
    if source is None:
        raise ValueError(f"dataset {wildcards.dataset} has no subject {wildcards.subject} with {wildcards.modality}")
    if DATASETS[wildcards.dataset]["source"] == "demo":
        return f"{RESULTS}/{wildcards.dataset}/sourcedata/subjects.tsv"
    if DATASETS[wildcards.dataset]["source"] == "ixi":
        # Its files lie inside the extraction folders; ancient(): re-pairing reconverts no subject.
        return ancient(manifest_path(wildcards.dataset))
    if source.kind == "missing":  # the folder or table that lacks it (the conversion job reports it)
        return DATASETS[wildcards.dataset].get("table") or DATASETS[wildcards.dataset]["root"]
    return source.path


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


def training_input(wildcards):
    first, second = pair_modalities(wildcards)
    subjects = subjects_in(SPLITS[wildcards.dataset], "train")
    return {
        "split": f"{RESULTS}/{wildcards.dataset}/split.tsv",
        "x1": [normalized(wildcards.dataset, s, first) for s in subjects],
        "x2": [normalized(wildcards.dataset, s, second) for s in subjects],
    }


def training_params(wildcards):
    """Every setting that changes the trained model, so that editing one retrains exactly this model."""
    t = config["training"]
    return dict(
        iterations=t["iterations"], batch_size=t["batch_size"], patch_size=t["patch_size"] or None,
        lr=t["lr"], weight_decay=t["weight_decay"], seed=t["seed"], loss_mode=t["loss_mode"],
        alpha=t["alpha"], beta=t["beta"], gamma=t["gamma"], checkpoint_every=t["checkpoint_every"],
        model=t["model"],
    )


def fusion_sources(wildcards):
    first, second = pair_modalities(wildcards)
    return {
        "x1": normalized(wildcards.dataset, wildcards.subject, first),
        "x2": normalized(wildcards.dataset, wildcards.subject, second),
    }


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


def manifest_rows(wildcards):
    """(subject, modality, path) of every existing source of a dataset indexed while the graph is built."""
    if DATASETS[wildcards.dataset]["source"] == "ixi":
        return []
    return sorted((s.subject, s.modality, s.path) for s in SOURCES.values()
                  if s.dataset == wildcards.dataset and s.kind != "missing")
