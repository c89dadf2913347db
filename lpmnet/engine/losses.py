"""LPM-Net training objective, and MambaDFuse's (:class:`MIFLoss`, at the end of the module).

Terms (F fused, A = x1, B = x2, all in [0, 1]):

- ``mse``:    alpha * (mse(A, F) + mse(B, F)) / 2
- ``ssim``:   beta * (1 - (SSIM3D(A, F) + SSIM3D(B, F)) / 2)
- ``base``:   (mse(A, base) + mse(B, base)) / 2                 -- "fixed" mode only
- ``detail``: 1 - (SSIM3D(A, detail) + SSIM3D(B, detail)) / 2
- ``sf``:     -gamma * lambda * SF3D(F)
- ``rec``:    mse(reconstruction, cat(A, B))                   -- when the model returns one

Two modes reproduce or repair the quirks of the original code:

- ``"faithful"`` (the default, so that training matches the published numbers): a loop bug in the
  original keeps only the last base/detail pair, so the base MSE term is dropped; and
  lambda = exp(0.002 * (step_in_epoch - max_epoch)) restarts every epoch (a saw-tooth).
- ``"fixed"``: both base and detail terms count, and lambda = exp(0.002 * (iteration - iterations)) is a
  global warm-up from about e^-6 to 1 over the whole run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lpmnet.metrics._filters import correlate1d, gaussian_blur
from lpmnet.metrics._shared import ssim_mean
from lpmnet.metrics.lpmnet_convention import (
    SSIM_C1,
    SSIM_C2,
    SSIM_SIGMA,
    SSIM_WINDOW,
    spatial_frequency_3d,
    ssim3d,
)
from lpmnet.precision import at_least_float32

LOSS_MODES = ("faithful", "fixed")
LOSS_TERMS = ("mse", "ssim", "base", "detail", "sf", "rec")


@dataclass(frozen=True)
class FusionLoss:
    """Callable objective; see the module docstring for the terms and modes."""

    mode: str = "faithful"
    alpha: float = 0.05
    beta: float = 1.0
    gamma: float = 0.5
    lambda_rate: float = 0.002

    def __post_init__(self):
        if self.mode not in LOSS_MODES:
            raise ValueError(f"loss mode must be one of {LOSS_MODES}, not {self.mode!r}")

    def sf_lambda(self, iteration, iterations, step_in_epoch, max_epoch):
        if self.mode == "faithful":
            return math.exp((step_in_epoch - max_epoch) * self.lambda_rate)
        return math.exp((iteration - iterations) * self.lambda_rate)

    def __call__(self, x1, x2, output, *, iteration, iterations, step_in_epoch, max_epoch):
        """Return (total loss tensor, dict of float terms incl. ``lambda`` and ``total``)."""
        fused = at_least_float32(output.fused)
        x1, x2 = at_least_float32(x1), at_least_float32(x2)
        terms = {
            "mse": self.alpha * (F.mse_loss(fused, x1) + F.mse_loss(fused, x2)) / 2,
            "ssim": self.beta * (1 - (ssim3d(x1, fused) + ssim3d(x2, fused)) / 2),
        }
        if output.detail is not None:
            detail = at_least_float32(output.detail)
            terms["detail"] = 1 - (ssim3d(x1, detail) + ssim3d(x2, detail)) / 2
            if self.mode == "fixed":
                base = at_least_float32(output.base)
                terms["base"] = (F.mse_loss(base, x1) + F.mse_loss(base, x2)) / 2
        lam = self.sf_lambda(iteration, iterations, step_in_epoch, max_epoch)
        terms["sf"] = -self.gamma * lam * spatial_frequency_3d(fused)
        if output.reconstruction is not None:
            terms["rec"] = F.mse_loss(at_least_float32(output.reconstruction), torch.cat([x1, x2], dim=1))
        total = sum(terms.values())
        logged = {name: float(terms[name].detach()) if name in terms else 0.0 for name in LOSS_TERMS}
        logged["lambda"] = lam
        logged["total"] = float(total.detach())
        return total, logged


# --- MambaDFuse's medical-fusion loss (models/loss_med.py: fusion_loss_med) -------------------------

MIF_TERMS = ("intensity", "gradient", "ssim")
# Sobel taps: a central difference along the gradient's axis, [1, 2, 1] smoothing across it.
SOBEL_DIFFERENCE = (-1.0, 0.0, 1.0)
SOBEL_SMOOTHING = (1.0, 2.0, 1.0)


def sobel_magnitude(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """Sum of the absolute Sobel responses over the last ``ndim`` (2 or 3) dimensions, zero padding.

    2D is MambaDFuse's ``Sobelxy``: |x (*) [[-1,0,1],[-2,0,2],[-1,0,1]]| + |x (*) [[1,2,1],[0,0,0],
    [-1,-2,-1]]| ((*) = correlation, as conv2d computes it, with zero padding 1). 3D is the project's
    extension: one response per axis, the central difference along it and [1, 2, 1] smoothing along
    each other axis, scaled by 1/4 for every smoothing beyond the first (the 3x3x3 Sobel operator
    divided by 4). The scaling keeps the 2D gain: a unit ramp along any axis gives 8 in 2D and 3D,
    and on a volume constant along one axis the other two responses are the 2D ones of its slices
    (away from the zero-padded ends), so the loss weights keep their meaning in 3D.
    """
    spatial = range(x.ndim - ndim, x.ndim)
    # Pad once, then "valid" correlations bring every axis back to its size.
    padded = F.pad(x, (1, 1) * ndim)
    scale = 0.25 ** (ndim - 2)
    magnitude = None
    for axis in spatial:
        response = padded
        for dim in spatial:
            response = correlate1d(response, SOBEL_DIFFERENCE if dim == axis else SOBEL_SMOOTHING, dim)
        term = response.abs()
        magnitude = term if magnitude is None else magnitude + term
    return magnitude * scale


class MIFLoss(nn.Module):
    """MambaDFuse's training loss for medical image fusion, on 2D or 3D batches.

    With A = x1, B = x2, F = fused, all (B, 1, H, W) images or (B, 1, D, H, W) volumes in [0, 1],
    means over every element of the batch:

        intensity = intensity_weight * mean |F - max(A, B)|
        gradient  = gradient_weight  * mean |grad F - max(grad A, grad B)|
        ssim      = ssim_weight      * (1 - (SSIM(A, F) + SSIM(B, F)) / 2)

    with the defaults 20, 100, 50 of ``fusion_loss_med`` (``models/loss_med.py``, the loss of the
    authors' MIF training; the same as SwinFusion's
    ``fusion_loss_med`` it is taken from, whose total-variation term has weight 0 and is left out).
    grad is :func:`sobel_magnitude` (|Sobel_x| + |Sobel_y|, zero padding). SSIM is the
    pytorch-ssim one the original uses: Gaussian window 11 x 11, sigma 1.5, zero padding 5 (output
    of the image's size), C1 = 0.01^2, C2 = 0.03^2, the mean of the map over the batch. The maxima
    are taken per pixel, and max(grad A, grad B) is of the gradient magnitudes.

    3D batches use the project's extension, not a definition of the authors' (whose method is 2D):
    the 3D Sobel magnitude of :func:`sobel_magnitude` and the 3D SSIM with the same window along
    the third axis (11^3 Gaussian, sigma 1.5, zero padding; the :func:`ssim3d` of LPM-Net's loss).
    On a volume constant along D both reduce to the 2D terms of its slices away from the ends.

    ``forward(x1, x2, fused)`` returns (total loss tensor, dict of the weighted terms and ``total``
    as floats). Computes in at least float32 with autocast off, as the project's other losses.
    """

    def __init__(self, intensity_weight=20.0, gradient_weight=100.0, ssim_weight=50.0):
        super().__init__()
        self.intensity_weight = intensity_weight
        self.gradient_weight = gradient_weight
        self.ssim_weight = ssim_weight

    def forward(self, x1, x2, fused):
        if x1.shape != x2.shape or x1.shape != fused.shape or x1.ndim not in (4, 5) or x1.shape[1] != 1:
            raise ValueError(f"expected three (B, 1, H, W) or (B, 1, D, H, W) tensors of one shape, got "
                             f"{tuple(x1.shape)}, {tuple(x2.shape)} and {tuple(fused.shape)}")
        ndim = x1.ndim - 2
        with torch.autocast(device_type=fused.device.type, enabled=False):
            a, b, f = (at_least_float32(t) for t in (x1, x2, fused))
            grad_a, grad_b, grad_f = sobel_magnitude(torch.cat([a, b, f]), ndim).chunk(3)

            def blur(t):
                return gaussian_blur(t, SSIM_WINDOW, SSIM_SIGMA, ndim, same=True)

            # Both references against the one fused image in a single pass: a leading axis of 2
            # broadcasts against 1 (ssim_mean), and the mean over it is (SSIM(A, F) + SSIM(B, F)) / 2
            # since both maps have the same size.
            mean_ssim = ssim_mean(torch.stack([a, b]), f[None], blur, SSIM_C1, SSIM_C2, ndim).mean()
            terms = {
                "intensity": self.intensity_weight * F.l1_loss(f, torch.maximum(a, b)),
                "gradient": self.gradient_weight * F.l1_loss(grad_f, torch.maximum(grad_a, grad_b)),
                "ssim": self.ssim_weight * (1 - mean_ssim),
            }
        total = sum(terms.values())
        logged = {name: float(terms[name].detach()) for name in MIF_TERMS}
        logged["total"] = float(total.detach())
        return total, logged


# --- ASFE-Fusion's loss (train.py of the original) -----------------------------------------------

ASFE_TERMS = ("intensity", "structure", "ssim")


def structure_tensor(x: torch.Tensor) -> torch.Tensor:
    """(B, 4, H, W) per-pixel [dx^2, dx dy, dx dy, dy^2] of a (B, C, H, W) batch, summed over its channels.

    Forward differences along W (dx) and H (dy), zero in the last column and row (ASFE-Fusion's)."""
    dx = F.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1))
    dy = F.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))
    dxdy = (dx * dy).sum(1, keepdim=True)
    return torch.cat([(dx * dx).sum(1, keepdim=True), dxdy, dxdy, (dy * dy).sum(1, keepdim=True)], dim=1)


