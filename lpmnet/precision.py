"""Precision policy shared by the model and the loss."""

import torch


def at_least_float32(t):
    """float16/bfloat16 -> float32, float32/float64 unchanged.

    SSM parameters and loss terms stay in (at least) float32 under half-precision autocast, as in
    mamba-ssm, while float64 runs (used by the tests) keep their precision.
    """
    return t.to(torch.promote_types(t.dtype, torch.float32))
