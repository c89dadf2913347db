"""The ``lpmnet`` metric convention: the 3D definitions of the LPM-Net code (``models/losses.py``).

These reproduce the numbers of the LPM-Net paper's tables (Wen & Zhang, Information Fusion 2025); each
function's docstring gives the definition it computes. Inputs are volumes already in
[0, 1]; ``Norm255`` (whole-volume min-max to 0..255) is applied only where the reference applies
it (MI, AG, EN). Slice-wise metrics (Qabf, MI, Nabf) average over every slice along the slice axis
(axis 0 in the reference), empty background slices included, as the reference does.

Numerical guards of the reference are kept where they decide a value as the reference (float32)
computes it: the 1e-10 added to the x-gradient of Qabf/Nabf and the 1e-10 in MI's normalised mutual
information set the values of flat (background) slices, SCD's 1e-10 is part of its definition and
EN keeps its log2(p + 1e-7); the 1e-10 inside MI's logarithms, which vanish in float32 but not in
float64, are left out (see ``_parzen_nmi``). Guards that only matter when the reference itself
divides zero by zero over a whole volume (VIF or rSFe of constant sources) give NaN instead.
Computation is float64 on the inputs' device.

``ssim3d`` and ``spatial_frequency_3d`` are differentiable and are also the training loss's terms.
"""

from __future__ import annotations

import math
from functools import cached_property

import torch

from lpmnet.metrics._filters import block_ranges, blockwise_sum, gaussian_blur, map_blocks, sobel
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

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01 ** 2
SSIM_C2 = 0.03 ** 2

MI_BINS = 128
MI_SIGMA = 0.1
MI_SPACING = 255.0 / (MI_BINS - 1)

X_GRADIENT_GUARD = 1e-10


def _loss_precision(*tensors):
    """Tensors as at least float32 with autocast off: SSIM's variance differences need the mantissa."""
    dtype = torch.promote_types(torch.float32, tensors[0].dtype)
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return [t.to(dtype) for t in tensors]