class ASFELoss(nn.Module):
    """ASFE-Fusion's training loss on (B, 1, H, W) batches, as its code computes it:

        intensity = 0.5 * ||F - (A + B) / 2||_2                     (the norm of the whole batch tensor)
        structure = 0.5 * log(1 + ||ST(F) - ST([A, B])||_F)         (:func:`structure_tensor`; the two
                                                                     inputs' tensors add up)
        ssim      = (1 - SSIM(F, A)) + (1 - SSIM(F, B))

    Neither norm is squared or averaged, so the terms grow with the batch and the image size. The
    original takes the SSIM terms with ``.item()``: they are constants without gradient, and only the
    first two terms train the network; ``ssim_gradient=True`` (the project's option, not the
    original's) keeps their gradient. SSIM: 11 x 11 Gaussian window, sigma 1.5, zero padding,
    C1 = 0.01^2, C2 = 0.03^2, the mean of the map (as :class:`MIFLoss`).
    """

    def __init__(self, intensity_weight=0.5, structure_weight=0.5, ssim_weight=1.0, ssim_gradient=False):
        super().__init__()
        self.intensity_weight = intensity_weight
        self.structure_weight = structure_weight
        self.ssim_weight = ssim_weight
        self.ssim_gradient = ssim_gradient

    def forward(self, x1, x2, fused):
        if x1.shape != x2.shape or x1.shape != fused.shape or x1.ndim != 4 or x1.shape[1] != 1:
            raise ValueError(f"expected three (B, 1, H, W) tensors of one shape, got {tuple(x1.shape)}, "
                             f"{tuple(x2.shape)} and {tuple(fused.shape)}")
        with torch.autocast(device_type=fused.device.type, enabled=False):
            a, b, f = (at_least_float32(t) for t in (x1, x2, fused))

            def blur(t):
                return gaussian_blur(t, SSIM_WINDOW, SSIM_SIGMA, 2, same=True)

            # SSIM(F, A) and SSIM(F, B), each the mean of its map over the batch.
            per_reference = ssim_mean(torch.stack([a, b]), f[None], blur, SSIM_C1, SSIM_C2, 2).flatten(1).mean(1)
            ssim_term = self.ssim_weight * (2 - per_reference.sum())
            if not self.ssim_gradient:
                ssim_term = ssim_term.detach()
            terms = {
                "intensity": self.intensity_weight * torch.linalg.vector_norm(f - (a + b) / 2),
                "structure": self.structure_weight * torch.log1p(torch.linalg.vector_norm(
                    structure_tensor(f) - structure_tensor(torch.cat([a, b], dim=1)))),
                "ssim": ssim_term,
            }
        total = sum(terms.values())
        logged = {name: float(terms[name].detach()) for name in ASFE_TERMS}
        logged["total"] = float(total.detach())
        return total, logged


