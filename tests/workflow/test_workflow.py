"""The Snakemake workflow run as users run it: real snakemake processes in scratch working directories.

One tiny end-to-end run of the demo (3 subjects, T1 + FLAIR, 2 training iterations) is shared by the
rebuild tests, which then ask ``snakemake -n`` what a config change would rerun.
"""

import copy
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import yaml

from helpers import TEST_AFFINE, write_pair
from ixi_server import FileServer
from public_mirror import mirrored
from workflow_runs import (DEFAULT_CONFIG, REPO, SNAKEMAKE, planned_jobs, snakemake, tiny_config,
                           workdir_with)
from lpmnet.volumes.dicom import write_dicom_series
from lpmnet.volumes.io import save_volume
from lpmnet.methods import read_payload
from lpmnet.workflow.paths import Paths

PATHS = Paths()

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = workdir_with(tmp_path_factory.mktemp("tiny"), tiny_config())
    snakemake(workdir, "--cores", "2")
    return workdir


def test_dry_run_of_the_default_demo(tmp_path):
    workdir = workdir_with(tmp_path, DEFAULT_CONFIG)
    # Before the sources are checked, only the data and the checks can be planned (input_status is a checkpoint).
    assert planned_jobs(workdir) == {"demo_dataset": 1, "check_inputs": 6, "input_status": 1, "all": 1}
    snakemake(workdir, "--cores", "2", "results/demo/input_status.tsv")
    jobs = planned_jobs(workdir)
    assert jobs["convert"] == 18 and jobs["register"] == 12
    # lpmnet, mambadfuse, dc2fusion, asfe trained per pair; lpmnet-pretrained (the shipped model) only fuses;
    # and the classical mean, max, pca and laplacian
    assert jobs["train"] == 2 * 4 and jobs["metric_tables"] == 2
    assert jobs["fuse"] == 5 * jobs["fuse_classical"] / 4 and jobs["metrics"] == 9 * jobs["fuse_classical"] / 4


