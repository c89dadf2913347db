"""Formulas that both metric conventions use, parameterised by what differs between them.

The conventions differ in data scale (0..1 or 0..255), in 2D slices versus 3D volumes, in padding and
in small numerical guards; the formulas themselves (SSIM map, multiscale pixel VIF, Xydeas-Petrovic
edge preservation, correlation, spatial frequency, entropy) live here once.
"""

from __future__ import annotations

import math

import torch

from lpmnet.metrics._filters import block_ranges, blockwise_sum, gaussian_blur, map_blocks


def minmax01(x: torch.Tensor, bounds=None) -> torch.Tensor:
    """(x - min) / (max - min), min and max over the whole tensor or given as ``bounds`` (those of
    the volume ``x`` is a block of); a constant volume maps to zeros.

    Zeros rather than NaN for a constant: its gradients, spread and histogram are then the natural
    limits (AG = SF = SD = 0, a single histogram bin) instead of poisoning every derived metric.
    """
    lo, hi = (x.min(), x.max()) if bounds is None else bounds
    if hi > lo:
        return (x - lo) / (hi - lo)
    return torch.zeros_like(x)


def entropy(p: torch.Tensor, dims, *, eps: float = 0.0, base: float = math.e) -> torch.Tensor:
    """-sum p log(p + eps) over ``dims`` (0 log 0 = 0); ``eps`` reproduces a reference's guard."""
    return -torch.xlogy(p, p + eps).sum(dims) / math.log(base)


def correlation(x: torch.Tensor, y: torch.Tensor, dims, *, eps: float = 0.0) -> torch.Tensor:
    """Pearson correlation over ``dims``: (sum xc*yc + eps) / (sqrt(sum xc^2 * sum yc^2) + eps).

    With ``eps = 0`` a constant argument makes it undefined: NaN. (Tested on the values, since the
    centred sums of a constant are rounding noise rather than exact zeros.)
    """
    xc = x - x.mean(dims, keepdim=True)
    yc = y - y.mean(dims, keepdim=True)
    num = (xc * yc).sum(dims)
    den = torch.sqrt((xc * xc).sum(dims) * (yc * yc).sum(dims))
    r = (num + eps) / (den + eps)
    if eps == 0:
        def constant(t):
            return t.amax(dims) == t.amin(dims)

        r = torch.where(constant(x) | constant(y), math.nan, r)
    return r


def scd_correlations(a, b, f, dims, *, eps: float = 0.0):
    """The two correlations of the SCD metric: corr(F - B, A) and corr(F - A, B)."""
    return correlation(f - b, a, dims, eps=eps), correlation(f - a, b, dims, eps=eps)


def mean_square_step(x: torch.Tensor, dim: int, *, other: torch.Tensor | None = None, dims=None):
    """Mean of the squared forward differences of ``x`` along ``dim`` -- or, given ``other``, of
    max(|diff x|, |diff other|) -- over ``dims``; the terms of a spatial frequency.

    ``dims=None`` averages over every element (batch included), block by block along dimension -3.
    """
    n = x.shape[dim]
    views = [t.narrow(dim, start, n - 1) for t in (x, other) if t is not None for start in (1, 0)]

    def squares(x1, x0, o1=None, o0=None):
        step = x1 - x0
        if o1 is not None:
            step = torch.maximum(step.abs(), (o1 - o0).abs())
        return step * step

    if dims is not None:
        return squares(*views).mean(dims)
    return blockwise_sum(lambda *v: squares(*v).sum(), views, -3) / views[0].numel()


