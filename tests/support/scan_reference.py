"""Plain sequential selective scan (a Python loop over time): the ground truth for the tests and
the baseline of benchmarks/bench_scan.py. Deliberately not part of the lpmnet package."""

import torch
import torch.nn.functional as F


def reference_selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                             delta_softplus=False):
    """mamba-ssm semantics, one time step at a time; differentiable with autograd.

    u, delta, z: (batch, d, L); A: (d, N); B, C: (batch, N, L); D, delta_bias: (d,).
    """
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, length = u.shape
    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        dt = delta[:, :, t, None]  # (batch, d, 1)
        h = torch.exp(dt * A) * h + dt * B[:, None, :, t] * u[:, :, t, None]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(u.shape)
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * F.silu(z)
    return y