def test_end_to_end_tiny_demo(finished_run):
    results = finished_run / "results" / "demo"
    summary = pd.read_csv(results / "T1-FLAIR" / "metrics.tsv", sep="\t")
    assert set(zip(summary.method, summary.convention)) == {
        (m, c) for m in ("lpmnet", "lpmnet-pretrained", "mambadfuse", "mean", "max")
        for c in ("lpmnet", "standard", "artefacts")}
    assert list(summary.method[:2]) == ["lpmnet", "lpmnet"]
    long = pd.read_csv(results / "T1-FLAIR" / "metrics_long.tsv", sep="\t")
    assert set(long.metric) == {"SSIM", "Qabf", "MI", "SCD", "VIF", "AG", "SD", "SF", "rSFe", "EN", "PSNR", "Nabf",
                                "background", "lattice"}
    split = pd.read_csv(results / "split.tsv", sep="\t")
    test_subjects = split.subject[split.split == "test"].tolist()
    assert len(test_subjects) == 1 and len(split) == 3

    import nibabel as nib

    subject = test_subjects[0]
    t1 = nib.load(finished_run / PATHS.converted("demo", subject, "T1"))  # converted from DICOM
    for method in ("lpmnet", "mambadfuse"):
        fused = nib.load(results / "T1-FLAIR" / "fused" / f"sub-{subject}_space-T1_desc-{method}_fused.nii.gz")
        assert fused.shape == t1.shape and np.allclose(fused.affine, t1.affine, atol=1e-4)
        assert 0 <= fused.get_fdata().min() and fused.get_fdata().max() <= 1
    registration = finished_run / PATHS.registration_report("demo", subject, "T1", "FLAIR")
    assert '"improved": true' in registration.read_text()
    for s in split.subject:  # registered volumes are kept (a resize starts from them), on the fixed grid
        registered = nib.load(finished_run / PATHS.registered("demo", s, "T1", "FLAIR"))
        fixed = nib.load(finished_run / PATHS.normalized("demo", s, "T1", "T1"))
        assert registered.shape == fixed.shape and np.allclose(registered.affine, fixed.affine, atol=1e-4)
    for method in ("lpmnet", "mambadfuse"):
        assert (results / "T1-FLAIR" / "model" / method / "training_curves.png").stat().st_size > 10_000
    curve = pd.read_csv(results / "T1-FLAIR" / "model" / "lpmnet" / "learning_curve.tsv", sep="\t")
    assert list(curve.iteration) == [1, 2] and set(curve.columns[3:]) == {"SSIM", "Qabf", "VIF", "MI"}
    assert curve.x1.str.contains(f"sub-{test_subjects[0]}_").all() and curve.SSIM.between(0, 1).all()
    assert (results / "T1-FLAIR" / "model" / "lpmnet" / "learning_curve.png").stat().st_size > 10_000
    logs = {p: p.read_text() for p in (results / "logs").rglob("*.log")}
    assert not [p for p, text in logs.items() if "building the CPU kernel" in text]  # the install compiled it
    assert "loaded the prebuilt CPU kernel" in logs[results / "logs" / "fuse" / "T1-FLAIR" /
                                                    f"sub-{subject}_space-T1_lpmnet.log"]
    mamba_log = pd.read_csv(results / "T1-FLAIR" / "model" / "mambadfuse" / "training_log.csv")
    assert list(mamba_log.columns[4:7]) == ["intensity", "gradient", "ssim"] and len(mamba_log) == 2
    comparison = pd.read_csv(results / "T1-FLAIR" / "comparison.tsv", sep="\t")
    assert set(comparison.method) == {"lpmnet", "lpmnet-pretrained", "mambadfuse", "mean", "max"}
    assert set(comparison.convention) == {"lpmnet", "standard", "artefacts"}
    defined = comparison[comparison["mean"].notna()]  # the lattice needs axes of 64 voxels: NaN here
    assert (defined.groupby(["convention", "metric"]).best.sum() >= 1).all()
    assert set(comparison.test_note) == {"reference", "n too small"}  # one test subject
    lpm = comparison[comparison.method == "lpmnet"].iloc[0]
    assert lpm.parameters == 26051 and lpm.fusion_seconds > 0 and lpm.training_seconds > 0
    mamba = comparison[comparison.method == "mambadfuse"].iloc[0]
    assert mamba.parameters > 0 and mamba.fusion_seconds > 0 and mamba.training_seconds > 0
    shipped = comparison[comparison.method == "lpmnet-pretrained"].iloc[0]
    assert shipped.parameters == 26051 and np.isnan(shipped.training_seconds)
    # the same network on the same volume: the cost columns time the fusion, not start-up or a kernel build
    assert shipped.fusion_seconds == pytest.approx(lpm.fusion_seconds, rel=0.25)
    assert comparison[comparison.method == "mean"].iloc[0].parameters == 0
    assert "Which method fuses best" in (results / "T1-FLAIR" / "comparison.html").read_text()
    assert planned_jobs(finished_run) == {}

    report = finished_run / "report.html"
    snakemake(finished_run, "--report", str(report))
    assert report.stat().st_size > 100_000


def test_the_run_ends_with_its_report_and_a_viewer_page_per_test_subject(finished_run):
    from browser import check_viewer_page

    report = finished_run / PATHS.report()
    page = report.read_text()
    assert "<h2>demo: T1-FLAIR</h2>" in page and "Convention lpmnet" in page
    links = re.findall(r"href='([^'#]+)'", page)
    assert all((report.parent / link).is_file() for link in links)
    viewers = [link for link in links if link.endswith("_viewer.html")]
    assert viewers == [f"demo/T1-FLAIR/viewer/sub-{s}_viewer.html"
                       for s in pd.read_csv(report.parent / "demo" / "split.tsv", sep="\t").query("split == 'test'").subject]
    figures = check_viewer_page(report.parent / viewers[0])
    assert figures["views"] == 2 + 5  # T1, FLAIR and every method