# --- DC2Fusion's loss (train_diff.py + config_diff.py of the original) --------------------------------

DC2FUSION_TERMS = ("lncc", "ssim", "l1")
#: MONAI's LocalNormalizedCrossCorrelationLoss: box window, smoothing of the numerator and denominator.
LNCC_SMOOTH_NUMERATOR = 0.0
LNCC_SMOOTH_DENOMINATOR = 1e-5


def local_ncc_loss(pred, target, window=3):
    """MONAI's ``LocalNormalizedCrossCorrelationLoss(spatial_dims=3)``: minus the mean over all voxels of
    the squared local correlation of ``pred`` and ``target`` in a ``window``^3 box (zero padding), in [-1, 0]."""
    taps = (1.0,) * window
    volume = float(window ** 3)
    spatial = range(pred.ndim - 3, pred.ndim)

    def box(t):
        for dim in spatial:
            t = correlate1d(t, taps, dim, same=True)
        return t

    sums = box(torch.cat([target, pred, target * target, pred * pred, target * pred]))
    t_sum, p_sum, t2_sum, p2_sum, tp_sum = sums.chunk(5)
    t_avg, p_avg = t_sum / volume, p_sum / volume
    cross = tp_sum - p_avg * t_sum
    t_var = (t2_sum - t_avg * t_sum).clamp_min(0)
    p_var = (p2_sum - p_avg * p_sum).clamp_min(0)
    ncc = (cross * cross + LNCC_SMOOTH_NUMERATOR) / (t_var * p_var + LNCC_SMOOTH_DENOMINATOR)
    return -ncc.mean()