def ssim3d(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean 3D SSIM of ``x`` and ``y``, shape (B, 1, D, H, W) or (D, H, W); differentiable.

    Gaussian window 11^3, sigma 1.5 (three 1D passes), zero padding, same output size,
    C1 = 0.01^2, C2 = 0.03^2 (data in [0, 1]); the scalar mean over all voxels and the batch
    (a batch of 1 broadcasts against a larger one). Computes in float32 at least (autocast
    disabled; half inputs are upcast), on the inputs' device.
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        x, y = _loss_precision(x, y)
        if x.ndim == 3:
            x, y = x[None], y[None]

        def blur(t):
            return gaussian_blur(t, SSIM_WINDOW, SSIM_SIGMA, 3, same=True)

        return ssim_mean(x, y, blur, SSIM_C1, SSIM_C2, 3).mean()


def spatial_frequency_3d(x: torch.Tensor) -> torch.Tensor:
    """3D spatial frequency sqrt(sum over the 3 axes of the mean squared forward difference).

    ``x`` is (B, 1, D, H, W) or (D, H, W); differentiable. For B > 1 the squared differences are
    averaged over the batch as well (one scalar per call, as the reference loss computes it), which
    is the SF of the pooled batch, not the mean of per-volume SFs. At least float32, autocast off.
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        (x,) = _loss_precision(x)
        return torch.sqrt(sum(mean_square_step(x, d) for d in (-3, -2, -1)))


def _norm255(x, bounds=None):
    return minmax01(x, bounds) * 255


def _edge_metrics(a, b, f):
    """Per-slice Qabf and Nabf of (S, H, W) slices on [0, 1]: they share every edge term."""
    vertical, horizontal = sobel(torch.stack([a, b, f]), "zeros")
    # The reference adds 1e-10 to the x-response (kernel [[1,2,1],[0,0,0],[-1,-2,-1]]); on a flat
    # slice this makes every magnitude 1e-10, so flat slices get the reference's small Qabf value.
    gx = vertical + X_GRADIENT_GUARD
    gy = horizontal
    g_a, g_b, g_f = torch.sqrt(gx * gx + gy * gy).unbind(0)
    a_a, a_b, a_f = orientation(gx, gy, X_GRADIENT_GUARD).unbind(0)
    strength = relative_strength(g_a, g_f), relative_strength(g_b, g_f)
    agreement = orientation_agreement(a_a, a_f), orientation_agreement(a_b, a_f)

    def preserved(strength_constants, orientation_constants):
        return [preservation(gs, strength_constants) * preservation(ao, orientation_constants)
                for gs, ao in zip(strength, agreement)]

    q_a, q_b = preserved(QABF_STRENGTH, QABF_ORIENTATION)
    n_a, n_b = preserved(NABF_STRENGTH, NABF_ORIENTATION)
    return torch.stack([edge_transfer(q_a, q_b, g_a, g_b, (-2, -1)),
                        edge_artifacts(n_a, n_b, g_a, g_b, g_f, (-2, -1))])


def _parzen_two_nearest(x):
    """Per voxel of Norm255 data: the lower of the two bin centres around it and both kernel values.

    The reference evaluates exp(-(x - c)^2 / (2 sigma^2)) at all 128 centres c = k * 255/127. With
    sigma = 0.1 and spacing 2.008, every centre beyond the two around x is at least one spacing
    farther than the nearer of them, so its weight is below exp(-spacing^2 / (2 sigma^2)) = 1e-88
    times that one: dropping them all changes each voxel's kernel mass, and so every probability
    and entropy, by less than 1e-87 relative (far below float64 resolution).
    """
    k = torch.floor(x / MI_SPACING).clamp(0, MI_BINS - 2)
    w_lo = torch.exp(-0.5 * ((x - k * MI_SPACING) / MI_SIGMA) ** 2)
    w_hi = torch.exp(-0.5 * ((x - (k + 1) * MI_SPACING) / MI_SIGMA) ** 2)
    return k.long(), w_lo, w_hi


def _parzen_nmi(a, b, f):
    """Per-slice (NMI(A, F) + NMI(B, F)) / 2 of (S, N) Norm255 slices.

    The reference also adds 1e-10 inside its logarithms and probability normalisations. In its
    float32 arithmetic those vanish against the O(1) terms; in float64 they would not, and on an
    empty (constant) slice they would turn its NMI of 1e-10 / 1e-10 = 1 into about 3. They are
    left out, which moves an entropy by at most 1e-10 per histogram bin (2e-8 relative on a real
    T1/FLAIR pair); the 1e-10 of the NMI ratio, which decides empty slices, is kept.
    """
    n_slices = f.shape[0]
    parzen = [_parzen_two_nearest(x) for x in (a, b, f)]
    offset = torch.arange(n_slices, device=f.device)[:, None]

    def marginal_entropy(k, w_lo, w_hi):
        index = torch.cat([offset * MI_BINS + k, offset * MI_BINS + k + 1]).reshape(-1)
        mass = torch.bincount(index, torch.cat([w_lo, w_hi]).reshape(-1), minlength=n_slices * MI_BINS)
        mass = mass.view(n_slices, MI_BINS)
        return entropy(mass / mass.sum(-1, keepdim=True), -1)

    def joint_entropy(src, fused):
        (ks, ws_lo, ws_hi), (kf, wf_lo, wf_hi) = src, fused
        base = offset * MI_BINS * MI_BINS + ks * MI_BINS + kf
        index = torch.cat([base, base + 1, base + MI_BINS, base + MI_BINS + 1]).reshape(-1)
        weight = torch.cat([ws_lo * wf_lo, ws_lo * wf_hi, ws_hi * wf_lo, ws_hi * wf_hi]).reshape(-1)
        mass = torch.bincount(index, weight, minlength=n_slices * MI_BINS * MI_BINS)
        mass = mass.view(n_slices, MI_BINS, MI_BINS)
        return entropy(mass / mass.sum((-2, -1), keepdim=True), (-2, -1))

    h_a, h_b, h_f = (marginal_entropy(*p) for p in parzen)
    nmi = 0.0
    for h_src, src in ((h_a, parzen[0]), (h_b, parzen[1])):
        mutual = h_src + h_f - joint_entropy(src, parzen[2])
        nmi = nmi + (2 * mutual + 1e-10) / (h_src + h_f + 1e-10)
    return nmi / 2


class _Volumes:
    """A, B, F (float64, one device), the slice axis, and results several metrics share."""

    def __init__(self, a, b, f, axis):
        self.a, self.b, self.f = a, b, f
        self.axis = axis

    def per_slice(self, fn, *volumes):
        """``fn`` of blocks of consecutive slices along the slice axis, concatenated along the last
        dimension of its result."""
        slices = [torch.movedim(x, self.axis, 0) for x in volumes]
        n, h, w = slices[0].shape

        def block(start, stop):
            return fn(*(x[start:stop] for x in slices))

        return torch.cat(map_blocks(block, block_ranges(n, h * w, slices[0].device)), dim=-1)

    @cached_property
    def norm255_f(self):
        return _norm255(self.f)

    @cached_property
    def edge_metrics(self):
        return self.per_slice(_edge_metrics, self.a, self.b, self.f)


def ssim(v: _Volumes):
    """SSIM: (SSIM3D(A, F) + SSIM3D(B, F)) / 2 with ``ssim3d`` (11^3 Gaussian, zero padding)."""
    return ssim3d(torch.stack([v.a, v.b])[:, None], v.f[None, None]), None


def qabf(v: _Volumes):
    """Qabf: Xydeas-Petrovic per slice (Tg .9994, kg -15, Dg .5, Ta .9879, ka -22, Da .8) on [0, 1]
    data, sum(Q_AF g_A + Q_BF g_B) / sum(g_A + g_B) per slice, mean over all slices."""
    per_slice = v.edge_metrics[0]
    return per_slice.mean(), per_slice.numel()


def nabf(v: _Volumes):
    """Nabf: the reference's Qabf-style artifact measure per slice (Tg .9999, kg -19, Dg .5,
    Ta .9995, ka -22, Da .5, Lg 1.5, Td 2, wt_min .001), mean over slices; not the literature's."""
    per_slice = v.edge_metrics[1]
    return per_slice.mean(), per_slice.numel()