def test_the_results_are_a_valid_bids_derivatives_dataset(finished_run):
    import json

    from bids_validator import validator_errors

    results = finished_run / "results" / "demo"
    description = json.loads((results / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "lpmnet"
    assert [g["Name"] for g in description["GeneratedBy"][1:]] == ["lpmnet", "lpmnet-pretrained", "mambadfuse",
                                                                  "mean", "max"]
    assert "T1-FLAIR" in (results / ".bidsignore").read_text().split()
    sidecar = json.loads((finished_run / PATHS.normalized("demo", "synth01", "T1", "FLAIR")).with_suffix("")
                         .with_suffix(".json").read_text())
    assert sidecar["SpatialReference"] == "bids::sub-synth01/anat/sub-synth01_T1w.nii.gz"
    assert sidecar["Sources"] == ["bids::sub-synth01/anat/sub-synth01_space-T1_desc-registered_FLAIR.nii.gz"]
    assert sidecar["SkullStripped"] is True  # the demo's template is skull-stripped
    fused = json.loads(next((results / "T1-FLAIR" / "fused").glob("*_desc-lpmnet_fused.json")).read_text())
    assert fused["Sources"][0].startswith("bids::sub-") and fused["SpatialReference"].endswith("_T1w.nii.gz")
    assert validator_errors(results) == []


@pytest.mark.parametrize("method, section, key, value", [
    ("lpmnet", "training", "loss_settings", {"gamma": 0.25}),
    ("mambadfuse", "training", "lr", 1e-3),
    ("mambadfuse", "model", "embed_dim", 12),
])
def test_changing_one_methods_setting_reruns_only_that_method(finished_run, method, section, key, value):
    config = tiny_config()
    config["methods"][method].setdefault(section, {})[key] = value
    workdir_with(finished_run, config)
    try:
        jobs = planned_jobs(finished_run)
        outputs = " ".join(re.findall(r"^\s+output: (.*)$", snakemake(finished_run, "-n", "--cores", "1").stdout,
                                      flags=re.M))
    finally:
        workdir_with(finished_run, tiny_config())
    curve = {"learning_curve": 1, "learning_curve_figure": 1} if method == "lpmnet" else {}
    assert jobs == {"train": 1, "fuse": 1, "metrics": 1, "metric_tables": 1, "fusion_montage": 1, "viewer": 1,
                    "training_curves": 1, "comparison": 1, "report": 1, "all": 1, **curve}
    assert f"model/{method}/model.pt" in outputs and f"desc-{method}_fused" in outputs
    other = ({"lpmnet", "mambadfuse"} - {method}).pop()
    assert f"model/{other}/" not in outputs and f"desc-{other}_" not in outputs


def test_changing_a_methods_fusion_setting_reruns_its_fusions_only(finished_run):
    config = tiny_config()
    config["methods"]["mambadfuse"]["fusion"] = {"batch_size": 3}
    workdir_with(finished_run, config)
    try:
        jobs = planned_jobs(finished_run)
    finally:
        workdir_with(finished_run, tiny_config())
    assert "train" not in jobs and jobs["fuse"] == 1 and jobs["metrics"] == 1


def test_changing_the_registration_reruns_from_registration_on(finished_run):
    config = tiny_config()
    config["registration"]["transform"] = "Affine"
    workdir_with(finished_run, config)
    try:
        jobs = planned_jobs(finished_run)
    finally:
        workdir_with(finished_run, tiny_config())
    assert "convert" not in jobs and "demo_dataset" not in jobs and "split" not in jobs
    assert jobs["register"] == 3 and jobs["normalize"] == 3  # the moving FLAIR of each subject
    assert jobs["train"] == 2 and jobs["fuse"] == 3 and jobs["fuse_classical"] == 2
    assert jobs["metrics"] == 5 and jobs["metric_tables"] == 1


def test_paper_style_resize_coexists_with_the_native_grid(finished_run):
    import nibabel as nib

    from lpmnet.volumes.resample import resized_affine

    results = finished_run / "results" / "demo"
    native = {p: p.stat().st_mtime_ns for p in (results / "T1-FLAIR").rglob("*") if p.is_file()}
    config = tiny_config()
    config["datasets"]["demo"]["target_shape"] = [32, 48, 40]
    workdir_with(finished_run, config)
    try:
        # Only the resize and normalisation of the kept registered volumes and the pair's work on the new grid.
        assert planned_jobs(finished_run) == {
            "resize": 6, "normalize": 6, "train": 2, "fuse": 3, "fuse_classical": 2, "metrics": 5, "metric_tables": 1,
            "fusion_montage": 1, "viewer": 1, "training_curves": 2, "learning_curve": 1, "learning_curve_figure": 1,
            "comparison": 1, "report": 1, "all": 1}
        snakemake(finished_run, "--cores", "2")
    finally:
        workdir_with(finished_run, tiny_config())
    # back on the native grid: nothing to redo but the report, which shows the pairs of the grid configured
    assert planned_jobs(finished_run) == {"report": 1, "all": 1}
    snakemake(finished_run, "--cores", "1")
    assert {p: p.stat().st_mtime_ns for p in native} == native

    resized = results / "T1-FLAIR_res-32x48x40"
    assert len(pd.read_csv(resized / "metrics.tsv", sep="\t")) == 5 * 3  # methods x (2 conventions, artefacts)
    fused = next((resized / "fused").glob("sub-*_space-T1_res-32x48x40_desc-lpmnet_fused.nii.gz"))
    subject = fused.name.split("_")[0].removeprefix("sub-")
    t1 = nib.load(finished_run / PATHS.normalized("demo", subject, "T1", "T1"))
    image = nib.load(fused)
    assert image.shape == (40, 48, 32)  # (D, H, W) = the files' (k, j, i)
    np.testing.assert_allclose(image.affine, resized_affine(t1.affine, t1.shape, (40, 48, 32)), atol=1e-4)


def _table_dataset(folder):
    """Six subjects; all but the first have one bad input of a different kind."""
    rows = []
    for i in range(6):
        a, b = write_pair(folder, f"sub-s{i}", seed=i)
        rows += [("mine", f"s{i}", "T1", a.name), ("mine", f"s{i}", "FLAIR", b.name)]
    # s1: the FLAIR file does not exist
    rows[3] = ("mine", "s1", "FLAIR", "absent.nii.gz")
    # s2: unreadable NIfTI
    (folder / "sub-s2_FLAIR.nii.gz").write_bytes(b"\x1f\x8b truncated")
    # s3: a 4D series instead of a volume
    data = np.zeros((24, 28, 20, 2), np.float32)
    data[..., 0] = np.random.default_rng(3).random((24, 28, 20))
    save_volume(folder / "sub-s3_FLAIR.nii.gz", data, TEST_AFFINE)
    # s4: no FLAIR at all
    rows = [r for r in rows if r[:3] != ("mine", "s4", "FLAIR")]
    # s5: the T1 is a DICOM folder holding two series
    series = folder / "s5_dicom"
    volume = np.random.default_rng(5).random((24, 28, 20)).astype(np.float32) * 100
    write_dicom_series(volume, np.diag([2.0, 2.0, 2.0, 1.0]), series, series_number=1, uid_seed=(5, 1))
    write_dicom_series(volume[:, :, :10], np.diag([2.0, 2.0, 2.0, 1.0]), series / "other", series_number=2,
                       uid_seed=(5, 2))
    rows[rows.index(("mine", "s5", "T1", "sub-s5_T1.nii.gz"))] = ("mine", "s5", "T1", "s5_dicom")
    table = folder / "subjects.tsv"
    table.write_text("dataset\tsubject\tmodality\tpath\n" + "".join("\t".join(r) + "\n" for r in rows))
    return table


def test_bad_inputs_stop_only_the_affected_jobs(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    table = _table_dataset(data)
    config = copy.deepcopy(DEFAULT_CONFIG)
    config["datasets"] = {"mine": {"source": "table", "table": str(table), "fixed": "T1",
                                   "pairs": [["T1", "FLAIR"]], "register": False}}
    workdir = workdir_with(tmp_path / "run", config)
    targets = [PATHS.normalized("mine", f"s{i}", "T1", m) for i in range(6) for m in ("T1", "FLAIR")]
    result = snakemake(workdir, "--cores", "2", "--keep-going", *targets, check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    for needle in ("absent.nii.gz: file not found", "sub-s2_FLAIR.nii.gz", "sub-s3_FLAIR.nii.gz",
                   "subject s4 has no FLAIR", "s5_dicom"):
        assert needle in output, needle
    produced = {t for t in targets if (workdir / t).exists()}
    assert {PATHS.normalized("mine", "s0", "T1", m) for m in ("T1", "FLAIR")} <= produced
    assert PATHS.normalized("mine", "s1", "T1", "T1") in produced  # its good modality is kept
    assert not any(PATHS.normalized("mine", f"s{i}", "T1", "FLAIR") in produced for i in range(1, 5))


def test_real_data_scenario(shared_data):
    scenario = REPO / "tests" / "workflow" / "real"
    for leftover in ("results", ".snakemake"):
        shutil.rmtree(scenario / leftover, ignore_errors=True)
    try:
        snakemake(scenario, "--cores", "2")
        for dataset, pair in (("tcga", "T1-FLAIR"), ("spm", "T1-PET")):
            summary = pd.read_csv(scenario / "results" / dataset / pair / "metrics.tsv", sep="\t")
            assert len(summary) == 6 and summary.filter(like="_mean").notna().any(axis=None)
    finally:
        for leftover in ("results", ".snakemake"):
            shutil.rmtree(scenario / leftover, ignore_errors=True)


def planned_job_inputs(workdir, rule):
    """{wildcards line: input line} of the jobs of ``rule`` in a dry run."""
    out = snakemake(workdir, "-n", "--cores", "1").stdout
    jobs = re.findall(rf"^rule {rule}:\n    input: (.*)\n(?:    .*\n)*?    wildcards: (.*)$", out, flags=re.M)
    return {wildcards: inputs for inputs, wildcards in jobs}


def test_the_pretrained_models_start_training_and_fuse_by_the_pairs_kind(tmp_path):
    config = copy.deepcopy(DEFAULT_CONFIG)
    config["datasets"]["demo"].update(subjects=3, pairs=[["T1", "FLAIR"], ["T1", "PET"]])
    config["methods"] = {"lpmnet": {"training": {"init": "pretrained", "iterations": 2, "patch_size": [16, 16, 16]}},
                         "lpmnet-pretrained": {"network": "lpmnet", "checkpoint": "pretrained"}}
    workdir = workdir_with(tmp_path, config)
    snakemake(workdir, "--cores", "2", "results/demo/input_status.tsv")
    shipped = REPO / "lpmnet" / "methods" / "lpmnet" / "weights"
    training = planned_job_inputs(workdir, "train")
    assert len(training) == 2
    for wildcards, inputs in training.items():
        kind = "mri-pet" if "T1-PET" in wildcards else "mri-mri"
        assert str(shipped / f"lpmnet_{kind}.pt") in inputs.split(", ")
    fusions = {w: i for w, i in planned_job_inputs(workdir, "fuse").items() if "method=lpmnet-pretrained" in w}
    assert len(fusions) == 2  # one test subject, two pairs
    for wildcards, inputs in fusions.items():
        kind = "mri-pet" if "T1-PET" in wildcards else "mri-mri"
        assert inputs.endswith(str(shipped / f"lpmnet_{kind}.pt"))


def test_make_pretrained_trains_on_public_volumes_and_validates_on_held_out_ones(tmp_path, shared_data):
    """The `pretrained` target of config/pretrained.yaml at a test's size (3 synthetic subjects, 2 iterations), its
    public volumes served by a local server from ../shared/data: each model trains on the synthetic and the real
    training pairs of its kind, is validated on the held-out pairs of its kind against mean, max and Laplacian
    fusion under both normalisations, and the card gives data, checksums, licences, recipe and those figures."""
    config = copy.deepcopy(DEFAULT_CONFIG)
    pretraining = yaml.safe_load((REPO / "config" / "pretrained.yaml").read_text())
    datasets = pretraining["datasets"]
    datasets["pretrain"].update(subjects=3, modalities=["T1", "FLAIR", "PET"], pairs=[["T1", "FLAIR"], ["T1", "PET"]])
    del datasets["openms"]  # 1 mm volumes: the glioma case is enough real training data for a test
    pretraining["pretrained"]["datasets"] = ["pretrain", "tcga"]
    pretraining["pretrained"]["models"]["mri-mri"]["pairs"] = [["T1", "FLAIR"], ["T1", "T2"], ["T1CE", "T2"],
                                                               ["T1CE", "FLAIR"]]
    pretraining["pretrained"]["training"].update(iterations=2, patch_size=[16, 16, 16], val_every=1)
    config.update(pretraining)
    with FileServer(shared_data.parent) as server:
        config["datasets"] = mirrored(datasets, server.url, shared_data.parent)
        workdir = workdir_with(tmp_path, config)
        snakemake(workdir, "--cores", "2", "pretrained")
    results = workdir / "results" / "pretrained"
    card = (results / "MODEL_CARD.md").read_text()
    for kind, real_pairs, held_pairs in (("mri-mri", 4, {"T1-T2", "T1-PD"}), ("mri-pet", 0, {"T1-PET"})):
        payload = read_payload(results / kind / "model.pt")
        assert payload["method"] == "lpmnet" and payload["model_card"]["kind"] == kind
        trained_on = [d["x1"] for d in payload["model_card"]["data"]]
        assert sum("/tcga/" in path for path in trained_on) == real_pairs
        assert not any("/spm/" in path for path in trained_on)  # held out
        validated_on = [d["x1"] for d in payload["model_card"]["validation_data"]]
        assert validated_on and not any("/tcga/" in path for path in validated_on)  # its one subject only trains
        log = pd.read_csv(results / kind / "training_log.csv")
        assert len(log) == 2 and log.val_SSIM.notna().all()  # validated on the synthetic test subjects
        table = pd.read_csv(results / kind / "held_out.tsv", sep="\t", keep_default_na=False)
        assert set(table.pair) == held_pairs and set(table.normalisation) == {"workflow", "head"}
        assert set(table.method) == {"model", "mean", "max", "laplacian"}
        assert table[["SSIM", "Qabf", "VIF", "background", "lattice"]].notna().all().all()
        assert f"lpmnet_{kind}.pt" in card and f"### {kind}" in card
    loss = pretraining["pretrained"]["training"]["loss"]
    assert "seed 1" in card and "Louis Collins" in card and f'"loss": "{loss}"' in card
    for cfg in config["datasets"].values():  # where each volume came from and its checksum
        for volumes in cfg.get("files", {}).values():
            for entry in volumes.values():
                assert entry["url"] in card and entry["sha256"] in card
    assert "CC BY 3.0" in card and "held out, validation only" in card and "wins" in card


def test_every_rule_has_a_log_a_benchmark_and_an_existing_conda_env():
    """`conda:` paths are relative to the .smk file and a wrong one fails only when the job runs."""
    for smk in (REPO / "rules").glob("*.smk"):
        text = smk.read_text()
        rules = re.split(r"^rule ", text, flags=re.M)[1:]
        for body in rules:
            name = body.split(":")[0]
            assert "    log:" in body, f"{smk.name}: rule {name} has no log"
            assert "    benchmark:" in body, f"{smk.name}: rule {name} has no benchmark"
            env = re.search(r"    conda:\s*\n\s*\"([^\"]+)\"", body)
            assert env, f"{smk.name}: rule {name} has no conda env"
            assert (smk.parent / env.group(1)).resolve().is_file(), f"{smk.name}: {env.group(1)} missing"


def test_lint_is_clean():
    result = subprocess.run([*SNAKEMAKE, "--lint"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0 and "Congratulations" in result.stdout + result.stderr
