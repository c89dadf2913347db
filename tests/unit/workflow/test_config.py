"""Configuration errors that stop the workflow before any job runs, each naming its key: the functions that
rules/common.smk calls while it reads the config, called directly, and one dry run of the workflow to show
that it does call them."""

import copy

import pytest
import yaml
from snakemake.utils import validate

from helpers import write_pair
from lpmnet.workflow.config import MethodConfigs, resolve_methods, resolve_pretraining
from lpmnet.workflow.index import check_dataset_config, check_dataset_modalities, dataset_sources, with_defaults
from workflow_runs import DEFAULT_CONFIG, REPO, snakemake, workdir_with

SCHEMA = str(REPO / "config" / "schema.yaml")


def with_value(config, key, value):
    """A copy of ``config`` with the dotted ``key`` set to ``value``."""
    config = copy.deepcopy(config)
    *parents, last = key.split(".")
    node = config
    for p in parents:
        node = node[p]
    node[last] = value
    return config


def workflow_checks(config):
    """What rules/common.smk checks before any job: the schema, the datasets, the methods and the shipped
    models' training."""
    validate(config, schema=SCHEMA)
    datasets = {name: with_defaults(cfg) for name, cfg in config["datasets"].items()}
    for name, cfg in datasets.items():
        check_dataset_config(name, cfg)
    MethodConfigs(config["methods"], config["training"], config["fusion"]["classical"]).resolve()
    if config.get("pretrained"):
        resolve_pretraining(config["pretrained"], datasets)


CONFIG_ERRORS = [
    ("methods.lpmnet.training.iterations", "many", "methods.lpmnet.training"),
    ("methods.mambadfuse.training.lrate", 0.1, "methods.mambadfuse.training.lrate: unknown training setting"),
    ("methods.mambadfuse.model.embed_dims", 8, "methods.mambadfuse.model"),
    ("methods.mambadfuse.fusion.tile", [32], "methods.mambadfuse.fusion.tile: mambadfuse has no such fusion setting"),
    ("methods.mambadfuse.network", "mambadfus", "methods.mambadfuse.network: unknown fusion method 'mambadfus'"),
    ("methods.lpmnet.training.loss", "l2", "methods.lpmnet.training: unknown loss 'l2'"),
    ("methods.lpmnet.training.patch_size", [24, 24, 24], "multiples of 16"),
    ("methods.mambadfuse.training.init", "pretrained",
     "methods.mambadfuse.training.init: mambadfuse ships no pretrained model"),
    ("registration.transform", "Elastic", "transform"),
    ("trainig", {"iterations": 3}, "trainig"),
]


def test_the_shipped_config_passes_the_checks():
    workflow_checks(DEFAULT_CONFIG)


@pytest.mark.parametrize("key, value, message", CONFIG_ERRORS)
def test_config_errors_name_the_key(key, value, message):
    with pytest.raises(Exception) as error:
        workflow_checks(with_value(DEFAULT_CONFIG, key, value))
    assert message in str(error.value)


@pytest.mark.slow  # a dry run of the workflow: over 10 s on a 2-core machine
def test_the_workflow_refuses_a_bad_config_before_any_job(tmp_path):
    """A method's entry, checked by rules/common.smk while it reads the config (a dry run of the workflow)."""
    key, value, message = CONFIG_ERRORS[1]
    result = snakemake(workdir_with(tmp_path, with_value(DEFAULT_CONFIG, key, value)), "-n", "--cores", "1",
                       check=False)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr


def test_a_pretrained_kind_that_is_not_shipped_is_refused():
    pretraining = yaml.safe_load((REPO / "config" / "pretrained.yaml").read_text())
    pretraining["pretrained"]["models"]["mri-ct"] = {"pairs": [["T1", "FLAIR"]]}
    datasets = {name: with_defaults(cfg) for name, cfg in pretraining["datasets"].items()}
    with pytest.raises(ValueError, match=r"^pretrained\.models\.mri-ct: "):
        resolve_pretraining(pretraining["pretrained"], datasets)