def mi(v: _Volumes):
    """MI: per slice, Parzen NMI = (2 I + 1e-10) / (H1 + H2 + 1e-10) (128 centres on [0, 255],
    sigma 0.1, Norm255 volumes) of (A, F) and (B, F) averaged, mean over slices; 1 on empty slices."""
    bounds = [(x.min(), x.max()) for x in (v.a, v.b, v.f)]  # Norm255 is over the whole volume

    def flat(*blocks):
        return _parzen_nmi(*(_norm255(x, lo_hi).reshape(len(x), -1) for x, lo_hi in zip(blocks, bounds)))

    per_slice = v.per_slice(flat, v.a, v.b, v.f)
    return per_slice.mean(), per_slice.numel()


def scd(v: _Volumes):
    """SCD: (corr(F - B, A) + corr(F - A, B)) / 2 over the whole volume -- a mean, not the usual
    sum -- with +1e-10 in the numerator and denominator of each correlation."""
    r1, r2 = scd_correlations(v.a, v.b, v.f, None, eps=1e-10)
    return (r1 + r2) / 2, None


def vif(v: _Volumes):
    """VIF: 3D multiscale pixel VIF (cubic Gaussian windows 17/9/5/3, sd N/5, 'valid', decimation
    by 2, sigma_n^2 = 2) on [0, 1] data, mean of VIF(A->F) and VIF(B->F); NaN if any dimension < 41
    or a source is constant."""
    if min(v.f.shape) < VIF_MIN_SIZE:
        return torch.tensor(math.nan), None
    num, den = vif_num_den(torch.stack([v.a, v.b]), v.f[None], 3)
    return (num / den).mean(), None


def ag(v: _Volumes):
    """AG: mean of sqrt((dx^2 + dy^2 + dz^2) / 3), forward differences of Norm255(F) on the common
    (D-1, H-1, W-1) grid."""
    x = v.norm255_f
    corner = x[:-1, :-1, :-1]

    def block_sum(corner, x1, y1, z1):
        dx, dy, dz = x1 - corner, y1 - corner, z1 - corner
        return torch.sqrt((dx * dx + dy * dy + dz * dz) / 3).sum()

    total = blockwise_sum(block_sum, (corner, x[1:, :-1, :-1], x[:-1, 1:, :-1], x[:-1, :-1, 1:]), 0)
    return total / corner.numel(), None


def sd(v: _Volumes):
    """SD: population standard deviation of F (on [0, 1])."""
    # Centred on a sample of F (SD is shift-invariant): exactly 0 for a constant, less cancellation.
    return (v.f - v.f.reshape(-1)[0]).std(correction=0), None


def sf(v: _Volumes):
    """SF: ``spatial_frequency_3d(F)`` on [0, 1]."""
    return spatial_frequency_3d(v.f), None


def rsfe(v: _Volumes):
    """rSFe: (SF(F) - SFr) / SFr, SFr the same formula on max(|diff A|, |diff B|) per axis;
    NaN when both sources are constant (SFr = 0)."""
    reference = torch.sqrt(sum(mean_square_step(v.a, d, other=v.b) for d in range(3)))
    if reference == 0:
        return torch.tensor(math.nan), None
    return (spatial_frequency_3d(v.f) - reference) / reference, None


def en(v: _Volumes):
    """EN: Shannon entropy in bits of the 255-bin histogram of Norm255(F) on [0, 255] (torch.histc
    binning), with the reference's -sum p log2(p + 1e-7)."""
    bins = torch.floor(v.norm255_f).clamp(max=254).long().reshape(-1)
    p = torch.bincount(bins, minlength=255).to(v.f.dtype) / bins.numel()
    return entropy(p, -1, eps=1e-7, base=2), None


def psnr(v: _Volumes):
    """PSNR: mean over the sources of 10 log10(1 / mse(source, F)) on [0, 1]; +inf when F equals both."""
    values = [10 * torch.log10(1 / torch.mean((src - v.f) ** 2)) for src in (v.a, v.b)]
    return (values[0] + values[1]) / 2, None


METRICS = {
    "SSIM": ssim, "Qabf": qabf, "MI": mi, "SCD": scd, "VIF": vif, "AG": ag, "SD": sd, "SF": sf,
    "rSFe": rsfe, "EN": en, "PSNR": psnr, "Nabf": nabf,
}


def compute(a, b, f, axis, names):
    """Values (0-d tensors) and slices used (int for slice-wise metrics, else None) of ``names``."""
    volumes = _Volumes(a, b, f, axis)
    values, used = {}, {}
    for name in names:
        values[name], used[name] = METRICS[name](volumes)
    return values, used
