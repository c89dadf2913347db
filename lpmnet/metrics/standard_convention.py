"""The ``standard`` metric convention: the community's 2D fusion toolboxes, slice by slice.

The definitions follow the MATLAB evaluation code used across the image fusion literature (Tang's
Evaluation-for-Image-Fusion, VIFB's ``metrics*.m``, Shreyamsha Kumar's ``objective_fusion_perform_fn``)
and their Python ports (each function's docstring gives its definition), so values compare with
published 2D tables.

Each volume is min-max normalised to u in [0, 1] (a constant volume maps to zeros) and scaled to
255 u; EN and MI use the uint8 values round(255 u), rounding halves up as MATLAB's uint8 does. The
metrics are computed on all 2D slices along ``axis`` together (on CPU in cache-sized blocks of
consecutive slices). A slice where both sources are constant (no content, e.g. background outside
the field of view) is skipped by every metric, and so is a slice where a metric is undefined (0/0:
e.g. SCD when a source slice is constant); the value is the mean over the remaining slices, and the
number of those slices is reported. Slices smaller than a metric's window (11 for SSIM, 41 for VIF)
leave that metric undefined. Computation is float64.
"""

from __future__ import annotations

import math
import torch

from lpmnet.metrics._filters import block_ranges, gaussian_blur, map_blocks, sobel
from lpmnet.metrics._shared import (
    NABF_ORIENTATION,
    NABF_STRENGTH,
    QABF_ORIENTATION,
    QABF_STRENGTH,
    VIF_MIN_SIZE,
    edge_artifacts,
    edge_transfer,
    entropy,
    mean_square_step,
    minmax01,
    orientation,
    orientation_agreement,
    preservation,
    relative_strength,
    scd_correlations,
    ssim_mean,
    vif_num_den,
)

PLANE = (-2, -1)
PEAK = 255.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = (0.01 * PEAK) ** 2
SSIM_C2 = (0.03 * PEAK) ** 2
LEVELS = 256
DIAGONAL_WEIGHT = math.sqrt(2) / 2


def _uint8(x):
    return torch.floor(x + 0.5).long()


class _Slices:
    """A block of consecutive slices (S, H, W) of A, B and F on 0..255."""

    def __init__(self, a, b, f):
        self.a, self.b, self.f = a, b, f
        self.n_slices, self.height, self.width = f.shape

    def undefined(self):
        return torch.full((self.n_slices,), math.nan, dtype=self.f.dtype, device=self.f.device)


def ssim(s: _Slices):
    """SSIM: SSIM(A, F) + SSIM(B, F), Wang's 2D SSIM (Gaussian 11x11, sigma 1.5, K1 .01, K2 .03,
    L 255, 'valid' windows), per slice."""
    if min(s.height, s.width) < SSIM_WINDOW:
        return s.undefined()

    def blur(t):
        return gaussian_blur(t, SSIM_WINDOW, SSIM_SIGMA, 2)

    return ssim_mean(torch.stack([s.a, s.b]), s.f[None], blur, SSIM_C1, SSIM_C2, 2).sum(0)


def qabf(s: _Slices):
    """Qabf: Xydeas-Petrovic (Tg .9994, kg -15, Dg .5, Ta .9879, ka -22, Da .8) on 0..255, zero-padded
    Sobel with gx from [[-1,0,1],[-2,0,2],[-1,0,1]], sum(Q_AF g_A + Q_BF g_B) / sum(g_A + g_B)."""
    vertical, horizontal = sobel(torch.stack([s.a, s.b, s.f]), "zeros")
    gx, gy = horizontal, vertical
    g_a, g_b, g_f = torch.sqrt(gx * gx + gy * gy).unbind(0)
    a_a, a_b, a_f = orientation(gx, gy, 0.0).unbind(0)
    q_a, q_b = (preservation(relative_strength(g, g_f), QABF_STRENGTH)
                * preservation(orientation_agreement(a, a_f), QABF_ORIENTATION)
                for g, a in ((g_a, a_a), (g_b, a_b)))
    return edge_transfer(q_a, q_b, g_a, g_b, PLANE)


def nabf(s: _Slices):
    """Nabf: Shreyamsha Kumar's modified N_AB/F (Sobel/8 with mirror padding, Petrovic constants
    Td 2, wt_min .001, Lg 1.5, Nrg .9999, kg 19, Nra .9995, ka 22, Q = sqrt(Qg Qa)) on 0..255."""
    vertical, horizontal = sobel(torch.stack([s.a, s.b, s.f]), "reflect")
    # Kumar's sobel_fn: gv correlates with [-1 0 1; -2 0 2; -1 0 1]/8, gh with [-1 -2 -1; 0 0 0; 1 2 1]/8.
    gv, gh = horizontal / 8, -vertical / 8
    g_a, g_b, g_f = torch.sqrt(gh * gh + gv * gv).unbind(0)
    a_a, a_b, a_f = torch.where((gv == 0) & (gh == 0), 0.0, torch.atan(gv / gh)).unbind(0)

    def preserved(g, a):
        strength = torch.where((g == 0) | (g_f == 0), 0.0, torch.minimum(g, g_f) / torch.maximum(g, g_f))
        agreement = torch.abs(torch.abs(a - a_f) - math.pi / 2) * (2 / math.pi)
        return torch.sqrt(preservation(strength, NABF_STRENGTH) * preservation(agreement, NABF_ORIENTATION))

    return edge_artifacts(preserved(g_a, a_a), preserved(g_b, a_b), g_a, g_b, g_f, PLANE)