@pytest.mark.parametrize("change, message", [
    (lambda p: p.update(datasets=["pretrain", "nowhere"]), r"^pretrained\.datasets: 'nowhere' is not a dataset"),
    (lambda p: p.update(held_out=["spm", "tcga"]), r"^pretrained\.held_out: tcga is also a training dataset"),
    (lambda p: p["models"]["mri-mri"]["pairs"].append(["T2", "PD"]), r"^pretrained\.models\.mri-mri\.pairs: \['T2', 'PD'\] "
                                                                     r"is a pair of no dataset"),
])
def test_the_pretraining_section_is_checked(change, message):
    pretraining = yaml.safe_load((REPO / "config" / "pretrained.yaml").read_text())
    change(pretraining["pretrained"])
    datasets = {name: with_defaults(cfg) for name, cfg in pretraining["datasets"].items()}
    with pytest.raises(ValueError, match=message):
        resolve_pretraining(pretraining["pretrained"], datasets)


@pytest.mark.parametrize("change, message", [
    (lambda d: d["spm"].update(register=True), r"spm must be a downloads dataset of co-registered volumes"),
    (lambda d: d.update(spm={**d["pretrain"]}), r"spm must be a downloads dataset"),
    (lambda d: d["spm"]["pairs"].append(["T1", "CT"]), r"spm: no pretrained model fuses CT"),
])
def test_a_held_out_dataset_must_be_downloaded_co_registered_volumes_of_a_shipped_kind(change, message):
    pretraining = yaml.safe_load((REPO / "config" / "pretrained.yaml").read_text())
    change(pretraining["datasets"])
    datasets = {name: with_defaults(cfg) for name, cfg in pretraining["datasets"].items()}
    with pytest.raises(ValueError, match=r"^pretrained\.held_out: " + message):
        resolve_pretraining(pretraining["pretrained"], datasets)


def test_a_held_out_volume_that_is_also_training_data_is_refused():
    """Another dataset name for the same file would make the validation look held out when it is not."""
    pretraining = yaml.safe_load((REPO / "config" / "pretrained.yaml").read_text())
    datasets = pretraining["datasets"]
    datasets["tcga"]["files"]["FG6692"]["T2"] = datasets["spm"]["files"]["avg152"]["T2"]
    datasets = {name: with_defaults(cfg) for name, cfg in datasets.items()}
    with pytest.raises(ValueError, match=r"^pretrained\.held_out: the file of sha256 6466e5f9\w+ is also training"):
        resolve_pretraining(pretraining["pretrained"], datasets)


def test_the_segmentation_cannot_be_fused(tmp_path):
    dataset = with_defaults({"source": "brats", "root": str(tmp_path), "fixed": "T1", "pairs": [["T1", "seg"]]})
    with pytest.raises(ValueError, match="never fused"):
        check_dataset_config("brats", dataset)


def test_a_pair_modality_that_no_subject_has_is_refused(tmp_path):
    rows = []
    for i in range(2):
        a, b = write_pair(tmp_path, f"sub-s{i}", seed=i)
        rows += [(f"s{i}", "T1", a.name), (f"s{i}", "FLAIR", b.name)]
    table = tmp_path / "subjects.tsv"
    table.write_text("dataset\tsubject\tmodality\tpath\n" + "".join(f"mine\t{s}\t{m}\t{p}\n" for s, m, p in rows))
    dataset = with_defaults({"source": "table", "table": str(table), "fixed": "T1", "pairs": [["T1", "PTE"]],
                             "register": False})
    check_dataset_config("mine", dataset)
    with pytest.raises(ValueError) as error:
        check_dataset_modalities("mine", dataset, dataset_sources("mine", dataset, str(tmp_path / "results")))
    assert str(error.value) == "datasets.mine.pairs: no subject has PTE; the dataset's modalities are FLAIR, T1"


