import numpy as np
import pytest

from lpmnet.volumes.normalize import (
    foreground_mask,
    minmax01,
    normalize_intensity,
    otsu_threshold,
    percentile_clip,
    percentile_window,
)


def _zscored_head(seed=0):
    """A z-scored 'scan': negative noisy background, brighter ellipsoid head, hot outliers."""
    rng = np.random.default_rng(seed)
    shape = (40, 44, 36)
    z, y, x = np.indices(shape)
    head = ((z - 20) / 15) ** 2 + ((y - 22) / 17) ** 2 + ((x - 18) / 13) ** 2 < 1
    data = np.where(head, 1.0 + 0.3 * rng.standard_normal(shape), -1.5 + 0.05 * rng.standard_normal(shape))
    data[head & (rng.random(shape) < 0.001)] = 40.0  # outliers
    return data.astype(np.float32), head


def test_minmax01_basic_and_constant():
    x = np.array([[[-3.0, -1.0], [1.0, 5.0]]])
    y = minmax01(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.ravel(), [0.0, 0.25, 0.5, 1.0])
    z = minmax01(np.full((2, 2, 2), 7.0))
    assert np.all(z == 0) and np.all(np.isfinite(z))
    masked = minmax01(x, mask=np.array([[[False, True], [True, False]]]))
    np.testing.assert_allclose(masked.ravel(), [0.0, 0.0, 1.0, 1.0])


def test_normalize_range_and_percentiles():
    data, head = _zscored_head()
    out, (lo, hi) = normalize_intensity(data, return_window=True)
    assert out.dtype == np.float32 and out.shape == data.shape
    assert out.min() == 0.0 and out.max() == 1.0
    assert (lo, hi) == percentile_window(data, 0.5, 99.5)
    # outliers at 40 are clipped: the 99.5th percentile is well below them
    assert hi < 40.0
    assert np.isclose(lo, np.percentile(data, 0.5))


def test_negative_background_with_foreground_mask():
    data, head = _zscored_head()
    for mask in ("otsu", head):
        out, (lo, hi) = normalize_intensity(data, 1.0, 99.0, mask=mask, return_window=True)
        assert lo > 0  # window from the head, not the negative background
        assert np.all(out[~head] == 0.0)  # background below the window -> 0
        inside = out[head]
        assert np.median(inside) > 0.2 and inside.max() == 1.0
    fg = foreground_mask(data)
    assert (fg == head).mean() > 0.99
    assert -1.5 < otsu_threshold(data) < 1.0


def test_percentile_clip_and_shift_invariance():
    data, _ = _zscored_head(1)
    clipped = percentile_clip(data, 2, 98)
    lo, hi = percentile_window(data, 2, 98)
    assert clipped.min() >= lo - 1e-6 and clipped.max() <= hi + 1e-6
    a = normalize_intensity(data)
    b = normalize_intensity(data * 3.0 - 1000.0)  # affine intensity change (e.g. CT offset)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_invalid_arguments():
    data = np.random.default_rng(0).random((4, 4, 4))
    with pytest.raises(ValueError):
        normalize_intensity(data, 60, 40)
    with pytest.raises(ValueError):
        normalize_intensity(data, mask=np.zeros((4, 4, 4), bool))
    with pytest.raises(ValueError):
        normalize_intensity(data, mask=np.ones((2, 2, 2), bool))
    with pytest.raises(ValueError):
        normalize_intensity(data, mask="kmeans")
    bad = data.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        minmax01(bad)


def test_unit_range_owns_the_convention_and_leaves_normalised_volumes_alone():
    from lpmnet.volumes.normalize import unit_range

    raw = _zscored_head()
    np.testing.assert_array_equal(unit_range(raw), minmax01(raw))
    normalised = normalize_intensity(raw)
    assert normalised.min() == 0 and normalised.max() == 1
    # min-max of a volume spanning [0, 1] is the identity: the two ways agree to the byte
    assert unit_range(normalised).tobytes() == unit_range(normalised, normalize=False).tobytes()
    assert unit_range(normalised, normalize=False).dtype == np.float32
    with pytest.raises(ValueError, match="normalise it first"):
        unit_range(raw, normalize=False)


def test_normalize_in_head_windows_inside_the_filled_head_and_zeroes_the_rest():
    from lpmnet.volumes.normalize import head_mask, normalize_in_head

    grid = np.indices((40, 40, 40)) - 19.5
    head = np.sum(grid ** 2, axis=0) < 15 ** 2
    ventricle = np.sum(grid ** 2, axis=0) < 4 ** 2  # dark inside the head: a hole the mask fills
    noise = np.random.default_rng(0).uniform(0, 5, head.shape)
    x1 = np.where(head & ~ventricle, 100.0 + grid[0], noise)
    x2 = np.where(head, 300.0 - 2 * grid[1], 40 + noise)  # a raised background, as a raw PET has
    mask = head_mask(x1)
    assert mask[ventricle].all() and abs(int(mask.sum()) - int(head.sum())) < 0.02 * head.sum()
    a, b = normalize_in_head(x1, x2)
    for x in (a, b):
        assert x.dtype == np.float32 and np.all(x[~mask] == 0) and x[mask].max() == 1 and x[mask].mean() > 0.3
    with pytest.raises(ValueError, match="no head to normalise inside"):
        normalize_in_head(np.ones((8, 8, 8)), np.ones((8, 8, 8)))


def test_head_mask_keeps_and_fills_a_head_cut_by_the_field_of_view():
    from lpmnet.volumes.normalize import head_mask

    # A cropped template or a few thick slices: the head runs through the volume's first and last slices.
    grid = np.indices((12, 40, 40)) - np.array([5.5, 19.5, 19.5])[:, None, None, None]
    radius = np.sqrt(np.sum(grid[1:] ** 2, axis=0))
    head = radius < 15
    noise = np.random.default_rng(1).uniform(0, 5, head.shape)
    ventricle = (radius < 4) & (np.abs(grid[0]) < 3)  # a hole inside the volume
    x = np.where(head & ~ventricle, 100.0 + grid[1], noise)
    assert np.array_equal(head_mask(x), head)
    # A bright scalp around a brain darker than Otsu's threshold, through every slice: in 3D the brain reaches
    # the faces, in every slice it is enclosed.
    scalp = np.where(radius > 12, 200.0, 40.0 + grid[2])
    x = np.where(head, scalp, noise)
    assert np.array_equal(head_mask(x), head)
    # In 2D as well.
    assert np.array_equal(head_mask(x[0]), head[0])
