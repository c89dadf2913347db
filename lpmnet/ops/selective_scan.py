"""The selective scan (Mamba-1 SSM core): the dispatcher, its CUDA, CPU and PyTorch bindings, and the
pure-PyTorch reference the kernels are tested against.

Public API::

    y = selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                       delta_softplus=False, backend="auto")
    y = selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False)

``selective_scan`` has the semantics and layouts of mamba-ssm's ``selective_scan_fn``:
u, delta, z: (batch, d, L); A: (d, N) real; B, C: (batch, N, L); D, delta_bias: (d,).
``delta = softplus(delta + delta_bias)`` if ``delta_softplus`` (else ``delta + delta_bias``);
``h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t`` with ``h_{-1} = 0``;
``y_t = sum_n C_t,n h_t,n + D u_t``; ``y *= silu(z)`` when z is given. Returns y in u's dtype.

Backends (:mod:`lpmnet.ops.backends`):

* ``"cuda"``  - mamba-ssm's fused kernel (``mamba_ssm`` importable and CUDA tensors).
* ``"cpu"``   - the C++ kernel in ``lpmnet/ops/csrc/selective_scan.cpp`` (forward and backward,
  float32/float64), one module per CPU capability (AVX2, AVX512, ...), prebuilt when the package is
  installed or else built once per machine (:mod:`lpmnet.ops.build`, :mod:`lpmnet.ops.cpu`).
* ``"torch"`` - pure PyTorch, any device: chunked log-depth (Hillis-Steele) scan with the state
  carried between chunks, batch processed in memory-bounded blocks; a hand-written backward
  (reverse scan, recomputing each block) keeps training memory bounded too.
* ``"auto"``  - cuda if possible, else cpu for CPU tensors, else torch.

:func:`selective_scan_ref` is the plain sequential scan (a Python loop over time, autograd for the
gradients): the ground truth of the tests and the baseline of benchmarks/bench_scan.py, not a backend.

The backend actually used is logged once per process (logger ``lpmnet.ops.selective_scan``, INFO).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from lpmnet.errors import BackendUnavailableError
from lpmnet.ops import cpu
from lpmnet.ops.backends import auto_note, import_optional, log_once, resolve_backend

__all__ = ["selective_scan", "selective_scan_ref"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# selective_scan
# --------------------------------------------------------------------------------------------


def selective_scan(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    backend="auto",
):
    """Mamba-1 selective scan; see the module docstring. Returns y (batch, d, L) in u's dtype."""
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    name = resolve_backend(backend, u.device)
    if name == "cuda" and u.dtype == torch.float64:
        if backend == "cuda":
            raise BackendUnavailableError(
                "selective_scan backend='cuda': mamba-ssm's kernel supports float32/float16/"
                "bfloat16 only, got float64; use backend='torch' for float64 on the GPU."
            )
        name = "torch"
    log_once(
        log,
        ("scan", name),
        "lpmnet.ops.selective_scan: selective_scan uses the '%s' backend on %s%s",
        name,
        u.device.type,
        auto_note(name, u.device) if backend == "auto" else "",
    )
    if name == "cuda":
        return _scan_cuda(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if name == "cpu":
        return _scan_cpu(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return _scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


def _check_shapes(u, delta, A, B, C, D, z, delta_bias):
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, d, L), got {tuple(u.shape)}")
    batch, dim, L = u.shape
    if A.is_complex() or A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"selective_scan: A must be real (d={dim}, N), got {tuple(A.shape)}")
    N = A.shape[1]
    expected = {"delta": (delta, (batch, dim, L)), "B": (B, (batch, N, L)), "C": (C, (batch, N, L)),
                "z": (z, (batch, dim, L)), "D": (D, (dim,)), "delta_bias": (delta_bias, (dim,))}
    for name, (t, shape) in expected.items():
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"selective_scan: {name} must have shape {shape}, got {tuple(t.shape)}")
        if t is not None and t.device != u.device:
            raise ValueError(f"selective_scan: {name} is on {t.device}, u on {u.device}")
    if A.device != u.device:
        raise ValueError(f"selective_scan: A is on {A.device}, u on {u.device}")