def test_every_method_entry_is_resolved_with_its_recipe():
    methods = resolve_methods(DEFAULT_CONFIG["methods"], DEFAULT_CONFIG["training"],
                              DEFAULT_CONFIG["fusion"]["classical"])
    assert list(methods) == list(DEFAULT_CONFIG["methods"])
    for entry in methods.values():
        assert entry["training"] is None or entry["training"]["method"] == entry["network"]


#: A downloads dataset as config/config.yaml documents it (a subject lacking FLAIR).
DOWNLOADS = {"source": "downloads", "fixed": "T1", "pairs": [["T1", "T2"], ["T1", "FLAIR"]], "files": {
    "oms07": {m: {"url": f"https://example.org/oms07/{m}.nii.gz", "sha256": "ab" * 32} for m in ("T1", "T2", "FLAIR")},
    "mni": {"T1": {"url": "https://example.org/mni/T1.nii?raw=true", "sha256": "AB" * 32},
            "T2": {"url": "https://example.org/mni/T2.nii", "sha256": "cd" * 32}},
}}


@pytest.mark.parametrize("key, value, message", [
    ("datasets.real.files.mni.T2.url", "https://example.org/mni/T2.mnc",
     "datasets.real.files.mni.T2: https://example.org/mni/T2.mnc names no .nii or .nii.gz file"),
    ("datasets.real.files.mni.T2.url", "https://example.org/mni/T2.nii.gz/download.zip",
     "datasets.real.files.mni.T2: "),
    ("datasets.real.files.mni.T2", {"url": "https://example.org/mni/T2.nii"},
     "'sha256' is a required property\n\nFailed validating 'required' in schema"),
    ("datasets.real.files.mni.T2.sha256", "cd" * 31, "On instance['datasets']['real']['files']['mni']['T2']['sha256']"),
    ("datasets.real.files.mni.T2.md5", "cd" * 16, "'md5' was unexpected"),
    ("datasets.real.files", {"oms-07": DOWNLOADS["files"]["oms07"]},
     "'oms-07' does not match '^[A-Za-z0-9]+$'"),
    ("datasets.real.files", {}, "On instance['datasets']['real']['files']"),
    ("datasets.real.files", {1: DOWNLOADS["files"]["oms07"]}, "datasets.real.files.1: YAML reads this subject label"),
    ("datasets.real.files.mni.T2.url", "ftp://example.org/mni/T2.nii",
     "['datasets']['real']['files']['mni']['T2']['url']"),
])
def test_a_bad_downloads_entry_is_refused_naming_its_key(key, value, message):
    config = with_value(DEFAULT_CONFIG, "datasets", {"real": copy.deepcopy(DOWNLOADS)})
    workflow_checks(config)
    with pytest.raises(Exception) as error:
        workflow_checks(with_value(config, key, value))
    assert message in str(error.value)


def test_a_downloads_dataset_needs_its_files():
    dataset = {k: v for k, v in DOWNLOADS.items() if k != "files"}
    with pytest.raises(Exception, match="'files' is a required property"):
        workflow_checks(with_value(DEFAULT_CONFIG, "datasets", {"real": dataset}))


def test_each_pretrained_model_may_change_the_shared_recipe():
    pretraining = yaml.safe_load((REPO / "config" / "pretrained.yaml").read_text())
    datasets = {name: with_defaults(cfg) for name, cfg in pretraining["datasets"].items()}
    section = pretraining["pretrained"]
    section["models"]["mri-pet"]["training"] = {"loss": "lpmnet", "iterations": 7}
    recipes = resolve_pretraining(section, datasets)
    assert recipes["mri-pet"]["loss"] == "lpmnet" and recipes["mri-pet"]["iterations"] == 7
    assert recipes["mri-mri"]["iterations"] == section["training"]["iterations"]
    section["models"]["mri-pet"]["training"] = {"losses": "asfe"}
    with pytest.raises(ValueError, match=r"^pretrained\.models\.mri-pet\.training \(with pretrained\.training\): "):
        resolve_pretraining(section, datasets)
