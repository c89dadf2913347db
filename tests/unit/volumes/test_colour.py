"""Colour fusion of a functional volume: colour map, YCbCr and back, the RGB24 NIfTI, and the round trip on a
real MRI + PET pair."""

import json

import nibabel as nib
import numpy as np
import pytest

from lpmnet.errors import InputError
from lpmnet.volumes.colour import (DESATURATION_TOLERANCE, colour_fused, colour_luminance, colour_map, desaturated,
                                   fused_luminance_y, luminance_range, rgb_path, rgb_to_ycbcr, ycbcr_to_rgb)
from lpmnet.volumes.io import load_rgb_volume, load_volume, save_rgb_volume, save_volume
from lpmnet.volumes.normalize import unit_range

#: Largest change of Y, Cb or Cr from rounding R, G and B to bytes (their weights sum to at most 1 in magnitude).
ROUNDING = 0.5 / 255


def test_ycbcr_is_full_range_bt601_with_its_exact_inverse():
    primaries = np.eye(3)
    y, cb, cr = rgb_to_ycbcr(primaries)
    np.testing.assert_allclose(y, [0.299, 0.587, 0.114])
    assert cb[2] == pytest.approx(1.0) and cr[0] == pytest.approx(1.0)  # pure blue, pure red: the extremes
    grey = rgb_to_ycbcr(np.full((4, 3), 0.3))
    np.testing.assert_allclose(grey[1:], 0.5)  # no chrominance in grey
    rgb = np.random.default_rng(0).random((6, 7, 8, 3))
    np.testing.assert_allclose(ycbcr_to_rgb(*rgb_to_ycbcr(rgb)), rgb, atol=1e-12)


def test_the_colour_map_is_matplotlibs():
    rgb = colour_map(np.array([0.0, 0.5, 1.0]), "hot")
    assert rgb.shape == (3, 3) and rgb.dtype == np.float32
    np.testing.assert_allclose(rgb[-1], [1, 1, 1])  # hot ends in white
    assert rgb[0, 0] > 0 and rgb[0, 1] == rgb[0, 2] == 0  # and starts in dark red
    np.testing.assert_allclose(colour_map(np.array([-3.0, 7.0])), colour_map(np.array([0.0, 1.0])))  # clipped
    with pytest.raises(ValueError, match="unknown colour map 'pet-please'"):
        colour_map(np.zeros(3), "pet-please")


def test_the_luminance_a_method_fuses_spans_zero_to_one():
    lo, hi = luminance_range("hot")
    assert lo == pytest.approx(0.299 * colour_map(np.zeros(1))[0, 0], rel=1e-6) and hi == pytest.approx(1.0)
    y, _, _ = colour_luminance(np.array([0.0, 0.3, 1.0]))
    assert y[0] == 0 and y[-1] == pytest.approx(1.0) and 0 < y[1] < 1  # a zero stays 0, as normalised volumes
    np.testing.assert_allclose(fused_luminance_y(y), rgb_to_ycbcr(colour_map(np.array([0.0, 0.3, 1.0])))[0],
                               atol=1e-6)


def test_the_fused_luminance_is_kept_exactly_and_colours_stay_in_the_cube():
    rng = np.random.default_rng(1)
    pet, fused = rng.random((12, 13, 14)), rng.random((12, 13, 14))
    y, cb, cr = colour_luminance(pet)
    rgb = colour_fused(fused, cb, cr)
    assert rgb.min() >= 0 and rgb.max() <= 1
    np.testing.assert_allclose(rgb_to_ycbcr(rgb)[0], fused_luminance_y(fused), atol=1e-6)  # never clipped
    # where the fused luminance is the functional one, the colour fusion is the colour-mapped volume
    np.testing.assert_allclose(colour_fused(y, cb, cr), colour_map(pet), atol=1e-6)
    assert not desaturated(y, cb, cr).any()  # the map's own colours fit, its darkest red included
    assert not desaturated(np.zeros_like(y), *colour_luminance(np.zeros_like(pet))[1:]).any()
    # a saturated hue only loses saturation: the hue angle in the CbCr plane is kept
    out = rgb_to_ycbcr(rgb)
    kept = np.hypot(out[1] - 0.5, out[2] - 0.5) > 1e-3
    angle_in = np.arctan2(cr - 0.5, cb - 0.5)[kept]
    angle_out = np.arctan2(out[2] - 0.5, out[1] - 0.5)[kept]
    np.testing.assert_allclose(np.angle(np.exp(1j * (angle_out - angle_in))), 0, atol=1e-4)