def moment_inputs(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``torch.cat([x, y, x * x, y * y, x * y])``, x and y broadcasting along dimension 0: the maps
    whose local means give means, variances and covariance. Built block by block on CPU (no
    full-size temporaries) unless autograd records."""
    if x.device.type != "cpu" or torch.is_grad_enabled():
        return torch.cat([x, y, x * x, y * y, x * y])
    nx, ny = x.shape[0], y.shape[0]
    xf, yf = x.reshape(nx, -1), y.reshape(ny, -1)
    out = xf.new_empty((2 * nx + 2 * ny + max(nx, ny), xf.shape[1]),
                       dtype=torch.promote_types(x.dtype, y.dtype))
    parts = torch.split(out, [nx, ny, nx, ny, max(nx, ny)])

    def block(start, stop):
        xb, yb = xf[:, start:stop], yf[:, start:stop]
        for part, value in zip(parts, (xb, yb, xb * xb, yb * yb, xb * yb)):
            part[:, start:stop] = value

    map_blocks(block, block_ranges(xf.shape[1], out.shape[0], x.device))
    return out.reshape(out.shape[0], *x.shape[1:])


def ssim_mean(x, y, blur, c1: float, c2: float, ndim: int) -> torch.Tensor:
    """Mean of Wang et al.'s SSIM map over the last ``ndim`` dimensions, per leading index.

    ``x`` and ``y`` have one number of dimensions and broadcast along dimension 0 (so several
    references can share one fused image without copying it); ``blur`` filters a stack of maps.
    """
    nx, ny = x.shape[0], y.shape[0]
    moments = blur(moment_inputs(x, y))
    mu_x, mu_y = moments[:nx], moments[nx:nx + ny]
    exx, eyy, exy = torch.split(moments[nx + ny:], [nx, ny, max(nx, ny)])
    spatial = tuple(range(-ndim, 0))

    def block_sum(mu_x, mu_y, exx, eyy, exy):
        mu_xy = mu_x * mu_y
        mu_xx = mu_x * mu_x
        mu_yy = mu_y * mu_y
        num = (2 * mu_xy + c1) * (2 * (exy - mu_xy) + c2)
        den = (mu_xx + mu_yy + c1) * ((exx - mu_xx) + (eyy - mu_yy) + c2)
        return (num / den).sum(spatial)

    total = blockwise_sum(block_sum, (mu_x, mu_y, exx, eyy, exy), -ndim)
    return total / math.prod(moments.shape[-ndim:])


VIF_MIN_SIZE = 41  # smallest extent that leaves at least one sample at the fourth scale


def vif_num_den(refs: torch.Tensor, dist: torch.Tensor, ndim: int, *, sigma_nsq: float = 2.0):
    """Sheikh and Bovik's multiscale pixel-domain VIF, numerator and denominator.

    ``refs`` is a stack ``(R, *lead, *spatial)`` of reference images and ``dist`` ``(1, *lead,
    *spatial)`` the distorted one they share; the last ``ndim`` dimensions are spatial. At scale s
    (1..4) the window is a Gaussian of N = 2^(5-s) + 1 samples, sd N/5, 'valid' filtering; from the
    second scale on the images are first filtered with that window and decimated by 2. The guards
    (variances below 1e-10, negative gains) are those of ``vifp_mscale.m``. Returns ``(num, den)``
    of shape ``(R, *lead)``; VIF = num / den. Every spatial extent must be >= ``VIF_MIN_SIZE``.
    """
    eps = 1e-10
    n_refs = refs.shape[0]
    spatial = tuple(range(-ndim, 0))

    def block_sums(mu1, mu2, e11, e22, e12):
        sigma1_sq = (e11 - mu1 * mu1).clamp_min(0)
        sigma2_sq = (e22 - mu2 * mu2).clamp_min(0).expand_as(sigma1_sq)
        sigma12 = e12 - mu1 * mu2
        g = sigma12 / (sigma1_sq + eps)
        sv_sq = sigma2_sq - g * sigma12
        flat_ref = sigma1_sq < eps
        g = torch.where(flat_ref, 0.0, g)
        sv_sq = torch.where(flat_ref, sigma2_sq, sv_sq)
        sigma1_sq = torch.where(flat_ref, 0.0, sigma1_sq)
        flat_dist = sigma2_sq < eps
        g = torch.where(flat_dist, 0.0, g)
        sv_sq = torch.where(flat_dist, 0.0, sv_sq)
        negative = g < 0
        sv_sq = torch.where(negative, sigma2_sq, sv_sq)
        g = torch.where(negative, 0.0, g)
        sv_sq = sv_sq.clamp_min(eps)
        num = torch.log10(1 + g * g * sigma1_sq / (sv_sq + sigma_nsq)).sum(spatial)
        den = torch.log10(1 + sigma1_sq / sigma_nsq).sum(spatial)
        return torch.stack([num, den])

    total = 0
    for scale in range(1, 5):
        size = 2 ** (5 - scale) + 1
        sd = size / 5.0
        if scale > 1:
            decimated = gaussian_blur(torch.cat([refs, dist]), size, sd, ndim, step=2)
            refs, dist = torch.split(decimated, [n_refs, 1])
        moments = gaussian_blur(moment_inputs(refs, dist), size, sd, ndim)
        parts = torch.split(moments, [n_refs, 1, n_refs, 1, n_refs])
        total = total + blockwise_sum(block_sums, parts, -ndim)
    return total[0], total[1]


# Edge preservation sigmoid constants (T, k, D) of the strength and orientation terms: Xydeas and
# Petrovic's Qabf, and the Petrovic metric set behind N_AB/F (both conventions' Nabf use the latter).
QABF_STRENGTH = (0.9994, -15.0, 0.5)
QABF_ORIENTATION = (0.9879, -22.0, 0.8)
NABF_STRENGTH = (0.9999, -19.0, 0.5)
NABF_ORIENTATION = (0.9995, -22.0, 0.5)


def preservation(x: torch.Tensor, constants) -> torch.Tensor:
    """Sigmoid T / (1 + exp(k (x - D))) mapping a relative strength/orientation to a preservation."""
    t, k, d = constants
    return t / (1 + torch.exp(k * (x - d)))


def orientation(gx: torch.Tensor, gy: torch.Tensor, vertical_at: float) -> torch.Tensor:
    """atan(gy / gx), and pi/2 where ``gx == vertical_at`` (the references' test for a zero gx)."""
    return torch.where(gx == vertical_at, math.pi / 2, torch.atan(gy / gx))


def relative_strength(g_src: torch.Tensor, g_f: torch.Tensor) -> torch.Tensor:
    """Smaller over larger gradient magnitude, and ``g_f`` itself where the two are equal.

    The equal case is a quirk of the reference Qabf code (MATLAB and LPM-Net alike), kept so that
    values match: for F = A it makes the strength term depend on the gradient magnitude.
    """
    return torch.where(g_f > g_src, g_src / g_f, torch.where(g_f < g_src, g_f / g_src, g_f))


def orientation_agreement(a_src: torch.Tensor, a_f: torch.Tensor) -> torch.Tensor:
    """1 - |a_src - a_f| / (pi/2) (Qabf's orientation similarity)."""
    return 1 - torch.abs(a_src - a_f) / (math.pi / 2)


def edge_transfer(q_a, q_b, g_a, g_b, dims) -> torch.Tensor:
    """Qabf aggregation: sum(Q_AF g_A + Q_BF g_B) / sum(g_A + g_B) over ``dims``."""
    return (q_a * g_a + q_b * g_b).sum(dims) / (g_a + g_b).sum(dims)


NABF_TD, NABF_LG, NABF_WT_MIN = 2.0, 1.5, 0.001  # Petrovic's edge threshold, weight power, floor


def edge_artifacts(q_a, q_b, g_a, g_b, g_f, dims) -> torch.Tensor:
    """N_AB/F with Shreyamsha Kumar's modification: artifacts only where F's edge is stronger than both.

    sum(na ((1 - Q_AF) w_A + (1 - Q_BF) w_B)) / sum(w_A + w_B), w = g^Lg where g >= Td else wt_min
    (Td 2, Lg 1.5, wt_min .001), na = (g_F > g_A) & (g_F > g_B).
    """
    w_a = torch.where(g_a >= NABF_TD, g_a ** NABF_LG, NABF_WT_MIN)
    w_b = torch.where(g_b >= NABF_TD, g_b ** NABF_LG, NABF_WT_MIN)
    na = (g_f > g_a) & (g_f > g_b)
    artifacts = torch.where(na, (1 - q_a) * w_a + (1 - q_b) * w_b, 0.0)
    return artifacts.sum(dims) / (w_a + w_b).sum(dims)
