import sys
from pathlib import Path

from snakemake.utils import validate

validate(config, schema="../config/schema.yaml")

# The rules run the lpmnet package of this repository, installed or not.
sys.path.insert(0, str(Path(workflow.basedir)))
from lpmnet.split import subjects_in
from lpmnet.workflow import RESULTS, check_dataset_config, dataset_sources, dataset_splits, pair_label

DATASETS = config["datasets"]
for _name, _cfg in DATASETS.items():
    check_dataset_config(_name, _cfg)

# (dataset, subject, modality) -> Source, read once while the job graph is built
SOURCES = {(s.dataset, s.subject, s.modality): s for name, cfg in DATASETS.items() for s in dataset_sources(name, cfg)}
SUBJECTS = {name: sorted({s.subject for s in SOURCES.values() if s.dataset == name}) for name in DATASETS}
PAIRS = {name: {pair_label(p): p for p in cfg["pairs"]} for name, cfg in DATASETS.items()}
SPLITS = dataset_splits(SUBJECTS, config["split"])
METHODS = ["lpmnet", *config["fusion"]["classical"]]


wildcard_constraints:
    dataset="[A-Za-z0-9]+",
    subject="[A-Za-z0-9]+",
    modality="[A-Za-z0-9]+",
    fixed="[A-Za-z0-9]+",
    pair="[A-Za-z0-9]+-[A-Za-z0-9]+",
    method="[a-z0-9]+",


def fixed_of(wildcards):
    return DATASETS[wildcards.dataset]["fixed"]


def pair_modalities(wildcards):
    return PAIRS[wildcards.dataset][wildcards.pair]


def subject_dir(dataset, subject):
    return f"{RESULTS}/{dataset}/sub-{subject}"


def normalized(dataset, subject, modality):
    fixed = DATASETS[dataset]["fixed"]
    return f"{subject_dir(dataset, subject)}/sub-{subject}_space-{fixed}_desc-norm_{modality}.nii.gz"


def pair_dir(dataset, pair):
    return f"{RESULTS}/{dataset}/{pair}"


def gpu_resources(section):
    """GPU switch: device "cuda" both requests a GPU from the scheduler and selects it in the job."""
    return 1 if config[section]["device"] == "cuda" else 0


def all_targets():
    targets = []
    for name in DATASETS:
        for pair in PAIRS[name]:
            base = pair_dir(name, pair)
            targets += [f"{base}/metrics.tsv", f"{base}/metrics_long.tsv", f"{base}/metrics.html",
                        f"{base}/model/training_curves.png"]
            targets += [f"{base}/qc/sub-{s}_montage.png" for s in subjects_in(SPLITS[name], "test")]
        if DATASETS[name].get("register", True):
            fixed = DATASETS[name]["fixed"]
            moving = {m for p in DATASETS[name]["pairs"] for m in p if m != fixed}
            targets += [f"{subject_dir(name, s)}/qc/sub-{s}_from-{m}_to-{fixed}_regqc.png"
                        for s in SUBJECTS[name] for m in sorted(moving)]
    return targets
