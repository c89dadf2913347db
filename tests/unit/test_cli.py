"""The command line as a user runs it: real processes, real files, one-line errors."""

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from helpers import TEST_AFFINE, write_pair
from lpmnet.volumes.io import save_volume
from lpmnet.metrics import METRIC_NAMES
from lpmnet.methods import save_checkpoint
from lpmnet.methods.lpmnet.network import LPMNet


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "lpmnet.cli", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    ckpt = folder / "model.pt"
    model = LPMNet(base_c=4, depth_c=1, depth_m=1, reconstruction=False)
    save_checkpoint(ckpt, model, "lpmnet", model.config)
    a, b = write_pair(folder)
    return folder, a, b, ckpt


def test_fuse_then_metrics_json(files, tmp_path):
    folder, a, b, ckpt = files
    out = tmp_path / "fused.nii.gz"
    result = run_cli("fuse", a, b, "-o", out, "--checkpoint", ckpt, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert np.allclose(nib.load(out).affine, TEST_AFFINE)
    sidecar = json.loads((tmp_path / "fused.json").read_text())
    assert sidecar["ModelKwargs"] == {**LPMNet(base_c=4, depth_c=1, depth_m=1, reconstruction=False).config}
    assert sidecar["ParameterCount"] == sum(p.numel() for p in LPMNet(base_c=4, depth_c=1, depth_m=1,
                                                                       reconstruction=False).parameters())
    assert 0 < sidecar["Seconds"] and "KernelLoad" in sidecar  # this process loaded the kernel while fusing
    result = run_cli("metrics", a, b, out, "--convention", "both", "--json", "-o", tmp_path / "m.json")
    assert result.returncode == 0, result.stderr
    table = json.loads(result.stdout)
    assert set(table) == {"lpmnet", "standard"}
    for convention in table:
        assert list(table[convention]) == list(METRIC_NAMES)
    assert json.loads((tmp_path / "m.json").read_text()) == table
    only = json.loads(run_cli("metrics", a, b, out, "--convention", "standard", "--json").stdout)
    assert set(only) == {"standard"}
    # --method writes the workflow's per-subject document, which the tables read.
    from lpmnet.metrics.records import read_metrics_json

    result = run_cli("metrics", a, b, out, "--method", "mine", "--subject", "s7", "-o", tmp_path / "doc.json")
    assert result.returncode == 0, result.stderr
    doc = read_metrics_json(tmp_path / "doc.json")
    assert doc["subject"] == "s7" and doc["method"] == "mine"
    assert set(doc["conventions"]) == {"lpmnet", "standard", "artefacts"}  # the default: --convention all
    assert set(doc["conventions"]["artefacts"]["values"]) == {"background", "lattice"}


@pytest.mark.parametrize("rule", ["mean", "max", "pca", "laplacian"])
def test_classical_rules_fuse_from_the_command_line(files, tmp_path, rule):
    from lpmnet.methods.classical import fuse_classical
    from lpmnet.volumes.io import load_volume
    from lpmnet.volumes.normalize import minmax01

    folder, a, b, _ = files
    out = tmp_path / f"{rule}.nii.gz"
    result = run_cli("fuse", a, b, "-o", out, "--method", rule)
    assert result.returncode == 0, result.stderr
    fused = nib.load(out)
    assert np.allclose(fused.affine, TEST_AFFINE)
    expected = fuse_classical(rule, minmax01(load_volume(a).data), minmax01(load_volume(b).data))
    assert np.allclose(fused.get_fdata(), expected, atol=1e-6)
    sidecar = json.loads((tmp_path / f"{rule}.json").read_text())
    assert sidecar["Method"] == rule and sidecar["ParameterCount"] == 0 and sidecar["Seconds"] >= 0


def test_a_classical_rule_refuses_network_options(files, tmp_path):
    folder, a, b, ckpt = files
    result = run_cli("fuse", a, b, "-o", tmp_path / "f.nii.gz", "--method", "max", "--checkpoint", ckpt, "--tile", "16")
    assert result.returncode == 2 and "max is a classical rule (no network): it takes no --tile, --checkpoint" in \
        result.stderr
    assert not (tmp_path / "f.nii.gz").exists()


def _bad_inputs(folder, a):
    data = nib.load(a).get_fdata(dtype=np.float32)
    nan = data.copy()
    nan[3, 3, 3] = np.nan
    bad = {
        "missing": folder / "missing.nii.gz",
        "not_nifti": folder / "notes.nii.gz",
        "4d": save_volume(folder / "series.nii.gz", np.stack([data, data], -1), TEST_AFFINE),
        "nan": save_volume(folder / "nan.nii.gz", nan, TEST_AFFINE),
        "constant": save_volume(folder / "constant.nii.gz", np.ones_like(data), TEST_AFFINE),
        "shape": save_volume(folder / "small.nii.gz", data[:-1], TEST_AFFINE),
    }
    bad["not_nifti"].write_text("this is not an image")
    return bad


@pytest.mark.parametrize("kind", ["missing", "not_nifti", "4d", "nan", "constant", "shape"])
def test_bad_input_gives_one_clear_line(files, tmp_path, kind):
    folder, a, b, ckpt = files
    bad = _bad_inputs(tmp_path, a)[kind]
    out = tmp_path / "fused.nii.gz"
    result = run_cli("fuse", a, bad, "-o", out, "--checkpoint", ckpt)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("lpmnet: error: ") and bad.name in lines[0]
    assert not out.exists() and not list(tmp_path.glob(".*tmp*"))
    metrics = run_cli("metrics", a, b, bad, "--json")
    assert metrics.returncode == 2 and bad.name in metrics.stderr and metrics.stdout == ""


def test_bad_checkpoint_and_usage(files, tmp_path):
    folder, a, b, _ = files
    junk = tmp_path / "junk.pt"
    junk.write_text("x")
    result = run_cli("fuse", a, b, "-o", tmp_path / "f.nii.gz", "--checkpoint", junk)
    assert result.returncode == 2 and "junk.pt" in result.stderr and "Traceback" not in result.stderr
    assert run_cli("fuse", a).returncode == 2  # argparse usage error


def test_allocator_setting_is_accepted_here():
    # in a process of its own: the setting is process-wide, and this test session must not inherit it
    check = ("import sys; from lpmnet.runtime import keep_freed_memory_for_reuse; "
             "sys.exit(0 if keep_freed_memory_for_reuse() is sys.platform.startswith('linux') else 1)")
    assert subprocess.run([sys.executable, "-c", check]).returncode == 0


def test_slice_wise_metrics_slice_along_the_files_slice_axis(files, tmp_path):
    # axis 0 is D of the original's (D, H, W) layout: the files' third voxel axis k, as SimpleITK reads it.
    from lpmnet.metrics import compute_all
    from lpmnet.volumes.normalize import minmax01

    folder, a, b, _ = files
    x1, x2 = (nib.load(p).get_fdata(dtype=np.float32) for p in (a, b))
    fused = save_volume(tmp_path / "max.nii.gz", np.maximum(minmax01(x1), minmax01(x2)), TEST_AFFINE)
    table = json.loads(run_cli("metrics", a, b, fused, "--convention", "standard", "--json").stdout)
    inputs = [minmax01(x1), minmax01(x2), np.maximum(minmax01(x1), minmax01(x2))]
    along_k = compute_all(*(v.transpose(2, 1, 0) for v in inputs), conventions=("standard",), axis=0)
    along_i = compute_all(*inputs, conventions=("standard",), axis=0)
    assert table["standard"]["Qabf"] == pytest.approx(along_k["standard"].values["Qabf"], rel=1e-6)
    assert abs(along_k["standard"].values["Qabf"] - along_i["standard"].values["Qabf"]) > 1e-3
