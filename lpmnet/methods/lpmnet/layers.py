"""LPM-Net's fused CPU kernels (``csrc/layers.cpp``, compiled into lpmnet's kernel module by
:mod:`lpmnet.ops.build`): their Python bindings beside their pure-PyTorch references.

::

    fused_window_mamba(x, order, window, eps, params)  # LayerNorm + Mamba over windows, one layer
    merge_views(views, maximum=True)                  # voxel-wise max/min of the three views
    fused_cfc_head(h, w4, fc_weight, fc_bias)         # the CfC head

LPM-Net's training and inference on a CPU use them where they are usable (``*_usable``);
``scan_backend="torch"`` runs the composed layers of :mod:`lpmnet.methods.lpmnet.network` instead. The
references (``window_mamba_ref``, ``merge_views_ref``, ``cfc_head_ref``) are the same layers written
plainly in PyTorch, with the kernels' arguments: what the tests compare the kernels with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lpmnet.ops import cpu
from lpmnet.ops.causal_conv1d import causal_conv1d_ref
from lpmnet.ops.selective_scan import selective_scan_ref

__all__ = [
    "fused_window_mamba_usable",
    "fused_window_mamba",
    "window_mamba_ref",
    "merge_views",
    "merge_views_ref",
    "fused_cfc_head_usable",
    "fused_cfc_head",
    "cfc_head_ref",
]

# ---- the fused windowed Mamba layer ---------------------------------------------------------


def fused_window_mamba_usable(x, params, backend="auto") -> bool:
    """Whether :func:`fused_window_mamba` runs here: CPU float32/float64 tensors of one dtype and the
    C++ kernel built. backend "torch" or "cuda" asks for the composed layer; "cpu" raises where the
    kernel is unavailable."""
    return backend in ("auto", "cpu") and _fused_cpu_usable((x, *params), strict=backend == "cpu")


def _fused_cpu_usable(tensors, strict=False) -> bool:
    """Whether LPM-Net's fused CPU kernels take these tensors (None entries ignored): all on the CPU,
    one dtype, float32 or float64, and the C++ module built (strict: or raise why it is not)."""
    tensors = [t for t in tensors if t is not None]
    if any(t.device.type != "cpu" or t.dtype != tensors[0].dtype for t in tensors):
        return False
    return tensors[0].dtype in (torch.float32, torch.float64) and cpu.module(strict=strict) is not None


def _fused_forward(x, order, window, eps, channels_first_out, *params):
    n, tokens, c = x.shape
    out = x.new_empty(n, c, tokens).transpose(1, 2) if channels_first_out else x.new_empty(n, tokens, c)
    cpu.module(strict=True).window_mamba_fwd(x, order, window, eps, *params, out)
    return out


class _CpuWindowMamba(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, order, window, eps, channels_first_out, *params):
        ctx.save_for_backward(x, order, *params)
        ctx.window, ctx.eps = window, eps
        return _fused_forward(x, order, window, eps, channels_first_out, *params)

    @staticmethod
    def backward(ctx, dout):
        x, order, *params = ctx.saved_tensors
        grads = cpu.module(strict=True).window_mamba_bwd(x, order, ctx.window, ctx.eps, *params, dout)
        return (grads[0], None, None, None, None, *grads[1:])


def fused_window_mamba(x, order, window, eps, params, channels_first_out=False):
    """One windowed Mamba layer of LPM-Net (LayerNorm + Mamba block over windows) in one C++ kernel.

    x: (slices, h*w, C) tokens of each slice, any strides; order: (h*w,) int64, the flat pixel of
    each token, window after window (the Swin shift included), ``window`` tokens per window; params:
    LayerNorm weight and bias, in_proj weight (2 d_inner, C) and bias (or None), conv1d weight
    (d_inner, width) and bias (or None), x_proj weight, dt_proj weight and bias, A = -exp(A_log),
    D, out_proj weight and bias (or None), each contiguous in x's dtype; dt goes through softplus
    as in Mamba. Returns (slices, h*w, C) in pixel order, stored as (slices, C, h*w) when
    ``channels_first_out`` (the layout of the next 2D convolution or merge). The numbers are those
    of the composed layer (``scan_backend="torch"``), which the tests compare it with in float64;
    the backward recomputes each window's forward, so only the layer's input is kept.
    """
    args = (x, order, int(window), float(eps), bool(channels_first_out), *params)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, *params)):
        return _CpuWindowMamba.apply(*args)
    return _fused_forward(*args)


def window_mamba_ref(x, order, window, eps, params):
    """:func:`fused_window_mamba` composed in plain PyTorch (any device, autograd), with the reference
    scan and convolution: the windows gathered by ``order``, LayerNorm, Mamba's in_proj, causal conv1d +
    SiLU, x_proj, dt_proj (softplus inside the scan), selective scan with the D skip and the SiLU(z) gate,
    out_proj, scattered back. Returns (slices, h*w, C) in pixel order."""
    ln_w, ln_b, w_in, b_in, conv_w, conv_b, w_x, w_dt, b_dt, A, D, w_out, b_out = params
    n, tokens, c = x.shape
    d_inner, rank, d_state = w_in.shape[0] // 2, w_dt.shape[1], A.shape[1]
    windows = x.index_select(1, order).reshape(-1, window, c)
    hidden = F.layer_norm(windows, (c,), ln_w, ln_b, eps)
    xz = F.linear(hidden, w_in, b_in)
    u, z = xz[..., :d_inner], xz[..., d_inner:]
    u = causal_conv1d_ref(u.transpose(1, 2), conv_w, conv_b, activation="silu")
    dt, B, C = F.linear(u.transpose(1, 2), w_x).split([rank, d_state, d_state], dim=-1)
    delta = F.linear(dt, w_dt).transpose(1, 2)
    y = selective_scan_ref(u, delta, A, B.transpose(1, 2), C.transpose(1, 2), D=D, z=z.transpose(1, 2),
                           delta_bias=b_dt, delta_softplus=True)
    out = F.linear(y.transpose(1, 2), w_out, b_out).reshape(n, tokens, c)
    return out.index_select(1, torch.argsort(order))


# ---- the merge of the views ------------------------------------------------------------------


class _CpuMergeViews(torch.autograd.Function):
    @staticmethod
    def forward(ctx, maximum, *views):
        merged, which = cpu.module(strict=True).merge_views_fwd(list(views), maximum)
        ctx.save_for_backward(which)
        ctx.mark_non_differentiable(which)
        return merged

    @staticmethod
    def backward(ctx, grad):
        (which,) = ctx.saved_tensors
        views = len(ctx.needs_input_grad) - 1
        return (None, *cpu.module(strict=True).merge_views_bwd(grad, which, views))


def merge_views(views, maximum=True):
    """Voxel-wise maximum (or minimum) of same-shaped tensors, contiguous, with the gradient routed to
    the view that gave each voxel (the first one on ties; a chain of torch.maximum splits ties). One
    pass each way on CPU float tensors where the C++ kernel is built; torch.maximum elsewhere."""
    views = list(views)
    if not _fused_cpu_usable(views):
        return merge_views_ref(views, maximum)
    if torch.is_grad_enabled() and any(v.requires_grad for v in views):
        return _CpuMergeViews.apply(bool(maximum), *views)
    return cpu.module(strict=True).merge_views_fwd(views, bool(maximum))[0]


def merge_views_ref(views, maximum=True):
    """The voxel-wise maximum (or minimum) of the views as a chain of torch.maximum (torch.minimum)."""
    views = list(views)
    pick = torch.maximum if maximum else torch.minimum
    merged = views[0]
    for view in views[1:]:
        merged = pick(merged, view)
    return merged


# ---- the CfC head ----------------------------------------------------------------------------


class _CpuCfCHead(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, w4, fc_weight, fc_bias, components):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(h, w4, fc_weight, fc_bias)
        return tuple(cpu.module(strict=True).cfc_head_fwd(h, w4, fc_weight, fc_bias, components))

    @staticmethod
    def backward(ctx, d_mixed, d_base=None, d_detail=None):
        h, w4, fc_weight, fc_bias = ctx.saved_tensors
        if d_mixed is None:
            d_mixed = h.new_zeros(h.shape[0], fc_weight.shape[0], h.shape[2])
        grads = [None if g is None else g.contiguous() for g in (d_mixed, d_base, d_detail)]
        dh, dw4, dfc_weight, dfc_bias = cpu.module(strict=True).cfc_head_bwd(h, w4, fc_weight, fc_bias, *grads)
        return dh, dw4, dfc_weight, dfc_bias, None


def fused_cfc_head_usable(h, params) -> bool:
    """Whether :func:`fused_cfc_head` runs here: CPU float32/float64 tensors of one dtype, kernel built."""
    return _fused_cpu_usable((h, *params))


def fused_cfc_head(h, w4, fc_weight, fc_bias, components=True):
    """LPM-Net's CfC head in one C++ kernel over blocks of voxels: h (B, C, V) contiguous, w4 the
    four projections [ff1; ff2; time_a; time_b] as (4C, C), fc (O, C) and its bias. Returns (mixed,
    base, detail) of (B, O, V), or (mixed,) without components, in [0, 1]; the backward recomputes
    each block, so only h is kept. The numbers are those of the composed head (tests, float64)."""
    args = (h.contiguous(), w4.contiguous(), fc_weight.contiguous(), fc_bias.contiguous(), bool(components))
    if torch.is_grad_enabled() and any(t.requires_grad for t in args[:4]):
        return _CpuCfCHead.apply(*args)
    return tuple(cpu.module(strict=True).cfc_head_fwd(*args))


def cfc_head_ref(h, w4, fc_weight, fc_bias, components=True):
    """:func:`fused_cfc_head` in plain PyTorch: the four projections ``w4`` = [ff1; ff2; time_a; time_b]
    of h (B, C, V), t = sigmoid(time_a + time_b), the mix ff1 (1 - t) + t ff2 and, with ``components``,
    ff1 and ff2 through fc and tanh(q)/2 + 1/2. Returns (mixed, base, detail) or (mixed,)."""
    ff1, ff2, time_a, time_b = torch.matmul(w4, h).chunk(4, dim=1)
    t = torch.sigmoid(time_a + time_b)

    def head(x):
        return torch.tanh(torch.matmul(fc_weight, x) + fc_bias[:, None]) / 2 + 0.5

    mixed = head(ff1 * (1 - t) + t * ff2)
    return (mixed, head(ff1), head(ff2)) if components else (mixed,)
