import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from helpers import TEST_AFFINE, smooth_pair, write_pair
from lpmnet.methods.classical import fuse_classical_files
from lpmnet.errors import InputError
from lpmnet.evaluation.curves import training_curves
from lpmnet.evaluation.figures import fusion_montage, orthogonal_slices
from lpmnet.volumes.io import save_volume


def test_montage_png(tmp_path):
    a, b = write_pair(tmp_path, shape=(20, 24, 16))
    fused = {}
    for method in ("mean", "max"):
        fused[method] = tmp_path / f"{method}.nii.gz"
        fuse_classical_files(method, a, b, fused[method])
    out = fusion_montage({"T1": a, "FLAIR": b}, fused, tmp_path / "fig" / "montage.png", "sub-01")
    assert out == tmp_path / "fig" / "montage.png"
    img = imread(out)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert 1000 <= img.shape[1] <= 1200 and img.shape[0] > 4 * 100  # 11 in wide at 100 dpi, 4 rows
    assert img[..., :3].std() > 0.05
    assert [p.name for p in out.parent.iterdir()] == ["montage.png"]


def test_montage_row_labels_are_never_cut(tmp_path):
    a, b = write_pair(tmp_path, shape=(20, 24, 16))
    fused = tmp_path / "mean.nii.gz"
    fuse_classical_files("mean", a, b, fused)
    names = {"lpmnet-pretrained": fused, "lpmnet-pretrained-finetuned-on-ixi": fused}
    img = imread(fusion_montage({"T1": a, "FLAIR": b}, names, tmp_path / "montage.png", "sub-01"))
    assert img[:, :4, :3].min() > 0.9  # the left edge is white: no label runs off it


def test_a_colour_pair_montage_shows_the_functional_source_and_the_fusions_in_colour(tmp_path):
    from lpmnet.volumes.colour import rgb_path

    a, b = write_pair(tmp_path, shape=(20, 24, 16))
    grey = tmp_path / "grey.png"
    fusion_montage({"T1": a, "PET": b}, {"mean": b}, grey, "x")
    fused = tmp_path / "mean.nii.gz"
    fuse_classical_files("mean", a, b, fused, colour="hot")
    out = fusion_montage({"T1": a, "PET": b}, {"mean": fused}, tmp_path / "colour.png", "x", colour_map="hot",
                         functional="PET", rgb={"mean": rgb_path(fused)})

    def colourfulness(png):
        pixels = imread(png)[..., :3]
        return float(np.abs(pixels[..., 0] - pixels[..., 2]).mean())

    assert colourfulness(grey) < 0.01 < colourfulness(out)  # the grey montage has no colour, this one has
    with pytest.raises(InputError, match="not an RGB24 colour volume"):  # a grey file given as a colour fusion
        fusion_montage({"T1": a, "PET": b}, {"mean": fused}, tmp_path / "bad.png", "x", colour_map="hot",
                       functional="PET", rgb={"mean": fused})


def test_montage_refuses_different_grids(tmp_path):
    a, b = write_pair(tmp_path, shape=(20, 24, 16))
    other = save_volume(tmp_path / "other.nii.gz", smooth_pair((20, 24, 18))[0], TEST_AFFINE)
    with pytest.raises(InputError, match="other.nii.gz"):
        fusion_montage({"T1": a, "FLAIR": b}, {"mean": other}, tmp_path / "m.png", "x")
    assert not (tmp_path / "m.png").exists()


def test_slices_follow_world_orientation():
    """The same image stored in RAS or in LPS voxel order gives the same displayed slices."""
    rng = np.random.default_rng(0)
    data = rng.random((6, 7, 5)).astype(np.float32)
    ras = np.diag([2.0, 2.0, 2.0, 1.0])
    lps_affine = ras @ np.array([[-1, 0, 0, 5], [0, -1, 0, 6], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    lps_data = data[::-1, ::-1, :]
    s1, s2 = orthogonal_slices(data, ras), orthogonal_slices(lps_data, lps_affine)
    for view in ("axial", "coronal", "sagittal"):
        np.testing.assert_array_equal(s1[view], s2[view])
    # axial: rows run posterior -> anterior (origin="lower" puts anterior up), columns left -> right
    np.testing.assert_array_equal(s1["axial"], data[:, :, 2].T)


def _log(n, with_val=True):
    it = np.arange(1, n + 1)
    df = pd.DataFrame({
        "iteration": it, "epoch": (it - 1) // 10, "lr": 1e-4 * np.linspace(1, 0.1, n),
        "total": np.exp(-it / 50), "mse": 0.01 * np.exp(-it / 50), "ssim": 0.5 * np.exp(-it / 40),
        "base": 0.0, "detail": 0.3 * np.exp(-it / 60), "sf": -0.02 * np.ones(n), "rec": 0.0,
        "lambda": np.exp(0.002 * ((it - 1) % 10 - 10)), "seconds": 0.1,
    })
    if with_val:
        for m in ("SSIM", "PSNR"):
            df[f"val_{m}"] = np.where(it % 20 == 0, it / n, np.nan)
    return df


@pytest.mark.parametrize("with_val", [True, False])
def test_training_curves_png(tmp_path, with_val):
    csv = tmp_path / "training_log.csv"
    _log(120, with_val).to_csv(csv, index=False, na_rep="")
    out = training_curves(csv, tmp_path / "curves.png", "training")
    img = imread(out)
    assert img.ndim == 3 and 1000 <= img.shape[1] <= 1200 and img.shape[0] > 300


def test_training_curves_bad_log(tmp_path):
    csv = tmp_path / "log.csv"
    csv.write_text("iteration,epoch\n1,0\n")
    with pytest.raises(InputError, match="total"):
        training_curves(csv, tmp_path / "c.png", "x")
    csv.write_text("iteration,total\n")
    with pytest.raises(InputError, match="no rows"):
        training_curves(csv, tmp_path / "c.png", "x")
    with pytest.raises(InputError, match="not found"):
        training_curves(tmp_path / "missing.csv", tmp_path / "c.png", "x")
    assert not (tmp_path / "c.png").exists()


def test_module_does_not_import_pyplot():
    import subprocess
    import sys

    code = "import sys, lpmnet.evaluation.figures; print('matplotlib.pyplot' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_montage_caption_gives_the_grid_as_stored(tmp_path):
    """A sagittal 256x256x35 series is displayed permuted; its caption still reads 256x256x35."""
    from lpmnet.evaluation.figures import grid_caption
    from lpmnet.volumes.io import load_volume, save_volume

    sagittal = np.array([[0, 0, 4.8, 0], [1.016, 0, 0, 0], [0, 1.016, 0, 0], [0, 0, 0, 1]], dtype=float)
    path = save_volume(tmp_path / "sag.nii.gz", np.random.default_rng(0).random((256, 256, 35)), sagittal)
    assert grid_caption(load_volume(path)) == "grid 256\u00d7256\u00d735 (i\u00d7j\u00d7k as stored), voxel 1.02\u00d71.02\u00d74.8 mm"