def ssim3d_valid(x, y):
    """MONAI's ``SSIMLoss(spatial_dims=3)`` SSIM: 11^3 Gaussian window, sigma 1.5, data range 1, k1 0.01,
    k2 0.03, over the valid region only (no padding), mean over the batch and the map."""
    def blur(t):
        return gaussian_blur(t, SSIM_WINDOW, SSIM_SIGMA, 3, same=False)

    return ssim_mean(x, y, blur, SSIM_C1, SSIM_C2, 3).mean()


class DC2FusionLoss(nn.Module):
    """DC2Fusion's training loss on (B, 1, D, H, W) volumes, with A = x1 (the MRI) and B = x2 (the PET):

        lncc = 2 LNCC(F, A) + 1 LNCC(F, B)            (:func:`local_ncc_loss`, each in [-1, 0])
        ssim = 2 (1 - SSIM(F, A)) + 1 (1 - SSIM(F, B))  (:func:`ssim3d_valid`)
        l1   = 2 mean|F - A| + 1 mean|F - B|

    The weights (alpha, beta, gamma per source) are the authors' defaults, which their README's
    command does not change. Volumes need at least 11 voxels along each axis (the SSIM window).
    """

    def __init__(self, lncc_weights=(2.0, 1.0), ssim_weights=(2.0, 1.0), l1_weights=(2.0, 1.0), lncc_window=3):
        super().__init__()
        self.lncc_weights = tuple(lncc_weights)
        self.ssim_weights = tuple(ssim_weights)
        self.l1_weights = tuple(l1_weights)
        self.lncc_window = lncc_window

    def forward(self, x1, x2, fused):
        if x1.shape != x2.shape or x1.shape != fused.shape or x1.ndim != 5 or x1.shape[1] != 1:
            raise ValueError(f"expected three (B, 1, D, H, W) tensors of one shape, got {tuple(x1.shape)}, "
                             f"{tuple(x2.shape)} and {tuple(fused.shape)}")
        if min(x1.shape[2:]) < SSIM_WINDOW:
            raise ValueError(f"DC2Fusion's SSIM needs at least {SSIM_WINDOW} voxels per axis, got {tuple(x1.shape[2:])}")
        with torch.autocast(device_type=fused.device.type, enabled=False):
            a, b, f = (at_least_float32(t) for t in (x1, x2, fused))
            sources = (a, b)
            terms = {
                "lncc": sum(w * local_ncc_loss(f, s, self.lncc_window) for w, s in zip(self.lncc_weights, sources)),
                "ssim": sum(w * (1 - ssim3d_valid(f, s)) for w, s in zip(self.ssim_weights, sources)),
                "l1": sum(w * F.l1_loss(f, s) for w, s in zip(self.l1_weights, sources)),
            }
        total = sum(terms.values())
        logged = {name: float(terms[name].detach()) for name in DC2FUSION_TERMS}
        logged["total"] = float(total.detach())
        return total, logged


