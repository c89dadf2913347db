"""LPM-Net training objective.

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

from lpmnet.metrics.lpmnet_convention import spatial_frequency_3d, ssim3d
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
