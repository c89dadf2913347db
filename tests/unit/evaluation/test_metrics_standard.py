"""The ``standard`` convention against slow per-slice re-statements of the 2D toolbox code it
follows (docs/metrics.md, "Convention standard"): MATLAB semantics written with numpy/scipy loops
over slices, independent of the vectorised torch implementation."""

import math

import numpy as np
import pytest
from scipy import ndimage, signal

from vif_reference import vif_sums

from lpmnet.metrics import METRIC_NAMES, compute_metrics

RTOL = 1e-6


def _volumes(shape, seed=0):
    rng = np.random.default_rng(seed)
    a, b = (ndimage.gaussian_filter(rng.random(shape), 1.2) * (3 + k) - k for k in range(2))
    f = 0.5 * a + 0.5 * b + 0.05 * rng.standard_normal(shape)
    return a, b, f


def _to255(x):
    return (x - x.min()) / (x.max() - x.min()) * 255


def _uint8(x):
    return np.floor(x + 0.5).astype(np.int64)  # MATLAB's uint8() rounds halves up


def _fspecial(size, sigma):
    half = (size - 1) / 2
    y, x = np.ogrid[-half:half + 1, -half:half + 1]
    h = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    return h / h.sum()


def ssim2d(x, y):
    win = _fspecial(11, 1.5)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def filt(t):
        return signal.correlate2d(t, win, mode="valid")

    mu1, mu2 = filt(x), filt(y)
    s1, s2, s12 = filt(x * x) - mu1 ** 2, filt(y * y) - mu2 ** 2, filt(x * y) - mu1 * mu2
    return (((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1 ** 2 + mu2 ** 2 + c1) * (s1 + s2 + c2))).mean()


def qabf2d(pa, pb, pf):
    """VIFB metricsQabf.m: conv2(..., 'same') (a true convolution), gx from h3."""
    h1 = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], float)
    h3 = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], float)

    def edges(p):
        sx, sy = signal.convolve2d(p, h3, mode="same"), signal.convolve2d(p, h1, mode="same")
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.sqrt(sx ** 2 + sy ** 2), np.where(sx == 0, np.pi / 2, np.arctan(sy / sx))

    (ga, aa), (gb, ab), (gf, af) = edges(pa), edges(pb), edges(pf)

    def q(g, a):
        with np.errstate(divide="ignore", invalid="ignore"):
            G = np.where(g > gf, gf / g, np.where(g == gf, gf, g / gf))
        A = 1 - np.abs(a - af) / (np.pi / 2)
        return 0.9994 / (1 + np.exp(-15 * (G - 0.5))) * 0.9879 / (1 + np.exp(-22 * (A - 0.8)))

    return (q(ga, aa) * ga + q(gb, ab) * gb).sum() / (ga + gb).sum()


def nabf2d(pa, pb, pf):
    """Shreyamsha Kumar's analysis_nabf / objective_fusion_perform_fn (modified N_AB/F)."""
    vtemp = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]) / 8
    htemp = np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]]) / 8

    def sobel_fn(x):
        ext = np.pad(x, 1, mode="reflect")  # per_extn_im_fn(x, 3)
        p, q = x.shape
        gv, gh = np.zeros_like(x), np.zeros_like(x)
        for i in range(3):
            for j in range(3):
                gv += vtemp[i, j] * ext[i:i + p, j:j + q]
                gh += htemp[i, j] * ext[i:i + p, j:j + q]
        return gv, gh

    def edges(x):
        gv, gh = sobel_fn(x)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.sqrt(gh ** 2 + gv ** 2), np.where((gv == 0) & (gh == 0), 0, np.arctan(gv / gh))

    (ga, aa), (gb, ab), (gf, af) = edges(pa), edges(pb), edges(pf)

    def q(g, a):
        with np.errstate(divide="ignore", invalid="ignore"):
            G = np.where((g == 0) | (gf == 0), 0, np.where(g > gf, gf / g, g / gf))
        A = np.abs(np.abs(a - af) - np.pi / 2) * 2 / np.pi
        return np.sqrt(0.9999 / (1 + np.exp(-19 * (G - 0.5))) * 0.9995 / (1 + np.exp(-22 * (A - 0.5))))

    wa = np.where(ga >= 2, ga ** 1.5, 0.001)
    wb = np.where(gb >= 2, gb ** 1.5, 0.001)
    na = (gf > ga) & (gf > gb)
    return (na * ((1 - q(ga, aa)) * wa + (1 - q(gb, ab)) * wb)).sum() / (wa + wb).sum()


def mi2d(qx, qf):
    joint, _, _ = np.histogram2d(qx.ravel(), qf.ravel(), bins=256, range=[[0, 256], [0, 256]])
    p = joint / joint.sum()
    px, pf = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    return (p[nz] * np.log2(p[nz] / (px @ pf)[nz])).sum()