# --- The losses of the method layer: any method trains with any loss that supports its dimension ---


@dataclass(frozen=True)
class TrainingLoss:
    """A loss the training engine can use for any method.

    ``build(**settings)`` -> ``compute(x1, x2, output, schedule)`` -> (total tensor, dict of floats
    with ``total`` and every name of ``terms``); ``output`` is what the network returned (a tensor or
    an object with ``.fused`` and possibly ``.detail``, ``.base``, ``.reconstruction``), ``schedule``
    the iteration's position (``iteration``, ``iterations``, ``step_in_epoch``, ``max_epoch``).
    ``dims``: the dimensions (2: slices, 3: volumes) it is defined for.
    """

    description: str
    terms: tuple[str, ...]
    dims: tuple[int, ...]
    build: callable


def _network_output(output):
    # Networks other than LPM-Net return the fused tensor alone: no components, no reconstruction.
    if isinstance(output, torch.Tensor):
        return _Output(output, None, None, None)
    return output


@dataclass(frozen=True)
class _Output:
    fused: torch.Tensor
    base: torch.Tensor | None
    detail: torch.Tensor | None
    reconstruction: torch.Tensor | None


def _lpmnet_loss(**settings):
    loss = FusionLoss(**settings)

    def compute(x1, x2, output, schedule):
        return loss(x1, x2, _network_output(output), **schedule)

    return compute


def _fused_only(loss_class):
    def build(**settings):
        loss = loss_class(**settings)

        def compute(x1, x2, output, schedule):
            return loss(x1, x2, _network_output(output).fused)

        return compute

    return build


