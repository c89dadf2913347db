"""The README's "Add your own method" example, run from the README's own text: CLI and workflow."""

import copy
import re
import subprocess
import sys

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from helpers import write_pair
from workflow_runs import DEFAULT_CONFIG, REPO, snakemake, workdir_with

pytestmark = pytest.mark.slow


def readme_block(marker):
    """The fenced code block that follows ``<!-- marker -->`` in the README."""
    text = (REPO / "README.md").read_text()
    match = re.search(rf"<!-- {marker} -->\n```\w+\n(.*?)```", text, flags=re.S)
    assert match, f"README has no code block after <!-- {marker} -->"
    return match.group(1)


@pytest.fixture()
def own_method_dir(tmp_path):
    package = tmp_path / "mymethods"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "weighted.py").write_text(readme_block("own-method-module"))
    return tmp_path


def test_the_readme_method_trains_and_fuses_from_the_command_line(own_method_dir):
    a, b = write_pair(own_method_dir, "sub-01", seed=1)

    def lpmnet(*args):
        return subprocess.run([sys.executable, "-m", "lpmnet.cli", *args], cwd=own_method_dir, capture_output=True,
                              text=True)

    trained = lpmnet("train", "--method", "mymethods.weighted", "--x1", str(a), "--x2", str(b), "-o", "run",
                     "--iterations", "3", "--patch-size", "16", "16")
    assert trained.returncode == 0, trained.stderr
    fused = lpmnet("fuse", str(a), str(b), "-o", "fused.nii.gz", "--method", "mymethods.weighted",
                   "--checkpoint", "run/model.pt", "--batch-size", "5")
    assert fused.returncode == 0, fused.stderr
    image, fixed = nib.load(own_method_dir / "fused.nii.gz"), nib.load(a)
    assert image.shape == fixed.shape and np.allclose(image.affine, fixed.affine)
    assert lpmnet("fuse", str(a), str(b), "-o", "other.nii.gz", "--checkpoint", "run/model.pt").stderr.strip() \
        .endswith("run/model.pt: a checkpoint of method weighted, not of lpmnet")
    assert not (own_method_dir / "other.nii.gz").exists()


def test_the_readme_method_runs_in_the_workflow_with_its_config_entry(own_method_dir):
    rows = []
    for i in range(3):
        a, b = write_pair(own_method_dir / "data", f"sub-s{i}", seed=i)
        rows += [f"mine\ts{i}\tT1\t{a}\n", f"mine\ts{i}\tFLAIR\t{b}\n"]
    table = own_method_dir / "data" / "subjects.tsv"
    table.write_text("dataset\tsubject\tmodality\tpath\n" + "".join(rows))
    config = copy.deepcopy(DEFAULT_CONFIG)
    config["datasets"] = {"mine": {"source": "table", "table": str(table), "fixed": "T1", "pairs": [["T1", "FLAIR"]],
                                   "register": False}}
    config["methods"] = yaml.safe_load(readme_block("own-method-config"))["methods"]
    config["methods"]["weighted"]["training"].update(iterations=2, patch_size=[16, 16])
    snakemake(workdir_with(own_method_dir, config), "--cores", "2")
    results = own_method_dir / "results" / "mine" / "T1-FLAIR"
    summary = pd.read_csv(results / "metrics.tsv", sep="\t")
    assert set(summary.method) == {"weighted", *DEFAULT_CONFIG["fusion"]["classical"]}
    comparison = pd.read_csv(results / "comparison.tsv", sep="\t")
    assert comparison[comparison.method == "weighted"].parameters.iloc[0] == 2 * 8 * 9 + 8 + 8 * 9 + 1
    assert (results / "model" / "weighted" / "training_curves.png").exists()
