from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from skimage.transform import resize

from helpers import TEST_AFFINE
from lpmnet.volumes.io import Volume, dhw, load_volume, save_volume
from lpmnet.volumes.resample import resize_volume, resized_affine, shape_label


def world_ramp(shape, affine):
    """A volume whose value is a linear function of each voxel's world position (and that function)."""
    coeffs = np.array([0.011, -0.007, 0.013])
    ijk = np.indices(shape).reshape(3, -1)
    world = affine[:3, :3] @ ijk + affine[:3, 3:4]
    return (0.5 + coeffs @ world).reshape(shape).astype(np.float32), lambda xyz: 0.5 + coeffs @ xyz


def world_of(volume):
    ijk = np.indices(volume.shape).reshape(3, -1)
    return (volume.affine[:3, :3] @ ijk + volume.affine[:3, 3:4]).reshape(3, *volume.shape)


@pytest.mark.parametrize("dhw_shape", [(16, 24, 20), (48, 44, 60)], ids=["shrink", "grow"])
def test_every_resized_voxel_holds_the_value_at_its_world_position(dhw_shape):
    shape = (40, 36, 30)
    data, truth = world_ramp(shape, TEST_AFFINE)
    out = resize_volume(Volume(data, TEST_AFFINE, nib.Nifti1Header(), Path("ramp.nii.gz")), dhw_shape)
    assert out.shape == tuple(dhw_shape[::-1]) and out.data.dtype == np.float32
    # Linear interpolation and the symmetric anti-aliasing keep a ramp exact away from the borders,
    # where skimage reflects; any error in the affine shifts every value.
    expected = truth(world_of(out).reshape(3, -1)).reshape(out.shape)
    inner = tuple(slice(4, n - 4) for n in out.shape)
    np.testing.assert_allclose(out.data[inner], expected[inner], atol=2e-5)


def test_d_h_w_are_the_files_k_j_i_axes_as_in_the_original():
    rng = np.random.default_rng(0)
    data = ndimage.gaussian_filter(rng.random((30, 26, 22)), 1.5).astype(np.float32)
    out = resize_volume(Volume(data, TEST_AFFINE, nib.Nifti1Header(), Path("x.nii.gz")), (16, 20, 24))
    # The original: SimpleITK array (k, j, i), skimage resize with its defaults.
    original = resize(dhw(data), (16, 20, 24))
    np.testing.assert_allclose(dhw(out.data), original, atol=1e-6)


def test_field_of_view_is_kept():
    affine = resized_affine(TEST_AFFINE, (40, 36, 30), (20, 12, 15))
    old_corner = TEST_AFFINE @ np.array([-0.5, -0.5, -0.5, 1])
    new_corner = affine @ np.array([-0.5, -0.5, -0.5, 1])
    np.testing.assert_allclose(new_corner, old_corner, atol=1e-9)
    old_far = TEST_AFFINE @ np.array([39.5, 35.5, 29.5, 1])
    np.testing.assert_allclose(affine @ np.array([19.5, 11.5, 14.5, 1]), old_far, atol=1e-9)


def test_same_shape_is_unchanged_and_bad_shapes_are_refused():
    vol = Volume(np.ones((8, 6, 4), np.float32), TEST_AFFINE, nib.Nifti1Header(), Path("x.nii.gz"))
    assert resize_volume(vol, (4, 6, 8)) is vol
    for bad in [(4, 6), (0, 6, 8), (4, 6, 8, 1)]:
        with pytest.raises(ValueError, match="target shape"):
            resize_volume(vol, bad)
    assert shape_label((128, 192, 192)) == "128x192x192"


def test_real_anisotropic_scan_resized_like_the_paper_still_overlays(shared_data, tmp_path):
    # A native 0.9 x 0.9 x 5.5 mm clinical T1 brought to BraTS's paper shape: the head stays in place.
    t1 = load_volume(shared_data / "tcga_FG-6692_native" / "t1.nii.gz")
    out = resize_volume(t1, (128, 192, 192))
    path = save_volume(tmp_path / "t1_res.nii.gz", out.data, out.affine, header=out.header)
    written = load_volume(path)
    assert written.shape == (192, 192, 128)
    np.testing.assert_allclose(written.affine, out.affine, atol=1e-4)

    def centre_of_mass_mm(v):
        ijk = np.array(ndimage.center_of_mass(np.clip(v.data, 0, None)))
        return v.affine[:3, :3] @ ijk + v.affine[:3, 3]

    native_mm = np.array(t1.zooms)
    assert np.linalg.norm(centre_of_mass_mm(written) - centre_of_mass_mm(t1)) < 0.25 * native_mm.min()
    new_mm = native_mm * np.array(t1.shape) / np.array(written.shape)
    np.testing.assert_allclose(written.zooms, new_mm, rtol=1e-4)
    np.testing.assert_allclose(nib.load(path).header.get_zooms()[:3], new_mm, rtol=1e-4)  # what viewers show