def _lpmnet_and_mif_loss(mode="faithful", **mif_settings):
    lpmnet, mif = FusionLoss(mode=mode), MIFLoss(**mif_settings)
    # The MIF loss's share: its SSIM term then weighs as LPM-Net's (beta; 1/50 with both losses' defaults).
    share = lpmnet.beta / mif.ssim_weight

    def compute(x1, x2, output, schedule):
        output = _network_output(output)
        total, terms = lpmnet(x1, x2, output, **schedule)
        mif_total, mif_terms = mif(x1, x2, output.fused)
        terms = {**terms, **{f"mif_{name}": share * value for name, value in mif_terms.items() if name != "total"}}
        total = total + share * mif_total
        terms["total"] = float(total.detach())
        return total, terms

    return compute


#: Weight of the background term of the "mif+background" loss (chosen on the held-out pairs, README).
BACKGROUND_WEIGHT = 100.0


def _mif_and_background_loss(background_weight=BACKGROUND_WEIGHT, **mif_settings):
    mif = MIFLoss(**mif_settings)

    def compute(x1, x2, output, schedule):
        fused = _network_output(output).fused
        total, terms = mif(x1, x2, fused)
        # Where both sources are 0 (outside a head normalised inside it) the fusion must be 0 too. MIF's
        # intensity term asks for it already, but averaged over the whole patch it lets the one-voxel ring at
        # the head's edge stay bright; averaged over the empty voxels alone it does not. |F|, not F: a network
        # whose output is not bounded below must not gain by going negative there.
        empty = (x1 <= 0) & (x2 <= 0)
        background = background_weight * (at_least_float32(fused).abs() * empty).sum() / empty.sum().clamp(min=1)
        total = total + background
        terms = {**terms, "background": float(background.detach()), "total": float(total.detach())}
        return total, terms

    return compute


LOSSES = {
    "lpmnet": TrainingLoss("LPM-Net's objective (FusionLoss: MSE, 3D SSIM, spatial-frequency reward, base/detail, "
                           "reconstruction)", (*LOSS_TERMS, "lambda"), (3,), _lpmnet_loss),
    "lpmnet+mif": TrainingLoss("ours: LPM-Net's objective plus MambaDFuse's MIF loss weighted 1/50 (its SSIM term then "
                               "weighs as LPM-Net's): the mean-like MSE and SSIM to both sources with the max-like "
                               "intensity and gradient targets", (*LOSS_TERMS, "lambda", *(f"mif_{t}" for t in MIF_TERMS)),
                               (3,), _lpmnet_and_mif_loss),
    "mif": TrainingLoss("MambaDFuse's MIF loss (MIFLoss: intensity vs the maximum, Sobel gradient, SSIM)",
                        MIF_TERMS, (2, 3), _fused_only(MIFLoss)),
    "mif+background": TrainingLoss("ours: MambaDFuse's MIF loss plus background_weight times the mean of |fusion| "
                                   "where both sources are 0 (or below)", (*MIF_TERMS, "background"), (2, 3),
                                   _mif_and_background_loss),
    "asfe": TrainingLoss("ASFE-Fusion's loss as coded (ASFELoss: intensity vs the mean, structure tensor, SSIM "
                         "without gradient unless ssim_gradient)", ASFE_TERMS, (2,), _fused_only(ASFELoss)),
    "dc2fusion": TrainingLoss("DC2Fusion's loss (DC2FusionLoss: LNCC, 3D SSIM and L1 against each source, weights "
                              "2 for the first and 1 for the second)", DC2FUSION_TERMS, (3,), _fused_only(DC2FusionLoss)),
}


def make_loss(name, dims, settings=None):
    """(compute, terms) of the loss ``name`` for a network of ``dims`` dimensions; settings go to its
    constructor. An unknown loss, a dimension it lacks or an unknown setting raises ValueError naming it."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(LOSSES)}")
    spec = LOSSES[name]
    if dims not in spec.dims:
        raise ValueError(f"loss {name!r} is defined for {' and '.join(f'{d}D' for d in spec.dims)} networks, "
                         f"not {dims}D ones")
    try:
        return spec.build(**(settings or {})), spec.terms
    except TypeError as err:
        raise ValueError(f"loss {name!r}: {err}") from None
