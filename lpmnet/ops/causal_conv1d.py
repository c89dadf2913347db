"""Mamba's causal depthwise conv1d (with the optional SiLU): the dispatcher, its CUDA and CPU bindings, and
the pure-PyTorch reference (:func:`causal_conv1d_ref`, F.conv1d: also the "torch" backend).

Public API::

    y = causal_conv1d(x, weight, bias=None, activation="silu", backend="auto")
    y = causal_conv1d_ref(x, weight, bias=None, activation="silu")

The backend used is logged once per process (logger ``lpmnet.ops.causal_conv1d``, INFO).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from lpmnet.errors import BackendUnavailableError
from lpmnet.ops import cpu
from lpmnet.ops.backends import BACKENDS, INSTALL_HINT, import_optional, log_once

__all__ = ["causal_conv1d", "causal_conv1d_ref"]

log = logging.getLogger(__name__)


class _CpuCausalConv1d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, silu):
        ctx.save_for_backward(x, weight, bias)
        ctx.silu = silu
        return cpu.module(strict=True).conv_fwd(x, weight, bias, silu)

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias = ctx.saved_tensors
        dx, dweight, dbias = cpu.module(strict=True).conv_bwd(x, weight, bias, ctx.silu, dy)
        return dx, dweight, dbias if bias is not None else None, None


def causal_conv1d(x, weight, bias=None, activation="silu", backend="auto"):
    """Depthwise causal conv1d of Mamba: x (batch, d, L), weight (d, width) or (d, 1, width).

    ``activation`` is "silu" (or "swish") or None. backend: "auto" | "cuda" (the causal-conv1d
    package's kernel, CUDA tensors) | "cpu" (the project's C++ kernel, CPU float32/float64; "auto"
    picks it on the CPU when it builds) | "torch" (F.conv1d, any device: the reference).

    The C++ kernel returns a (batch, d, L) tensor stored as (batch, L, d), the layout of Mamba's
    in_proj output and of the x_proj input, so neither side needs a transposing copy; the
    depthwise F.conv1d of oneDNN is slow at Mamba's widths (3-4 taps, tens of channels).
    """
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation must be None, 'silu' or 'swish', got {activation!r}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown causal_conv1d backend {backend!r}; choose one of {BACKENDS}")
    if weight.dim() == 3:  # nn.Conv1d layout (d, 1, width)
        weight = weight.squeeze(1)
    width = weight.shape[-1]
    name = "torch"
    if backend == "cuda" or (backend == "auto" and x.is_cuda):
        fn, why = import_optional("causal_conv1d")
        usable = x.is_cuda and fn is not None and 2 <= width <= 4 and x.dtype != torch.float64
        if usable:
            name = "cuda"
        elif backend == "cuda":
            problems = []
            if not x.is_cuda:
                problems.append(f"the tensors are on '{x.device.type}', not on a CUDA device")
            if fn is None:
                problems.append(f"causal_conv1d is not importable ({why})")
            if not 2 <= width <= 4:
                problems.append(f"the kernel supports widths 2..4, got {width}")
            if x.dtype == torch.float64:
                problems.append("the kernel supports float32/float16/bfloat16 only, got float64")
            raise BackendUnavailableError(
                "causal_conv1d backend='cuda' is unavailable: " + "; ".join(problems) + ". "
                f"To use the causal-conv1d CUDA kernel, {INSTALL_HINT}; or use backend='auto'."
            )
    elif backend == "cpu" or (backend == "auto" and x.device.type == "cpu"):
        usable = x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
        if backend == "cpu" and not usable:
            raise BackendUnavailableError(
                f"causal_conv1d backend='cpu' runs on CPU float32/float64 tensors only, got {x.dtype} on "
                f"'{x.device.type}'; use backend='auto' or 'torch'.")
        if usable and cpu.module(strict=backend == "cpu") is not None:
            name = "cpu"
    log_once(log, ("conv", name), "lpmnet.ops.causal_conv1d: causal_conv1d uses the '%s' backend on %s",
              name, x.device.type)
    if name == "cuda":
        return fn(x, weight, bias, activation=activation)
    if name == "cpu":
        silu = activation is not None
        args = (x, weight.contiguous(), None if bias is None else bias.contiguous())
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args):
            return _CpuCausalConv1d.apply(*args, silu)
        return cpu.module(strict=True).conv_fwd(*args, silu)
    return _conv_torch(x, weight, bias, activation)


def _conv_torch(x, weight, bias, activation):
    width = weight.shape[-1]
    L = x.shape[-1]
    out = F.conv1d(x, weight.unsqueeze(1), bias, padding=width - 1, groups=weight.shape[0])[..., :L]
    return F.silu(out) if activation is not None else out


def causal_conv1d_ref(x, weight, bias=None, activation="silu"):
    """The pure-PyTorch causal conv1d (F.conv1d with width - 1 zeros of left padding, any device): what the
    "torch" backend runs and the reference the kernels are tested against. x (batch, d, L), weight
    (d, width) or (d, 1, width), activation "silu" (or "swish") or None."""
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation must be None, 'silu' or 'swish', got {activation!r}")
    if weight.dim() == 3:
        weight = weight.squeeze(1)
    return _conv_torch(x, weight, bias, activation)
