"""The workflow on imperfect studies: bad subjects beside good ones, and a training job killed mid-run."""

import copy
import csv
import os
import signal
import subprocess
import time

import numpy as np
import pandas as pd
import pytest

from helpers import TEST_AFFINE, write_pair
from lpmnet.volumes.io import save_volume
from lpmnet.methods import read_payload
from workflow_runs import DEFAULT_CONFIG, SNAKEMAKE, quick_lpmnet, snakemake, workdir_with

pytestmark = pytest.mark.slow


def table_config(table, **training):
    config = quick_lpmnet(copy.deepcopy(DEFAULT_CONFIG), **training)
    config["datasets"] = {"mine": {"source": "table", "table": str(table), "fixed": "T1",
                                   "pairs": [["T1", "FLAIR"]], "register": False}}
    return config


def subject_rows(folder, n):
    """Table rows (subject, modality, file) of ``n`` good T1 + FLAIR subjects s0, s1, ... written in ``folder``."""
    rows = []
    for i in range(n):
        a, b = write_pair(folder, f"sub-s{i}", seed=i)
        rows += [(f"s{i}", "T1", a.name), (f"s{i}", "FLAIR", b.name)]
    return rows


def write_table(folder, rows):
    table = folder / "subjects.tsv"
    table.write_text("dataset\tsubject\tmodality\tpath\n" + "".join(f"mine\t{s}\t{m}\t{p}\n" for s, m, p in rows))
    return table


def test_bad_subjects_are_tabulated_as_failed_and_the_run_fails(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = subject_rows(data, 6)
    # s2 (training): NaN values; s5 (test): a truncated file
    nan = np.random.default_rng(2).random((24, 28, 20)).astype(np.float32)
    nan[3, 4, 5] = np.nan
    save_volume(data / "sub-s2_FLAIR.nii.gz", nan, TEST_AFFINE)
    good = (data / "sub-s5_FLAIR.nii.gz").read_bytes()
    (data / "sub-s5_FLAIR.nii.gz").write_bytes(good[: len(good) // 2])
    config = table_config(write_table(data, rows))
    config["split"].update(train=["s0", "s1", "s2"], test=["s3", "s4", "s5"])
    workdir = workdir_with(tmp_path / "run", config)

    result = snakemake(workdir, "--cores", "2", "--keep-going", check=False)
    assert result.returncode != 0, "a failed subject must fail the run"
    output = result.stdout + result.stderr
    assert "sub-s5_FLAIR.nii.gz" in output and "sub-s2_FLAIR.nii.gz" in output

    pair = workdir / "results" / "mine" / "T1-FLAIR"
    long = pd.read_csv(pair / "metrics_long.tsv", sep="\t")
    assert set(long.subject) == {"s3", "s4"}
    summary = pd.read_csv(pair / "metrics.tsv", sep="\t")
    assert set(summary.n_subjects) == {2}
    failed = pd.read_csv(pair / "failed_subjects.tsv", sep="\t")
    assert list(zip(failed.subject, failed.split, failed.modality)) == [("s2", "train", "FLAIR"),
                                                                       ("s5", "test", "FLAIR")]
    assert "NaN" in failed.problem[0] and "sub-s5_FLAIR.nii.gz" in failed.problem[1]
    page = (pair / "metrics.html").read_text()
    assert "Subjects not in this table (2)" in page and "sub-s5_FLAIR.nii.gz" in page
    # 20 slices: the lpmnet VIF is undefined, and the table says why instead of a bare NaN.
    assert "the 3D VIF needs at least 41 voxels along every axis" in page
    assert set(long.note.dropna()) == {
        "undefined: the 3D VIF needs at least 41 voxels along every axis, this volume has 20 along D",
        "undefined: the 2D VIF needs slices of at least 41x41 voxels, the slices along D are 28x24",
        "undefined: no axis of at least 64 voxels where the mean of the sources has a spectrum"}
    card = read_payload(pair / "model" / "lpmnet" / "model.pt")["model_card"]
    assert [d["x1"].split("/")[-1] for d in card["data"]] == ["sub-s0_space-T1_desc-norm_T1w.nii.gz",
                                                              "sub-s1_space-T1_desc-norm_T1w.nii.gz"]
    assert not (pair / "qc" / "sub-s5_montage.png").exists() and (pair / "qc" / "sub-s3_montage.png").exists()


def test_training_killed_under_snakemake_keeps_every_log_row(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = subject_rows(data, 3)
    iterations = 60
    config = table_config(write_table(data, rows), iterations=iterations, checkpoint_every=4)
    workdir = workdir_with(tmp_path / "run", config)
    model_dir = workdir / "results" / "mine" / "T1-FLAIR" / "model" / "lpmnet"
    target = "results/mine/T1-FLAIR/model/lpmnet/model.pt"

    for kill_at in (8, 28):  # two kills, each after some checkpoints and before the end
        proc = subprocess.Popen([*SNAKEMAKE, "--directory", str(workdir), "--cores", "2", "--rerun-incomplete",
                                 target], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None:
            last = model_dir / "last.pt"
            try:
                if last.exists() and read_payload(last)["iteration"] >= kill_at:
                    break
            except Exception:  # caught between the write and the rename of the checkpoint
                pass
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert read_payload(model_dir / "last.pt")["iteration"] < iterations, "finished before the kill"
        snakemake(workdir, "--unlock")

    snakemake(workdir, "--cores", "2", "--rerun-incomplete", target)
    with open(model_dir / "training_log.csv", newline="") as f:
        logged = [int(r["iteration"]) for r in csv.DictReader(f)]
    assert logged == list(range(1, iterations + 1))


def _two_subjects(data, extra_rows=()):
    return write_table(data, [*subject_rows(data, 2), *extra_rows])


def test_unused_table_rows_are_listed_with_their_lines_and_warned_about_once(tmp_path):
    a, _ = write_pair(tmp_path, "sub-s0-extra", seed=9)
    table = _two_subjects(tmp_path, [("s0", "T2", a.name), ("s1", "T2", a.name)])
    workdir = workdir_with(tmp_path / "run", table_config(table))
    result = snakemake(workdir, "--cores", "1", "results/mine/manifest.tsv")
    console = result.stdout + result.stderr
    assert console.count("2 row(s) of") == 1 and "(T2) and are ignored" in console
    log = (workdir / "results" / "mine" / "logs" / "manifest.log").read_text()
    assert f"{table} line 6: subject s0, modality T2 is ignored" in log
    assert f"{table} line 7: subject s1, modality T2 is ignored" in log


def test_a_dataset_too_small_to_split_is_flagged(tmp_path):
    a, b = write_pair(tmp_path, "sub-s0", seed=0)
    table = write_table(tmp_path, [("s0", "T1", a.name), ("s0", "FLAIR", b.name)])
    workdir = workdir_with(tmp_path / "run", table_config(table))
    result = snakemake(workdir, "--cores", "1", "results/mine/split.tsv")
    assert "dataset mine has 1 subject(s), fewer than a train/test split needs" in result.stdout + result.stderr
    split = pd.read_csv(workdir / "results" / "mine" / "split.tsv", sep="\t")
    assert list(split.split) == ["train+test"] and "say nothing about" in split.note[0]