def _scan_cuda(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    fn, _ = import_optional("mamba_ssm")
    dt = u.dtype
    # mamba-ssm's kernel wants delta/B/C/z in u's dtype and A/D/delta_bias in float32
    # (no-ops for the usual inputs).
    return fn(
        u,
        delta.to(dt),
        A.float(),
        B.to(dt),
        C.to(dt),
        D=None if D is None else D.float(),
        z=None if z is None else z.to(dt),
        delta_bias=None if delta_bias is None else delta_bias.float(),
        delta_softplus=bool(delta_softplus),
    )


# ---- cpu ----------------------------------------------------------------------------------


class _CpuSelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        mod = cpu.module(strict=True)
        y = mod.fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
        ctx.delta_softplus = delta_softplus
        return y

    @staticmethod
    def backward(ctx, dy):
        u, delta, A, B, C, D, z, delta_bias = ctx.saved_tensors
        mod = cpu.module(strict=True)
        du, ddelta, dA, dB, dC, dD, dz, dbias = mod.bwd(
            u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, dy
        )
        return du, ddelta, dA, dB, dC, dD, dz, dbias, None



def _compute_dtype(t):
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _scan_cpu(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    ct = _compute_dtype(u)
    # Casts are no-ops for matching dtypes; autograd routes gradients back through them.
    args = (
        u.to(ct),
        delta.to(ct),
        A.to(ct).contiguous(),
        B.to(ct),
        C.to(ct),
        None if D is None else D.to(ct).contiguous(),
        None if z is None else z.to(ct),
        None if delta_bias is None else delta_bias.to(ct).contiguous(),
    )
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args):
        y = _CpuSelectiveScan.apply(*args, bool(delta_softplus))
    else:  # inference: no autograd bookkeeping, nothing saved
        y = cpu.module(strict=True).fwd(*args, bool(delta_softplus))
    return y.to(u.dtype)


# ---- torch --------------------------------------------------------------------------------

# Working-set bound (bytes) of one batch block of the torch backend: the chunk tensors
# (block, d, chunk, N), about 8 alive at once in the backward pass. On the CPU blocks that stay
# in cache are fastest; on a GPU large blocks keep kernel launches few.
TORCH_BLOCK_BYTES = {"cpu": 16 * 2**20, "cuda": 1024 * 2**20}


def _torch_chunk(device) -> int:
    # Log-depth scans pay log2(chunk) passes per step; on the CPU short chunks (less work) win,
    # on a GPU long ones (fewer kernel launches).
    return 64 if torch.device(device).type == "cuda" else 32


def _inclusive_scan(a, x):
    """Hillis-Steele scan of h_t = a_t h_{t-1} + x_t along dim -2 (h_{-1} = 0).

    Returns (prod of a up to t, h_t). Only products of decays appear: numerically stable.
    """
    T = a.shape[-2]
    k = 1
    while k < T:
        x = torch.cat([x[..., :k, :], torch.addcmul(x[..., k:, :], a[..., k:, :], x[..., :-k, :])], dim=-2)
        a = torch.cat([a[..., :k, :], a[..., k:, :] * a[..., :-k, :]], dim=-2)
        k *= 2
    return a, x


def _chunk_terms(u, dt, A, B, s, e):
    """Decays a = exp(dt A) and inputs x = dt u B of steps s:e, each (b, d, T, N)."""
    dl = dt[:, :, s:e, None]
    a = torch.exp(dl * A[:, None, :])
    x = (dl * u[:, :, s:e, None]) * B[:, None, :, s:e].transpose(-1, -2)
    return a, x


def _chunk_states(u, dt, A, B, s, e, h0):
    """States h_t (b, d, T, N) of steps s:e given the state h0 (b, d, 1, N) before step s."""
    a, x = _chunk_terms(u, dt, A, B, s, e)
    P, H = _inclusive_scan(a, x)
    return a, torch.addcmul(H, P, h0)


def _inclusive_scan_(a, x, tmp):
    """In-place _inclusive_scan (no autograd): a, x (..., T, N) become (prod a, h); tmp is
    scratch of the same shape (fewer allocations: large CPU allocations are expensive)."""
    T = a.shape[-2]
    k = 1
    while k < T:
        t = tmp[..., : T - k, :]
        torch.mul(a[..., k:, :], x[..., :-k, :], out=t)
        x[..., k:, :].add_(t)
        torch.mul(a[..., k:, :], a[..., :-k, :], out=t)
        a[..., k:, :].copy_(t)
        k *= 2


def _ssm_forward_block(u, dt, A, B, C, chunk, keep_states=False):
    """sum_n C h (b, d, L) of one batch block; u, dt (b, d, L), A (d, N), B, C (b, N, L).
    No autograd (runs inside _TorchSSM); chunk buffers are reused across chunks.

    With keep_states, returns the state entering every chunk instead (for the backward pass).
    """
    b, d, L = u.shape
    N = A.shape[-1]
    Bt = B.transpose(1, 2).unsqueeze(1)  # (b, 1, L, N)
    Ct = C.transpose(1, 2).unsqueeze(1)
    dl = dt.unsqueeze(-1)
    du = (dt * u).unsqueeze(-1)
    A_ = A.unsqueeze(1)  # (d, 1, N)
    T = min(chunk, L)
    a_buf = u.new_empty(b, d, T, N)
    x_buf = torch.empty_like(a_buf)
    tmp = torch.empty_like(a_buf)
    h = u.new_zeros(b, d, 1, N)
    y = None if keep_states else u.new_empty(b, d, L)
    h0s = []
    for s in range(0, L, chunk):
        e = min(L, s + chunk)
        n = e - s
        a, x, tm = a_buf[:, :, :n], x_buf[:, :, :n], tmp[:, :, :n]
        if keep_states:
            h0s.append(h.clone())
        torch.mul(dl[:, :, s:e], A_, out=a)
        a.exp_()
        torch.mul(du[:, :, s:e], Bt[:, :, s:e], out=x)
        _inclusive_scan_(a, x, tm)
        x.addcmul_(a, h)
        h.copy_(x[:, :, -1:])
        if not keep_states:
            torch.mul(x, Ct[:, :, s:e], out=tm)
            y[:, :, s:e] = tm.sum(-1)
    return h0s if keep_states else y


def _ssm_backward_block(u, dt, A, B, C, dy, chunk):
    """Gradients (du, ddt, dA, dB, dC) of one batch block, chunk by chunk in reverse.

    g_t = dL/dh_t obeys the reverse recurrence g_t = dy_t C_t + a_{t+1} g_{t+1}, scanned like the
    forward one on time-flipped chunks, with g and a carried from the following chunk.
    """
    L = u.shape[-1]
    h0s = _ssm_forward_block(u, dt, A, B, C, chunk, keep_states=True)
    du, ddt = torch.empty_like(u), torch.empty_like(dt)
    dB, dC = torch.empty_like(B), torch.empty_like(C)
    dA = torch.zeros_like(A)
    At = A[:, None, :]
    g_next = a_next = None
    starts = list(range(0, L, chunk))
    for ci in reversed(range(len(starts))):
        s = starts[ci]
        e = min(L, s + chunk)
        h0 = h0s[ci]
        a, H = _chunk_states(u, dt, A, B, s, e, h0)
        Hprev = torch.cat([h0, H[:, :, :-1]], dim=2)  # h_{t-1}
        Bt = B[:, None, :, s:e].transpose(-1, -2)  # (b, 1, T, N)
        Ct = C[:, None, :, s:e].transpose(-1, -2)
        dyc = dy[:, :, s:e, None]  # (b, d, T, 1)
        nxt = a_next if a_next is not None else torch.ones_like(a[:, :, :1])
        a_shift = torch.cat([a[:, :, 1:], nxt], dim=2)  # a_{t+1}
        Pg, G = _inclusive_scan(a_shift.flip(2), (dyc * Ct).flip(2))
        G = G.flip(2)
        if g_next is not None:
            G = torch.addcmul(G, Pg.flip(2), g_next)
        dtc, uc = dt[:, :, s:e], u[:, :, s:e]
        gB = (G * Bt).sum(-1)  # (b, d, T)
        w = G * a * Hprev
        du[:, :, s:e] = gB * dtc
        ddt[:, :, s:e] = (w * At).sum(-1) + gB * uc
        dA += (w * dtc[..., None]).sum((0, 2))
        dB[:, :, s:e] = (G * (dtc * uc)[..., None]).sum(1).transpose(-1, -2)
        dC[:, :, s:e] = (dyc * H).sum(1).transpose(-1, -2)
        g_next, a_next = G[:, :, :1].clone(), a[:, :, :1].clone()
    return du, ddt, dA, dB, dC


class _TorchSSM(torch.autograd.Function):
    """Core scan (u, dt, A, B, C -> sum_n C h) in batch blocks, with a hand-written chunked
    backward: nothing but the inputs is kept between forward and backward, and no autograd graph
    of the chunk tensors is built (bounded memory, far fewer allocations than autograd)."""

    @staticmethod
    def forward(ctx, u, dt, A, B, C, chunk, block):
        ctx.save_for_backward(u, dt, A, B, C)
        ctx.chunk, ctx.block = chunk, block
        parts = zip(u.split(block), dt.split(block), B.split(block), C.split(block))
        ys = [_ssm_forward_block(ub, db, A, Bb, Cb, chunk) for ub, db, Bb, Cb in parts]
        return torch.cat(ys, dim=0) if len(ys) > 1 else ys[0]

    @staticmethod
    def backward(ctx, dy):
        u, dt, A, B, C = ctx.saved_tensors
        blk = ctx.block
        parts = zip(u.split(blk), dt.split(blk), B.split(blk), C.split(blk), dy.split(blk))
        grads = [_ssm_backward_block(ub, db, A, Bb, Cb, gb, ctx.chunk) for ub, db, Bb, Cb, gb in parts]
        du, ddt, dA, dB, dC = zip(*grads)
        dA = torch.stack(dA).sum(0) if len(dA) > 1 else dA[0]
        return (torch.cat(du), torch.cat(ddt), dA, torch.cat(dB), torch.cat(dC), None, None)


def _scan_torch(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                chunk=None, block=None):
    """Pure-PyTorch backend: softplus/bias, D and the silu gate through autograd, the scan
    itself through _TorchSSM."""
    dtype_in = u.dtype
    ct = _compute_dtype(u)
    u_, delta_, A_, B_, C_ = (t.to(ct) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta_ = delta_ + delta_bias.to(ct).unsqueeze(-1)
    if delta_softplus:
        delta_ = F.softplus(delta_)
    batch, d, L = u_.shape
    N = A_.shape[-1]
    if batch == 0 or L == 0:
        y = u_ * 0.0
    else:
        chunk = max(1, min(L, chunk or _torch_chunk(u.device)))
        if block is None:
            per_seq = d * chunk * N * u_.element_size() * 8
            budget = TORCH_BLOCK_BYTES["cuda" if u_.is_cuda else "cpu"]
            block = max(1, budget // per_seq)
        y = _TorchSSM.apply(u_, delta_, A_, B_, C_, chunk, min(block, batch))
    if D is not None:
        y = torch.addcmul(y, u_, D.to(ct).unsqueeze(-1))
    if z is not None:
        y = y * F.silu(z.to(ct))
    return y.to(dtype_in)


# ---- reference ----------------------------------------------------------------------------


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """mamba-ssm semantics, one time step at a time in the inputs' dtype; differentiable with autograd.
    The reference the backends are tested against (slow: a Python loop over time).

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
