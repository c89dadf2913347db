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
    authors' MIF training, as ../shared/docs/baselines.md 2.2 reads it; the same as SwinFusion's
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
