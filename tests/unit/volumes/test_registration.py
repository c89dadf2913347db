import json

import nibabel as nib
import numpy as np
import pytest

from lpmnet.volumes.demo import synthesize_subject
from lpmnet.errors import InputError
from lpmnet.volumes.io import load_volume, save_volume
from lpmnet.evaluation.figures import registration_qc_figure
from lpmnet.volumes.registration import (
    n4_bias_correct,
    register,
    transform_paths,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# ANTs' Rigid preset with shorter optimisation (same result to ~1e-3 in MI, ~2x faster)
FAST_LINEAR = {"aff_iterations": (1000, 500, 250, 0)}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A 2 mm synthetic T1 (fixed) and FLAIR moved by a known rigid transform (moving)."""
    root = tmp_path_factory.mktemp("reg")
    synth = synthesize_subject(1, seed=0, modalities=("T1", "FLAIR"), voxel_mm=2.0)
    assert synth["meta"]["FLAIR"]["rigid"] is not None
    fixed = save_volume(root / "sub-synth01_T1w.nii.gz", synth["images"]["T1"], synth["affine"])
    moving = save_volume(root / "sub-synth01_FLAIR.nii.gz", synth["images"]["FLAIR"], synth["affine"])
    return root, fixed, moving


@pytest.fixture(scope="module")
def rigid_runs(pair):
    root, fixed, moving = pair
    runs = []
    for rep in range(2):
        out = root / f"run{rep}" / "sub-synth01_space-T1w_FLAIR.nii.gz"
        prefix = root / f"run{rep}" / "sub-synth01_from-FLAIR_to-T1w"
        runs.append((register(fixed, moving, out, prefix, transform="Rigid", seed=42, threads=1,
                             **FAST_LINEAR), out, prefix))
    return runs


def test_rigid_improves_similarity_and_writes_fixed_grid(pair, rigid_runs):
    root, fixed, moving = pair
    result, out, prefix = rigid_runs[0]
    json.dumps(result, allow_nan=False)  # JSON-able
    assert result["transform"] == "Rigid" and result["seed"] == 42 and result["threads"] == 1
    assert result["mattes_mi_after"] < result["mattes_mi_before"]  # ANTs MI: lower is better
    assert result["improved"] is True
    assert abs(result["ncc_after"]) > abs(result["ncc_before"]) and result["ncc_improved"] is True

    fixed_img, reg_img = nib.load(fixed), nib.load(out)
    assert reg_img.shape == fixed_img.shape
    np.testing.assert_array_equal(reg_img.affine, fixed_img.affine)
    assert reg_img.get_data_dtype() == np.float32
    vol = load_volume(out)
    assert np.isfinite(vol.data).all()

    expected = transform_paths(prefix, "Rigid")
    assert set(expected) == {"affine"}
    assert expected["affine"].name == "sub-synth01_from-FLAIR_to-T1w_mode-image_xfm.mat"
    assert expected["affine"].is_file()
    assert result["transforms"] == {"affine": str(expected["affine"])}
    assert result["forward_transforms"] == [str(expected["affine"])]
    assert not [p for p in expected["affine"].parent.iterdir() if ".tmp-" in p.name]


def test_same_seed_single_thread_is_bitwise_reproducible(rigid_runs):
    (r0, out0, prefix0), (r1, out1, prefix1) = rigid_runs
    a = np.asanyarray(nib.load(out0).dataobj)
    b = np.asanyarray(nib.load(out1).dataobj)
    assert np.array_equal(a, b)
    assert transform_paths(prefix0, "Rigid")["affine"].read_bytes() == transform_paths(prefix1, "Rigid")["affine"].read_bytes()
    assert r0["mattes_mi_after"] == r1["mattes_mi_after"]


def test_syn_writes_warps(pair):
    root, fixed, moving = pair
    # 4 mm copies keep SyN quick
    small = {}
    for name, path in (("fixed", fixed), ("moving", moving)):
        vol = load_volume(path)
        aff = vol.affine.copy()
        aff[:3, :3] *= 2
        small[name] = save_volume(root / "syn" / f"{name}_4mm.nii.gz", vol.data[::2, ::2, ::2], aff)
    fixed = small["fixed"]
    out = root / "syn" / "reg.nii.gz"
    prefix = root / "syn" / "sub-synth01_from-FLAIR_to-T1w_"  # trailing "_" is ignored
    result = register(fixed, small["moving"], out, prefix, transform="SyN", seed=1, threads=1,
                      reg_iterations=(20, 10, 0), **FAST_LINEAR)
    paths = transform_paths(prefix, "SyN")
    assert paths["warp"].name == "sub-synth01_from-FLAIR_to-T1w_mode-image_desc-warp_xfm.nii.gz"
    assert paths["inverse_warp"].name == "sub-synth01_from-FLAIR_to-T1w_mode-image_desc-inversewarp_xfm.nii.gz"
    for p in paths.values():
        assert p.is_file()
    assert result["forward_transforms"] == [str(paths["warp"]), str(paths["affine"])]
    assert result["inverse_whichtoinvert"] == [True, False]
    assert nib.load(paths["warp"]).shape[:3] == nib.load(fixed).shape
    assert result["improved"]


def test_bad_arguments(pair, tmp_path):
    root, fixed, moving = pair
    with pytest.raises(ValueError, match="transform"):
        register(fixed, moving, tmp_path / "o.nii.gz", tmp_path / "x", transform="SyNRA")
    with pytest.raises(InputError, match="not found") as err:
        register(fixed, tmp_path / "nope.nii.gz", tmp_path / "o.nii.gz", tmp_path / "x")
    assert "nope.nii.gz" in str(err.value)
    assert not (tmp_path / "o.nii.gz").exists()


def test_n4_with_automatic_and_given_mask(pair, tmp_path):
    root, fixed, moving = pair
    vol = load_volume(fixed)
    # strong multiplicative bias along x
    x = np.linspace(-1, 1, vol.shape[0])[:, None, None]
    biased = save_volume(tmp_path / "biased.nii.gz", vol.data * np.exp(0.4 * x), vol.affine)
    info = n4_bias_correct(biased, tmp_path / "n4.nii.gz", out_mask=tmp_path / "mask.nii.gz",
                           iterations=(25, 25, 25))
    assert info["mask"] == "ants.get_mask" and info["mask_voxels"] > 10000
    out = load_volume(tmp_path / "n4.nii.gz")
    mask = load_volume(tmp_path / "mask.nii.gz").data > 0
    np.testing.assert_array_equal(out.affine, vol.affine)

    def left_right_ratio(data):
        half = vol.shape[0] // 2
        return np.median(data[:half][mask[:half]]) / np.median(data[half:][mask[half:]])

    assert abs(np.log(left_right_ratio(out.data))) < 0.5 * abs(np.log(left_right_ratio(load_volume(biased).data)))

    # negative background (z-scored input) with an explicit mask file
    z = (vol.data - vol.data.mean()) / vol.data.std()
    zpath = save_volume(tmp_path / "z.nii.gz", z, vol.affine)
    info = n4_bias_correct(zpath, tmp_path / "zn4.nii.gz", mask=tmp_path / "mask.nii.gz",
                           iterations=(20, 20))
    assert info["intensity_shift"] > 0
    assert np.isfinite(load_volume(tmp_path / "zn4.nii.gz").data).all()


def test_qc_figure_is_a_png(pair, rigid_runs, tmp_path):
    root, fixed, moving = pair
    _, out, _ = rigid_runs[0]
    png = registration_qc_figure(fixed, out, tmp_path / "qc" / "sub-synth01_FLAIR_qc.png", "FLAIR -> T1w")
    data = png.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10000
    import matplotlib.image as mpimg

    img = mpimg.imread(png)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 600
    # an image on another grid is resampled first (before-registration view)
    png2 = registration_qc_figure(fixed, moving, tmp_path / "qc" / "before.png", "before")
    assert png2.read_bytes()[:8] == PNG_MAGIC
    assert not [p for p in png.parent.iterdir() if ".tmp-" in p.name]


def test_negative_background_is_filled_outside_the_field_of_view(pair, tmp_path):
    """PET and z-scored MRI have negative backgrounds; ANTs' command line cannot take a negative fill."""
    root, fixed, moving = pair
    vol = load_volume(moving)
    shifted = save_volume(tmp_path / "moving_negative.nii.gz", vol.data - 1000.0, vol.affine)
    out = tmp_path / "registered.nii.gz"
    result = register(fixed, shifted, out, tmp_path / "xfm", transform="Rigid", **FAST_LINEAR)
    assert result["improved"]
    registered = load_volume(out).data
    border = np.concatenate([(vol.data - 1000.0)[0].ravel(), (vol.data - 1000.0)[-1].ravel()])
    assert registered.min() < -900 and np.isclose(np.median(registered[registered < -900]), np.median(border), atol=50)
