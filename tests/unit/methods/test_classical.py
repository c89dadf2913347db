import json

import nibabel as nib
import numpy as np
import pytest

from helpers import TEST_AFFINE, smooth_pair, write_pair
from lpmnet.methods.classical import (CLASSICAL_METHODS, collapse_pyramid, fuse_classical, fuse_classical_files,
                              laplacian_pyramid, pca_weights)
from lpmnet.errors import InputError
from lpmnet.volumes.io import save_volume


def test_mean_and_max_are_exact():
    x1 = np.array([[[0.0, 0.2], [1.0, 0.5]]], dtype=np.float32)
    x2 = np.array([[[1.0, 0.4], [0.0, 0.5]]], dtype=np.float32)
    np.testing.assert_array_equal(fuse_classical("mean", x1, x2),
                                  np.array([[[0.5, 0.3], [0.5, 0.5]]], dtype=np.float32))
    np.testing.assert_array_equal(fuse_classical("max", x1, x2),
                                  np.array([[[1.0, 0.4], [1.0, 0.5]]], dtype=np.float32))
    assert fuse_classical("mean", x1, x2).dtype == np.float32


def test_pca_weights_known_answers():
    rng = np.random.default_rng(0)
    x = rng.random((6, 7, 8)).astype(np.float32)
    w1, w2 = pca_weights(x, np.full_like(x, 0.3))  # constant source: all weight on the other
    assert w1 == pytest.approx(1.0) and w2 == pytest.approx(0.0, abs=1e-12)
    # x2 = x / 2 + c: covariance [[v, v/2], [v/2, v/4]], principal eigenvector ~ (2, 1)
    w1, w2 = pca_weights(x, x / 2 + 0.1)
    assert (w1, w2) == pytest.approx((2 / 3, 1 / 3), abs=1e-6)
    # anti-correlated contrasts still get weights in [0, 1]
    w1, w2 = pca_weights(x, 1 - x)
    assert (w1, w2) == pytest.approx((0.5, 0.5), abs=1e-6)
    fused = fuse_classical("pca", x, np.full_like(x, 0.3))
    np.testing.assert_allclose(fused, x, atol=1e-6)
    assert pca_weights(np.ones((2, 2, 2)), np.zeros((2, 2, 2))) == (0.5, 0.5)


@pytest.mark.parametrize("shape", [(17, 20, 13), (9, 1, 5), (2, 3, 4)])
def test_laplacian_identity_and_shapes(shape):
    rng = np.random.default_rng(1)
    x = rng.random(shape).astype(np.float32)
    np.testing.assert_allclose(fuse_classical("laplacian", x, x), x, atol=1e-6)
    np.testing.assert_allclose(collapse_pyramid(laplacian_pyramid(x)), x, atol=1e-6)
    y = rng.random(shape).astype(np.float32)
    for method in CLASSICAL_METHODS:
        out = fuse_classical(method, x, y)
        assert out.shape == shape and out.dtype == np.float32 and np.isfinite(out).all()
        assert out.min() >= 0 and out.max() <= 1


def test_laplacian_pyramid_sizes_and_detail_selection():
    pyr = laplacian_pyramid(np.zeros((17, 20, 13), np.float32))
    assert [p.shape for p in pyr] == [(17, 20, 13), (9, 10, 7), (5, 5, 4)]
    # an edge present in only one source survives the fusion, unlike in the mean
    a = np.zeros((16, 16, 16), np.float32)
    a[:, :, 8:] = 1.0
    b = np.full_like(a, 0.5)
    fused = fuse_classical("laplacian", a, b)
    contrast = fused[:, :, 8:].mean() - fused[:, :, :8].mean()
    assert contrast > 0.6  # the mean would give 0.5


def test_bad_arguments():
    x = np.zeros((3, 3, 3))
    with pytest.raises(ValueError, match="unknown classical"):
        fuse_classical("median", x, x)
    with pytest.raises(ValueError, match="one shape"):
        fuse_classical("mean", x, np.zeros((3, 3, 4)))
    with pytest.raises(ValueError, match="NaN"):
        fuse_classical("mean", x, np.full((3, 3, 3), np.nan))