def test_an_rgb24_nifti_round_trip(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 256, (5, 6, 7, 3)).astype(np.uint8)
    affine = np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])
    path = save_rgb_volume(tmp_path / "c.nii.gz", rgb, affine)
    image = nib.load(path)
    assert image.header["datatype"] == 128 and image.header.get_intent()[0] == "rgb vector"
    assert image.header.get_sform(coded=True)[1] == 1 and image.shape == (5, 6, 7)
    data, read_affine = load_rgb_volume(path)
    assert np.array_equal(data, rgb) and np.allclose(read_affine, affine)
    with pytest.raises(ValueError, match=r"expected colour data of shape \(X, Y, Z, 3\) and dtype uint8"):
        save_rgb_volume(tmp_path / "bad.nii.gz", rgb.astype(np.float32), affine)
    save_volume(tmp_path / "grey.nii.gz", np.ones((3, 3, 3)), affine)
    with pytest.raises(InputError, match="grey.nii.gz: not an RGB24 colour volume"):
        load_rgb_volume(tmp_path / "grey.nii.gz")


@pytest.mark.parametrize("method", ["laplacian", "lpmnet"])
def test_colour_fusion_of_a_real_mri_pet_pair_round_trips(tmp_path, shared_data, method):
    """``lpmnet fuse --colour``: the RGB output's luminance is the fused volume within rounding, its
    chrominance the colour-mapped PET's wherever it fits in the RGB cube."""
    from lpmnet.cli import main

    t1 = shared_data / "spm_mni152_avg" / "avg152T1.nii"
    pet = shared_data / "spm_mni152_avg" / "PET_template.nii"
    out = tmp_path / f"{method}.nii.gz"
    args = ["fuse", str(t1), str(pet), "-o", str(out), "--method", method, "--colour"]
    assert main(args + (["--pretrained", "mri-pet"] if method == "lpmnet" else [])) == 0
    fused = load_volume(out)
    rgb, affine = load_rgb_volume(rgb_path(out))
    assert rgb_path(out).name == f"{method}_rgb.nii.gz"
    np.testing.assert_allclose(affine, nib.load(t1).affine)  # on the fixed grid
    y, cb, cr = rgb_to_ycbcr(rgb / 255.0)
    np.testing.assert_allclose(y, fused_luminance_y(fused.data), atol=ROUNDING + 1e-6)
    _, pet_cb, pet_cr = colour_luminance(unit_range(load_volume(pet).data, True))
    kept = ~desaturated(fused.data, pet_cb, pet_cr)  # the voxels whose colour fits in the RGB cube
    assert kept.mean() > 0.2
    np.testing.assert_allclose(cb[kept], pet_cb[kept], atol=ROUNDING + DESATURATION_TOLERANCE)
    np.testing.assert_allclose(cr[kept], pet_cr[kept], atol=ROUNDING + DESATURATION_TOLERANCE)
    sidecar = json.loads(out.with_suffix("").with_suffix(".json").read_text())
    assert sidecar["Colour"]["ColourMap"] == "hot" and sidecar["Colour"]["RGB"] == str(rgb_path(out))
    assert sidecar["Colour"]["DesaturatedFraction"] == pytest.approx(1 - kept.mean(), abs=1e-5)