def mi(s: _Slices):
    """MI: MI(A, F) + MI(B, F) in bits from the 256-bin joint histogram of the uint8 slices."""
    n_voxels = s.height * s.width
    offset = torch.arange(s.n_slices, device=s.f.device)[:, None, None] * LEVELS * LEVELS
    q_f = _uint8(s.f)
    total = 0.0
    for src in (s.a, s.b):
        index = (offset + _uint8(src) * LEVELS + q_f).reshape(-1)
        joint = torch.bincount(index, minlength=s.n_slices * LEVELS * LEVELS)
        p = joint.view(s.n_slices, LEVELS, LEVELS).to(s.f.dtype) / n_voxels
        h_src, h_f = entropy(p.sum(-1), -1, base=2), entropy(p.sum(-2), -1, base=2)
        total = total + h_src + h_f - entropy(p, PLANE, base=2)
    return total


def scd(s: _Slices):
    """SCD: corr(F - B, A) + corr(F - A, B) per slice (the sum); undefined where an argument is flat."""
    r1, r2 = scd_correlations(s.a, s.b, s.f, PLANE)
    return r1 + r2


def vif(s: _Slices):
    """VIF: VIF(A, F) + VIF(B, F), Sheikh-Bovik multiscale pixel VIF on 0..255 (windows 17/9/5/3,
    sigma_n^2 = 2) per slice; undefined for slices under 41x41 or a flat source slice."""
    if min(s.height, s.width) < VIF_MIN_SIZE:
        return s.undefined()
    num, den = vif_num_den(torch.stack([s.a, s.b]), s.f[None], 2)
    return (num / den).sum(0)


def ag(s: _Slices):
    """AG: sum of sqrt((gx^2 + gy^2) / 2) with central differences (one-sided at the borders),
    divided by (rows - 1)(columns - 1)."""
    gy, gx = torch.gradient(s.f, dim=PLANE, edge_order=1)
    return torch.sqrt((gx * gx + gy * gy) / 2).sum(PLANE) / ((s.height - 1) * (s.width - 1))


def sd(s: _Slices):
    """SD: population standard deviation of the slice on 0..255."""
    return s.f.std(dim=PLANE, correction=0)


def sf(s: _Slices):
    """SF: sqrt(mean squared row difference + mean squared column difference) on 0..255."""
    return torch.sqrt(sum(mean_square_step(s.f, d, dims=PLANE) for d in PLANE))


def _directional_differences(x):
    """Rows, columns, main and secondary diagonal first differences (Zheng et al. 2007)."""
    return (x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :],
            x[..., 1:, 1:] - x[..., :-1, :-1], x[..., 1:, :-1] - x[..., :-1, 1:])


def _extended_sf(diffs, n_pixels):
    weights = (1.0, 1.0, DIAGONAL_WEIGHT, DIAGONAL_WEIGHT)
    return torch.sqrt(sum(w * (d * d).sum(PLANE) for w, d in zip(weights, diffs)) / n_pixels)


def rsfe(s: _Slices):
    """rSFe (Zheng et al. 2007): (SF_F - SF_R) / SF_R with the four-direction SF (diagonals weighted
    sqrt(2)/2, every sum divided by rows*columns) and the reference gradient max(|grad A|, |grad B|)
    per direction; undefined where SF_R = 0."""
    n_pixels = s.height * s.width
    reference = _extended_sf([torch.maximum(da.abs(), db.abs()) for da, db in
                              zip(_directional_differences(s.a), _directional_differences(s.b))], n_pixels)
    fused = _extended_sf(_directional_differences(s.f), n_pixels)
    return torch.where(reference > 0, (fused - reference) / reference, math.nan)


def en(s: _Slices):
    """EN: Shannon entropy in bits of the 256-level histogram of the uint8 slice."""
    offset = torch.arange(s.n_slices, device=s.f.device)[:, None, None] * LEVELS
    index = (offset + _uint8(s.f)).reshape(-1)
    counts = torch.bincount(index, minlength=s.n_slices * LEVELS).view(s.n_slices, LEVELS)
    return entropy(counts.to(s.f.dtype) / (s.height * s.width), -1, base=2)


def psnr(s: _Slices):
    """PSNR: 10 log10(255^2 / ((mse(A, F) + mse(B, F)) / 2)); +inf where F equals both sources."""
    mse = (((s.a - s.f) ** 2).mean(PLANE) + ((s.b - s.f) ** 2).mean(PLANE)) / 2
    return 10 * torch.log10(PEAK ** 2 / mse)


METRICS = {
    "SSIM": ssim, "Qabf": qabf, "MI": mi, "SCD": scd, "VIF": vif, "AG": ag, "SD": sd, "SF": sf,
    "rSFe": rsfe, "EN": en, "PSNR": psnr, "Nabf": nabf,
}


def compute(a, b, f, axis, names):
    """Mean over the used slices (0-d tensors) and the number of slices used, for ``names``."""
    bounds = [(x.min(), x.max()) for x in (a, b, f)]
    a, b, f = (torch.movedim(x, axis, 0) for x in (a, b, f))
    n_slices, height, width = f.shape

    def constant(x):
        return x.amax(PLANE) == x.amin(PLANE)

    def block(start, stop):
        on_255 = ((PEAK * minmax01(x[start:stop], lo_hi)).contiguous() for x, lo_hi in zip((a, b, f), bounds))
        slices = _Slices(*on_255)
        return [~(constant(slices.a) & constant(slices.b))] + [METRICS[name](slices) for name in names]

    blocks = map_blocks(block, block_ranges(n_slices, height * width, f.device))
    has_content, *per_metric = (torch.cat(column) for column in zip(*blocks))
    values, used = {}, {}
    for name, per_slice in zip(names, per_metric):
        keep = has_content & ~torch.isnan(per_slice)
        values[name] = per_slice[keep].mean()
        used[name] = int(keep.sum())
    return values, used