def vifp_mscale(ref, dist):
    """The Python ports' compare_viff (MATLAB vifp_mscale.m)."""
    num, den = vif_sums(ref, dist, lambda n: _fspecial(n, n / 5),
                        lambda t, win: signal.convolve2d(t, np.rot90(win, 2), mode="valid"),
                        lambda t: t[::2, ::2])
    return num / den


def ag2d(x):
    gy, gx = np.gradient(x)  # MATLAB gradient: central inside, one-sided at the borders
    r, c = x.shape
    return np.sqrt((gx ** 2 + gy ** 2) / 2).sum() / ((r - 1) * (c - 1))


def rsfe2d(a, b, f):
    """Zheng et al. 2007, written with explicit index ranges."""
    m, n = f.shape
    wd = 1 / math.sqrt(2)

    def grads(x):
        return [x[:, 1:] - x[:, :-1], x[1:, :] - x[:-1, :], x[1:, 1:] - x[:-1, :-1], x[1:, :-1] - x[:-1, 1:]]

    def sf(gs):
        rf, cf, mdf, sdf = ((g ** 2).sum() / (m * n) for g in gs)
        return math.sqrt(rf + cf + wd * mdf + wd * sdf)

    sf_r = sf([np.maximum(np.abs(ga), np.abs(gb)) for ga, gb in zip(grads(a), grads(b))])
    return (sf(grads(f)) - sf_r) / sf_r


def corr2(x, y):
    x, y = x - x.mean(), y - y.mean()
    return (x * y).sum() / math.sqrt((x * x).sum() * (y * y).sum())


def entropy2d(q):
    p = np.bincount(q.ravel(), minlength=256) / q.size
    p = p[p > 0]
    return -(p * np.log2(p)).sum()


def reference_standard(a, b, f, axis=0):
    sa, sb, sf_ = (np.moveaxis(_to255(x), axis, 0) for x in (a, b, f))
    per = {name: [] for name in METRIC_NAMES}
    for x, y, z in zip(sa, sb, sf_):
        qx, qy, qz = _uint8(x), _uint8(y), _uint8(z)
        per["SSIM"].append(ssim2d(x, z) + ssim2d(y, z))
        per["Qabf"].append(qabf2d(x, y, z))
        per["MI"].append(mi2d(qx, qz) + mi2d(qy, qz))
        per["SCD"].append(corr2(z - y, x) + corr2(z - x, y))
        per["VIF"].append(vifp_mscale(x, z) + vifp_mscale(y, z))
        per["AG"].append(ag2d(z))
        per["SD"].append(z.std())
        per["SF"].append(math.sqrt(np.mean(np.diff(z, axis=0) ** 2) + np.mean(np.diff(z, axis=1) ** 2)))
        per["rSFe"].append(rsfe2d(x, y, z))
        per["EN"].append(entropy2d(qz))
        per["PSNR"].append(10 * math.log10(255 ** 2 / ((np.mean((x - z) ** 2) + np.mean((y - z) ** 2)) / 2)))
        per["Nabf"].append(nabf2d(x, y, z))
    return {name: float(np.mean(v)) for name, v in per.items()}


@pytest.mark.parametrize("axis", [0, 2])
def test_standard_matches_slow_references(axis):
    a, b, f = _volumes((4, 46, 42) if axis == 0 else (46, 43, 3), seed=axis)
    ms = compute_metrics(a, b, f, convention="standard", axis=axis)
    expected = reference_standard(a, b, f, axis)
    for name in METRIC_NAMES:
        assert ms.values[name] == pytest.approx(expected[name], rel=RTOL), name
    assert set(ms.slices_used.values()) == {a.shape[axis]}


def test_standard_nabf_counts_artifacts():
    """F with strong edges of its own, so that the artifact term is far from zero."""
    a, b, f = _volumes((3, 24, 24), seed=5)
    f = f + 2.0 * (np.indices(f.shape).sum(0) % 3 == 0)
    ms = compute_metrics(a, b, f, convention="standard", metrics=["Nabf", "Qabf"])
    expected = reference_standard(a, b, f)
    assert expected["Nabf"] > 0.05
    assert ms.values["Nabf"] == pytest.approx(expected["Nabf"], rel=RTOL)
    assert ms.values["Qabf"] == pytest.approx(expected["Qabf"], rel=RTOL)


def test_standard_quantised_metrics_on_integer_data():
    """Data already on 256 levels: MI and EN see exactly those levels."""
    rng = np.random.default_rng(7)
    a, b = (rng.integers(0, 256, (3, 20, 20)).astype(float) for _ in range(2))
    a[0, 0, 0], a[0, 0, 1] = 0, 255
    b[0, 0, 0], b[0, 0, 1] = 0, 255
    f = np.floor((a + b) / 2)
    f[0, 0, 0], f[0, 0, 1] = 0, 255
    ms = compute_metrics(a, b, f, convention="standard", metrics=["MI", "EN"])
    expected = reference_standard(a, b, f)
    assert ms.values["MI"] == pytest.approx(expected["MI"], rel=1e-12)
    assert ms.values["EN"] == pytest.approx(expected["EN"], rel=1e-12)