def test_files_keep_the_affine_and_write_a_sidecar(tmp_path):
    a, b = write_pair(tmp_path, shape=(15, 18, 11))
    out = tmp_path / "fused" / "sub-01_desc-pca_fused.nii.gz"
    sidecar = fuse_classical_files("pca", a, b, out)
    img, src = nib.load(out), nib.load(a)
    assert np.array_equal(img.affine, src.affine)
    np.testing.assert_allclose(img.affine, TEST_AFFINE, atol=1e-5)
    assert img.shape == (15, 18, 11) and img.get_data_dtype() == np.float32
    data = img.get_fdata()
    assert 0 <= data.min() and data.max() <= 1
    on_disk = json.loads((tmp_path / "fused" / "sub-01_desc-pca_fused.json").read_text())
    assert on_disk == json.loads(json.dumps(sidecar))
    assert on_disk["Method"] == "pca" and sum(on_disk["Parameters"]["weights"]) == pytest.approx(1)
    assert [s["path"] for s in on_disk["SourceFiles"]] == [str(a), str(b)]
    assert "min-max" in on_disk["Normalization"]
    assert sorted(p.name for p in (tmp_path / "fused").iterdir()) == [
        "sub-01_desc-pca_fused.json", "sub-01_desc-pca_fused.nii.gz"]


def test_files_equal_the_array_version(tmp_path):
    a, b = write_pair(tmp_path, shape=(12, 10, 9))
    x1, x2 = smooth_pair((12, 10, 9))
    out = fuse_classical_files("laplacian", a, b, tmp_path / "f.nii.gz")
    from lpmnet.volumes.normalize import minmax01
    expected = fuse_classical("laplacian", minmax01(x1), minmax01(x2))
    np.testing.assert_allclose(nib.load(tmp_path / "f.nii.gz").get_fdata(), expected, atol=1e-6)
    assert out["Parameters"]["levels"] == 3


def test_files_on_different_grids_are_refused(tmp_path):
    a, _ = write_pair(tmp_path, shape=(12, 10, 9))
    shifted = TEST_AFFINE.copy()
    shifted[0, 3] += 2.0
    other = save_volume(tmp_path / "other_FLAIR.nii.gz", smooth_pair((12, 10, 9))[1], shifted)
    out = tmp_path / "f.nii.gz"
    with pytest.raises(InputError, match="other_FLAIR"):
        fuse_classical_files("mean", a, other, out)
    assert not out.exists()
    with pytest.raises(ValueError, match="unknown classical"):
        fuse_classical_files("median", a, a, out)


def test_files_normalised_before_are_used_as_given(tmp_path):
    from lpmnet.volumes.io import load_volume
    from lpmnet.volumes.normalize import minmax01

    a, b = write_pair(tmp_path, shape=(12, 10, 9))
    normed = []
    for path, name in ((a, "a_norm.nii.gz"), (b, "b_norm.nii.gz")):
        volume = load_volume(path)
        save_volume(tmp_path / name, minmax01(volume.data), volume.affine, header=volume.header)
        normed.append(tmp_path / name)
    raw = fuse_classical_files("laplacian", a, b, tmp_path / "raw.nii.gz")
    given = fuse_classical_files("laplacian", *normed, tmp_path / "given.nii.gz", normalize=False)
    assert "min-max" in raw["Normalization"] and "used as given" in given["Normalization"]
    assert np.asarray(nib.load(tmp_path / "raw.nii.gz").dataobj).tobytes() == \
        np.asarray(nib.load(tmp_path / "given.nii.gz").dataobj).tobytes()
    with pytest.raises(ValueError, match="normalise it first"):
        fuse_classical_files("mean", a, b, tmp_path / "bad.nii.gz", normalize=False)
