"""Fusion metrics: the public API, identities both conventions must satisfy, the ``lpmnet``
convention against slow, straightforward re-statements of docs/metrics.md (full 3D kernels, dense
Parzen windows, per-slice loops), the differentiable loss terms, and a real multimodal volume.

The ``standard`` convention's references are in test_metrics_standard.py.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage, signal

from vif_reference import vif_sums

from lpmnet.metrics import CONVENTIONS, METRIC_NAMES, MetricSet, compute_all, compute_metrics
from lpmnet.metrics._filters import correlate1d, gaussian_blur, gaussian_taps
from lpmnet.metrics.lpmnet_convention import spatial_frequency_3d, ssim3d

RTOL = 1e-6


def _volumes(shape=(16, 24, 24), seed=0, smooth=1.0):
    """A, B in [0, 1] with image-like structure, F a blend of them."""
    rng = np.random.default_rng(seed)
    a, b = (ndimage.gaussian_filter(rng.random(shape), smooth) for _ in range(2))
    a, b = ((x - x.min()) / (x.max() - x.min()) for x in (a, b))
    return a, b, 0.6 * a + 0.4 * b


def _norm255(x):
    return (x - x.min()) / (x.max() - x.min()) * 255


def _gauss1d(size, sigma):
    x = np.arange(size) - size // 2
    g = np.exp(-(x * x) / (2 * sigma * sigma))
    return g / g.sum()


def _gauss3d(size, sigma):
    g = _gauss1d(size, sigma)
    return g[:, None, None] * g[None, :, None] * g[None, None, :]


# ---------------------------------------------------------------------------------------------
# Slow references of the lpmnet convention (docs/metrics.md, "Convention lpmnet").


def ref_ssim3d(x, y):
    """Non-separable 11^3 kernel through conv3d with zero padding, as the reference computes it."""
    window = torch.from_numpy(_gauss3d(11, 1.5))[None, None]
    x, y = (torch.from_numpy(v)[None, None] for v in (x, y))

    def conv(t):
        return F.conv3d(t, window, padding=5)

    mu1, mu2 = conv(x), conv(y)
    s11, s22, s12 = conv(x * x) - mu1 ** 2, conv(y * y) - mu2 ** 2, conv(x * y) - mu1 * mu2
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    ssim_map = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1 ** 2 + mu2 ** 2 + c1) * (s11 + s22 + c2))
    return float(ssim_map.mean())


def _lpmnet_edges(img):
    """Per-slice gradients of the reference Qabf/Nabf: x = [[1,2,1],[0,0,0],[-1,-2,-1]], +1e-10 on x."""
    hx = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], float)
    hy = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], float)
    sx = signal.correlate2d(img, hx, mode="same") + 1e-10
    sy = signal.correlate2d(img, hy, mode="same")
    g = np.sqrt(sx ** 2 + sy ** 2) + 1e-30
    with np.errstate(divide="ignore", invalid="ignore"):
        angle = np.where(sx == 1e-10, np.pi / 2, np.arctan(sy / sx))
    return g, angle


def _lpmnet_q(g_src, a_src, g_f, a_f, tg, kg, dg, ta, ka, da):
    with np.errstate(divide="ignore", invalid="ignore"):
        G = np.where(g_f > g_src, g_src / g_f, np.where(g_f < g_src, g_f / g_src, g_f))
    A = 1 - np.abs(a_src - a_f) / (np.pi / 2)
    return tg / (1 + np.exp(kg * (G - dg))) * ta / (1 + np.exp(ka * (A - da)))


def ref_qabf_nabf_lpmnet(a, b, f):
    qabf, nabf = [], []
    for d in range(a.shape[0]):
        (ga, aa), (gb, ab), (gf, af) = (_lpmnet_edges(x[d]) for x in (a, b, f))
        qa = _lpmnet_q(ga, aa, gf, af, 0.9994, -15, 0.5, 0.9879, -22, 0.8)
        qb = _lpmnet_q(gb, ab, gf, af, 0.9994, -15, 0.5, 0.9879, -22, 0.8)
        qabf.append((qa * ga + qb * gb).sum() / (ga + gb).sum())
        na_a = _lpmnet_q(ga, aa, gf, af, 0.9999, -19, 0.5, 0.9995, -22, 0.5)
        na_b = _lpmnet_q(gb, ab, gf, af, 0.9999, -19, 0.5, 0.9995, -22, 0.5)
        wa = np.where(ga >= 2, ga ** 1.5, 0.001)
        wb = np.where(gb >= 2, gb ** 1.5, 0.001)
        na = (gf > ga) & (gf > gb)
        nabf.append((na * ((1 - na_a) * wa + (1 - na_b) * wb)).sum() / (wa + wb).sum())
    return float(np.mean(qabf)), float(np.mean(nabf))


def ref_mi_lpmnet(a, b, f):
    """Dense Parzen estimate at all 128 centres, as the reference code evaluates it; its 1e-10 inside
    logs and normalisations are left out as they vanish in its float32 arithmetic (see the module)."""
    centres = np.linspace(0, 255, 128)
    na, nb, nf = (_norm255(x) for x in (a, b, f))

    def kernel(img):
        return np.exp(-0.5 * ((img.reshape(-1, 1) - centres[None]) / 0.1) ** 2)

    def entropy(p):
        p = p[p > 0]
        return -(p * np.log(p)).sum()

    def nmi(k1, k2):
        joint = k1.T @ k2
        h1, h2 = entropy(k1.mean(0) / k1.mean(0).sum()), entropy(k2.mean(0) / k2.mean(0).sum())
        mi = h1 + h2 - entropy(joint / joint.sum())
        return (2 * mi + 1e-10) / (h1 + h2 + 1e-10)

    values = []
    for d in range(a.shape[0]):
        ka, kb, kf = kernel(na[d]), kernel(nb[d]), kernel(nf[d])
        values.append((nmi(ka, kf) + nmi(kb, kf)) / 2)
    return float(np.mean(values))


def ref_vif_lpmnet(a, b, f):
    """3D pixel VIF with full cubic kernels (scipy 'valid' correlation), reference guards."""

    def vif(ref, dist):
        num, den = vif_sums(ref, dist, lambda n: _gauss3d(n, n / 5),
                            lambda x, win: signal.correlate(x, win, mode="valid", method="fft"),
                            lambda x: x[::2, ::2, ::2])
        return (num + 1e-10) / (den + 1e-10)

    return (vif(a, f) + vif(b, f)) / 2


def ref_scalar_lpmnet(a, b, f):
    """The whole-volume metrics, straight from their one-line definitions."""
    def corr(x, y):
        x, y = x - x.mean(), y - y.mean()
        return ((x * y).sum() + 1e-10) / (np.sqrt((x * x).sum() * (y * y).sum()) + 1e-10)

    def sf_of(diffs):
        return np.sqrt(sum((d ** 2).mean() for d in diffs))

    n = _norm255(f)
    c = n[:-1, :-1, :-1]
    ag = np.sqrt(((n[1:, :-1, :-1] - c) ** 2 + (n[:-1, 1:, :-1] - c) ** 2 + (n[:-1, :-1, 1:] - c) ** 2) / 3).mean()
    sf = sf_of([np.diff(f, axis=k) for k in range(3)])
    sfr = sf_of([np.maximum(np.abs(np.diff(a, axis=k)), np.abs(np.diff(b, axis=k))) for k in range(3)])
    hist, _ = np.histogram(n, bins=255, range=(0, 255))
    p = hist / hist.sum()
    return {
        "SCD": (corr(f - b, a) + corr(f - a, b)) / 2,
        "AG": ag,
        "SD": f.std(),
        "SF": sf,
        "rSFe": (sf - sfr) / sfr,
        "EN": -(p * np.log2(p + 1e-7)).sum(),
        "PSNR": np.mean([10 * np.log10(1 / np.mean((s - f) ** 2)) for s in (a, b)]),
    }


# ---------------------------------------------------------------------------------------------
# The lpmnet convention against the references.


def test_lpmnet_matches_slow_references():
    a, b, f = _volumes()
    values = compute_metrics(a, b, f, convention="lpmnet").values
    assert values["SSIM"] == pytest.approx((ref_ssim3d(a, f) + ref_ssim3d(b, f)) / 2, rel=RTOL)
    qabf, nabf = ref_qabf_nabf_lpmnet(a, b, f)
    assert values["Qabf"] == pytest.approx(qabf, rel=RTOL)
    assert values["Nabf"] == pytest.approx(nabf, rel=RTOL, abs=1e-12)
    for name, expected in ref_scalar_lpmnet(a, b, f).items():
        assert values[name] == pytest.approx(expected, rel=RTOL), name


def test_lpmnet_nabf_on_data_with_artifacts():
    """F with its own strong edges, so that N_AB/F has something to count (on [0, 1] data the
    reference's Td = 2 leaves only wt_min weights unless gradients are steep)."""
    a, b, _ = _volumes(seed=3)
    f = np.clip(0.5 * (a + b) + 0.6 * (np.indices(a.shape).sum(0) % 4 == 0), 0, 1)
    values = compute_metrics(a, b, f, convention="lpmnet").values
    qabf, nabf = ref_qabf_nabf_lpmnet(a, b, f)
    assert nabf > 0.01
    assert values["Nabf"] == pytest.approx(nabf, rel=RTOL)
    assert values["Qabf"] == pytest.approx(qabf, rel=RTOL)


@pytest.mark.parametrize("quantised", [False, True])
def test_lpmnet_mi_matches_dense_parzen(quantised):
    """Two nearest centres per voxel equal the dense 128-centre Parzen sums; also for data sitting
    exactly on the centres and on midpoints, where the truncation is tightest."""
    a, b, f = _volumes((6, 12, 10), seed=1)
    if quantised:
        a = np.round(a * 254) / 254  # centres and midpoints of the 128 centres (255 / 127 apart)
        b = np.round(b * 127) / 127
    values = compute_metrics(a, b, f, convention="lpmnet", metrics=["MI"]).values
    assert values["MI"] == pytest.approx(ref_mi_lpmnet(a, b, f), rel=RTOL)


def test_lpmnet_vif_matches_full_kernels():
    a, b, f = _volumes((41, 43, 42), seed=2, smooth=1.5)
    values = compute_metrics(a, b, f, convention="lpmnet", metrics=["VIF"]).values
    assert values["VIF"] == pytest.approx(ref_vif_lpmnet(a, b, f), rel=RTOL)


def test_lpmnet_vif_needs_41_voxels_per_dimension():
    a, b, f = _volumes((40, 48, 48))
    assert math.isnan(compute_metrics(a, b, f, metrics=["VIF"]).values["VIF"])


def test_lpmnet_flat_slices_follow_the_reference_guards():
    """Zero background slices are averaged in, with the values the reference's guards give them."""
    a, b, f = _volumes((8, 20, 20))
    for x in (a, b, f):
        x[:2] = 0
    values = compute_metrics(a, b, f, convention="lpmnet").values
    qabf, nabf = ref_qabf_nabf_lpmnet(a, b, f)
    assert values["Qabf"] == pytest.approx(qabf, rel=RTOL)
    assert values["Nabf"] == pytest.approx(nabf, rel=RTOL, abs=1e-12)
    assert values["MI"] == pytest.approx(ref_mi_lpmnet(a, b, f), rel=RTOL)


# ---------------------------------------------------------------------------------------------
# Identities (both conventions where they apply).


def test_sd_ag_sf_of_a_constant_are_zero():
    a, b, _ = _volumes()
    f = np.full_like(a, 0.3)
    for convention in CONVENTIONS:
        ms = compute_metrics(a, b, f, convention=convention)
        for name in ("SD", "AG", "SF"):
            assert ms.values[name] == 0, (convention, name)
        # lpmnet's EN is -log2(1 + 1e-7) for a single histogram bin (the reference's guard).
        assert ms.values["EN"] == pytest.approx(0, abs=1e-6)
        assert ms.values["rSFe"] == pytest.approx(-1)


def test_psnr_of_identical_volumes_is_infinite():
    a, _, _ = _volumes()
    for convention in CONVENTIONS:
        assert compute_metrics(a, a, a, convention=convention).values["PSNR"] == math.inf


def test_ssim_of_identical_volumes():
    a, _, _ = _volumes()
    assert compute_metrics(a, a, a, convention="lpmnet").values["SSIM"] == pytest.approx(1, abs=1e-12)
    assert compute_metrics(a, a, a, convention="standard").values["SSIM"] == pytest.approx(2, abs=1e-12)


def test_rsfe_of_f_equal_to_both_sources_is_zero():
    a, _, _ = _volumes()
    for convention in CONVENTIONS:
        assert compute_metrics(a, a, a, convention=convention).values["rSFe"] == pytest.approx(0, abs=1e-12)


def test_scd_is_a_mean_in_lpmnet_and_a_sum_in_standard():
    """With identical slices the whole-volume and per-slice correlations coincide, and volumes
    spanning exactly [0, 1] are unchanged (but for a factor) by the standard min-max to 0..255."""
    a, b, f = (x[:1].repeat(4, axis=0) for x in _volumes(seed=4))
    a, b, f = ((x - x.min()) / (x.max() - x.min()) for x in (a, b, f))
    lpm = compute_metrics(a, b, f, convention="lpmnet", metrics=["SCD"]).values["SCD"]
    std = compute_metrics(a, b, f, convention="standard", metrics=["SCD"]).values["SCD"]
    assert std == pytest.approx(2 * lpm, rel=1e-9)


def test_entropy_of_a_two_level_volume_is_one_bit():
    f = np.zeros((4, 16, 16))
    f[:, :, 8:] = 1
    a, b, _ = _volumes((4, 16, 16))
    assert compute_metrics(a, b, f, convention="standard").values["EN"] == pytest.approx(1, abs=1e-12)
    # The reference's -sum p log2(p + 1e-7) is 3e-7 short of a bit.
    assert compute_metrics(a, b, f, convention="lpmnet").values["EN"] == pytest.approx(1, abs=1e-6)


def test_qabf_of_f_equal_to_a_with_flat_b():
    """Edges of A fully transferred: Qg = 0.9994-ish and Qa = 0.9879 / (1 + e^-4.4) = 0.9759. In
    lpmnet the strength term of equal gradients is g itself (a reference quirk), so a step of 1 on
    [0, 1] data (Sobel magnitude >= 1) is needed for it to saturate as well."""
    a = np.zeros((4, 24, 24))
    a[:, 6:18, 6:18] = 1
    b = np.zeros_like(a)
    full = 0.9994 / (1 + math.exp(-15 * 0.5)) * 0.9879 / (1 + math.exp(-22 * 0.2))
    for convention in CONVENTIONS:
        qabf = compute_metrics(a, b, a, convention=convention).values["Qabf"]
        assert 0.97 < qabf <= 0.9994 * 0.9879 / (1 + math.exp(-22 * 0.2)) + 1e-12, convention
        assert qabf == pytest.approx(full, abs=2e-3), convention


def test_standard_mi_of_identical_volumes_is_twice_the_entropy():
    a, _, _ = _volumes()
    ms = compute_metrics(a, a, a, convention="standard")
    assert ms.values["MI"] == pytest.approx(2 * ms.values["EN"], rel=1e-12)


def test_standard_mi_of_f_equal_to_a_is_entropy_plus_mi_with_b():
    """MI(A, A) + MI(B, A) = H(A) + MI(B, A), slice by slice; MI(B, A) alone is half of MI for
    sources (B, B) and F = A."""
    a, b, _ = _volumes(seed=6)
    with_a = compute_metrics(a, b, a, convention="standard")
    b_to_a = compute_metrics(b, b, a, convention="standard", metrics=["MI"]).values["MI"] / 2
    assert with_a.values["MI"] == pytest.approx(with_a.values["EN"] + b_to_a, rel=1e-12)


def test_hand_computed_values_on_a_tiny_volume():
    """F steps 0 -> 1 along W on a 2x2x2 grid; A = 0 and B = 1 everywhere."""
    f = np.zeros((2, 2, 2))
    f[..., 1] = 1
    a, b = np.zeros_like(f), np.ones_like(f)
    lpm = compute_metrics(a, b, f, convention="lpmnet").values
    assert lpm["SF"] == 1  # mean squared steps 0, 0, 1
    assert lpm["SD"] == 0.5
    assert lpm["AG"] == pytest.approx(255 / math.sqrt(3), rel=1e-15)  # one voxel: dz = 255
    assert lpm["PSNR"] == pytest.approx(10 * math.log10(2), rel=1e-15)  # both mse are 1/2
    assert math.isnan(lpm["rSFe"])  # constant sources: SFr = 0
    std = compute_metrics(a, b, f, convention="standard")
    assert all(math.isnan(v) for v in std.values.values())  # no slice has source content


# ---------------------------------------------------------------------------------------------
# Degenerate inputs: undefined values are NaN, nothing raises.


def test_constant_fused_volume_never_raises():
    a, b, _ = _volumes((41, 48, 48))
    f = np.full_like(a, 0.7)
    for convention, ms in compute_all(a, b, f).items():
        for name, value in ms.values.items():
            assert isinstance(value, float)
            assert not math.isnan(value), (convention, name)


def test_constant_everything_is_undefined_in_standard():
    x = np.full((6, 16, 16), 0.25)
    results = compute_all(x, x, x)
    std = results["standard"]
    assert all(math.isnan(v) for v in std.values.values())
    assert all(n == 0 for n in std.slices_used.values())
    lpm = results["lpmnet"].values
    assert math.isnan(lpm["rSFe"]) and math.isnan(lpm["VIF"])
    assert lpm["SSIM"] == pytest.approx(1) and lpm["PSNR"] == math.inf
    assert lpm["MI"] == pytest.approx(1)  # the reference's 1e-10 / 1e-10 on empty slices


def test_standard_skips_slices_without_content():
    a, b, f = _volumes((10, 24, 24))
    empty = [0, 4, 9]
    for x in (a, b, f):
        x[empty] = 0.5
    ms = compute_metrics(a, b, f, convention="standard")
    assert set(ms.slices_used.values()) - {0} == {7}
    assert ms.slices_used["VIF"] == 0  # 24 x 24 slices are under VIF's 41 x 41
    keep = [k for k in range(10) if k not in empty]
    sub = compute_metrics(a[keep], b[keep], f[keep], convention="standard")
    for name in METRIC_NAMES:
        assert ms.values[name] == pytest.approx(sub.values[name], rel=1e-12, nan_ok=True), name


def test_standard_skips_slices_where_a_metric_is_undefined():
    a, b, f = _volumes((6, 24, 24))
    a[2] = 0.5  # A flat, B not: the slice has content, but corr(F - B, A) is 0/0
    ms = compute_metrics(a, b, f, convention="standard")
    assert ms.slices_used["SCD"] == 5
    assert ms.slices_used["SSIM"] == 6


# ---------------------------------------------------------------------------------------------
# API.


def test_metric_set_api():
    a, b, f = _volumes()
    results = compute_all(a, b, f)
    assert tuple(results) == CONVENTIONS == ("lpmnet", "standard")
    assert METRIC_NAMES == ("SSIM", "Qabf", "MI", "SCD", "VIF", "AG", "SD", "SF", "rSFe", "EN", "PSNR", "Nabf")
    for convention, ms in results.items():
        assert isinstance(ms, MetricSet)
        assert ms.convention == convention
        assert tuple(ms.values) == METRIC_NAMES == tuple(ms.slices_used)
        assert all(type(v) is float for v in ms.values.values())
        d = ms.to_dict()
        assert d == {"convention": convention, "values": ms.values, "slices_used": ms.slices_used,
                     "notes": ms.notes}
        assert set(ms.notes) == {m for m, v in ms.values.items() if math.isnan(v)}
    assert results["lpmnet"].notes["VIF"].startswith("undefined: the 3D VIF needs at least 41 voxels")
    assert results["lpmnet"].slices_used["Qabf"] == 16
    assert results["lpmnet"].slices_used["SSIM"] is None
    assert results["standard"].slices_used["SSIM"] == 16


def test_tensors_subsets_and_axis():
    a, b, f = _volumes((12, 16, 20))
    reference = compute_all(a, b, f)
    tensors = compute_all(*(torch.from_numpy(x) for x in (a, b, f)), metrics=["Qabf", "MI", "SSIM"])
    for convention in CONVENTIONS:
        assert tuple(tensors[convention].values) == ("SSIM", "Qabf", "MI")
        for name, value in tensors[convention].values.items():
            assert value == reference[convention].values[name]
    moved = compute_all(*(np.moveaxis(x, 1, 0) for x in (a, b, f)))
    along_1 = compute_all(a, b, f, axis=1)
    for convention in CONVENTIONS:
        for name in METRIC_NAMES:
            assert along_1[convention].values[name] == pytest.approx(moved[convention].values[name],
                                                                     rel=1e-9, nan_ok=True)
        assert along_1[convention].slices_used["Qabf"] == 16


def test_blocking_and_threads_do_not_change_values(monkeypatch):
    """CPU blocks on a thread pool, serial blocks, and whole arrays (the path of other devices)."""
    from lpmnet.metrics import _filters

    a, b, f = _volumes((41, 44, 42), seed=8)
    pooled = compute_all(a, b, f)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        serial = compute_all(a, b, f)
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setattr(_filters, "CPU_BLOCK", 1 << 40)
    whole = compute_all(a, b, f)
    for convention in CONVENTIONS:
        assert serial[convention] == pooled[convention]
        for name in METRIC_NAMES:
            assert whole[convention].values[name] == pytest.approx(pooled[convention].values[name], rel=1e-12)


@pytest.mark.parametrize("kwargs, message", [
    ({"convention": "matlab"}, "convention"),
    ({"metrics": ["SSIM", "QABF"]}, "unknown metric"),
    ({"axis": 3}, "axis"),
])
def test_bad_arguments(kwargs, message):
    a, b, f = _volumes((4, 8, 8))
    with pytest.raises(ValueError, match=message):
        compute_metrics(a, b, f, **kwargs)


def test_bad_inputs():
    a, b, f = _volumes((4, 8, 8))
    with pytest.raises(ValueError, match="one shape"):
        compute_metrics(a, b, f[:3])
    with pytest.raises(ValueError, match="3D"):
        compute_metrics(a[0], b[0], f[0])
    f[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        compute_metrics(a, b, f)


# ---------------------------------------------------------------------------------------------
# The differentiable loss terms.


def test_ssim3d_shapes_dtypes_and_reference():
    a, _, f = _volumes((9, 13, 14))
    expected = ref_ssim3d(a, f)
    x, y = torch.from_numpy(a), torch.from_numpy(f)
    assert float(ssim3d(x, y)) == pytest.approx(expected, rel=1e-12)
    assert float(ssim3d(x[None, None], y[None, None])) == pytest.approx(expected, rel=1e-12)
    out32 = ssim3d(x.float()[None, None], y.float()[None, None])
    assert out32.dtype == torch.float32 and float(out32) == pytest.approx(expected, rel=1e-4)
    batch = ssim3d(torch.stack([x, y])[:, None], torch.stack([y, y])[:, None])
    assert float(batch) == pytest.approx((expected + 1) / 2, rel=1e-12)


def test_ssim3d_and_sf_under_autocast():
    x, y = (torch.from_numpy(v).float()[None, None] for v in _volumes((8, 12, 12))[:2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = ssim3d(x.bfloat16(), y)
        sf = spatial_frequency_3d(x.bfloat16())
    assert s.dtype == torch.float32 and sf.dtype == torch.float32
    assert float(s) == pytest.approx(float(ssim3d(x.bfloat16().float(), y)), rel=1e-6)
    assert float(sf) == pytest.approx(float(spatial_frequency_3d(x.bfloat16().float())), rel=1e-6)


def test_spatial_frequency_3d_pools_the_batch():
    x = torch.rand(2, 1, 5, 6, 7, dtype=torch.float64)
    pooled = math.sqrt(sum(float((torch.diff(x, dim=d) ** 2).mean()) for d in (2, 3, 4)))
    assert float(spatial_frequency_3d(x)) == pytest.approx(pooled, rel=1e-12)
    single = math.sqrt(sum(float((np.diff(x[0, 0].numpy(), axis=d) ** 2).mean()) for d in range(3)))
    assert float(spatial_frequency_3d(x[0, 0])) == pytest.approx(single, rel=1e-12)


def test_loss_terms_are_differentiable():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 5, 6, 7, dtype=torch.float64, generator=gen, requires_grad=True)
    y = torch.rand(1, 1, 5, 6, 7, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(ssim3d, (x, y))
    assert torch.autograd.gradcheck(spatial_frequency_3d, (x,))


@pytest.mark.parametrize("same", [True, False])
@pytest.mark.parametrize("dim", [0, 2, -1])
def test_filter_gradients_are_the_adjoint_filters(dim, same):
    """correlate1d's and gaussian_blur's gradients (the reversed taps' correlation, computed by the
    forward's code) match finite differences, for taps that are not symmetric."""
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(5, 6, 7, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: correlate1d(t, (0.5, -1.0, 2.0), dim, same=same), (x,))
    assert torch.autograd.gradcheck(lambda t: correlate1d(t, (3.0, 1.0), dim), (x,))
    volume = torch.rand(2, 1, 6, 7, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: gaussian_blur(t, 5, 1.5, 3, same=same), (volume,))


@pytest.mark.parametrize("same", [True, False])
def test_blocked_filter_gradient_equals_the_convolution_gradient(same):
    """Above the CPU block size, the Gaussian blur's gradient is conv3d's (an independent filter)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(2, 1, 40, 48, 44, dtype=torch.float64, generator=gen, requires_grad=True)
    taps = torch.tensor(gaussian_taps(11, 1.5), dtype=torch.float64)
    kernel = (taps[:, None, None] * taps[None, :, None] * taps[None, None, :])[None, None]
    expected = F.conv3d(x, kernel, padding=5 if same else 0)
    out = gaussian_blur(x, 11, 1.5, 3, same=same)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-14)
    dout = torch.rand(expected.shape, dtype=torch.float64, generator=gen)
    (grad,) = torch.autograd.grad(out, x, dout)
    (expected_grad,) = torch.autograd.grad(expected, x, dout)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-14)


def test_ssim3d_gradient_on_a_blocked_cpu_volume():
    """Large enough for the CPU blocking path: gradients still flow and match finite differences."""
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(1, 1, 40, 48, 48, dtype=torch.float64, generator=gen, requires_grad=True)
    y = torch.rand(1, 1, 40, 48, 48, dtype=torch.float64, generator=gen)
    ssim3d(x, y).backward()
    index = (0, 0, 20, 24, 24)
    step = torch.zeros_like(x)
    step[index] = 1e-4
    with torch.no_grad():
        numeric = (ssim3d(x + step, y) - ssim3d(x - step, y)) / 2e-4
    assert float(x.grad[index]) == pytest.approx(float(numeric), rel=1e-6)


# ---------------------------------------------------------------------------------------------
# Real data.


def test_real_t1_flair(shared_data):
    nib = pytest.importorskip("nibabel")
    folder = shared_data / "oms_patient07_mni"
    volumes = []
    for name in ("T1.nii.gz", "FLAIR.nii.gz"):
        data = np.asarray(nib.load(folder / name).dataobj, dtype=np.float64)
        centre = [s // 2 for s in data.shape]
        crop = data[tuple(slice(c - 32, c + 32) for c in centre)]
        volumes.append((crop - crop.min()) / (crop.max() - crop.min()))
    a, b = volumes
    f = (a + b) / 2
    results = compute_all(a, b, f)
    for convention, ms in results.items():
        assert all(math.isfinite(v) for v in ms.values.values()), (convention, ms.values)
    lpm, std = results["lpmnet"].values, results["standard"].values
    assert 0.5 < lpm["SSIM"] <= 1 and 1 < std["SSIM"] <= 2
    assert 0.2 < lpm["Qabf"] < 1 and 0.2 < std["Qabf"] < 1
    assert 0 < lpm["MI"] < 2 and 1 < std["MI"] < 16
    assert 0 < lpm["SCD"] < 1 and 0 < std["SCD"] < 2
    assert 0 < lpm["VIF"] < 1.5 and 0 < std["VIF"] < 3
    assert 0 < lpm["AG"] < 255 and 0 < std["AG"] < 255
    assert 0 < lpm["SD"] < 0.5 and 0 < std["SD"] < 128
    assert 0 < lpm["SF"] < 1 and 0 < std["SF"] < 255
    assert -1 < lpm["rSFe"] < 0 and -1 < std["rSFe"] < 0  # an average is smoother than either source
    assert 2 < lpm["EN"] < math.log2(255) and 2 < std["EN"] <= 8
    assert 10 < lpm["PSNR"] < 60 and 10 < std["PSNR"] < 60
    assert 0 <= lpm["Nabf"] < 0.5 and 0 <= std["Nabf"] < 0.5
    assert results["standard"].slices_used["SSIM"] == 64
