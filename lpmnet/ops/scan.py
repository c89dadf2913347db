"""Selective scan (Mamba-1 SSM core) and Mamba's causal depthwise conv, with backend dispatch.

Public API::

    y = selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                       delta_softplus=False, backend="auto")
    y = causal_conv1d(x, weight, bias=None, activation="silu", backend="auto")
    available_backends()            # e.g. ["cpu", "torch"]
    resolve_backend(backend, device)  # -> "cuda" | "cpu" | "torch"

and LPM-Net's fused CPU kernels built from the same source (its training and inference on a CPU
use them; ``scan_backend="torch"`` runs the composed layers instead)::

    fused_window_mamba(x, order, window, eps, params)  # LayerNorm + Mamba over windows, one layer
    merge_views(views, maximum=True)                  # voxel-wise max/min of the three views
    fused_cfc_head(h, w4, fc_weight, fc_bias)         # the CfC head

``selective_scan`` has the semantics and layouts of mamba-ssm's ``selective_scan_fn``:
u, delta, z: (batch, d, L); A: (d, N) real; B, C: (batch, N, L); D, delta_bias: (d,).
``delta = softplus(delta + delta_bias)`` if ``delta_softplus`` (else ``delta + delta_bias``);
``h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t`` with ``h_{-1} = 0``;
``y_t = sum_n C_t,n h_t,n + D u_t``; ``y *= silu(z)`` when z is given. Returns y in u's dtype.

Backends:

* ``"cuda"``  - mamba-ssm's fused kernel (``mamba_ssm`` importable and CUDA tensors).
* ``"cpu"``   - the C++ kernel in ``lpmnet/ops/csrc/selective_scan_cpu.cpp`` (forward and backward,
  float32/float64), one module per CPU capability (AVX2, AVX512, ...), prebuilt when the package is
  installed or else built once per machine (:mod:`lpmnet.ops.build`).
* ``"torch"`` - pure PyTorch, any device: chunked log-depth (Hillis-Steele) scan with the state
  carried between chunks, batch processed in memory-bounded blocks; a hand-written backward
  (reverse scan, recomputing each block) keeps training memory bounded too.
* ``"auto"``  - cuda if possible, else cpu for CPU tensors, else torch.

The backend actually used is logged once per process (logger ``lpmnet.ops.scan``, INFO).
"""

from __future__ import annotations

import logging
import threading
import time

import torch
import torch.nn.functional as F

from lpmnet.ops import build
from lpmnet.errors import BackendUnavailableError

__all__ = [
    "selective_scan",
    "causal_conv1d",
    "available_backends",
    "resolve_backend",
    "cpu_kernel_info",
    "BACKENDS",
]

log = logging.getLogger(__name__)

BACKENDS = ("auto", "cuda", "cpu", "torch")
INSTALL_HINT = (
    "install a CUDA build of torch, then `pip install --no-build-isolation mamba-ssm causal-conv1d`"
)

_lock = threading.RLock()
_logged: set = set()


def _log_once(key, msg, *args, level=logging.INFO):
    with _lock:
        if key in _logged:
            return
        _logged.add(key)
    log.log(level, msg, *args)


# --------------------------------------------------------------------------------------------
# Optional CUDA packages (imported lazily, result cached)
# --------------------------------------------------------------------------------------------

_optional: dict = {}


def _import_optional(key):
    """Returns (function, None) or (None, reason) for 'mamba_ssm' / 'causal_conv1d'."""
    with _lock:
        if key in _optional:
            return _optional[key]
        try:
            if key == "mamba_ssm":
                from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as fn
            else:
                from causal_conv1d import causal_conv1d_fn as fn
            res = (fn, None)
        except Exception as exc:  # ImportError, or a broken CUDA extension (OSError, ...)
            res = (None, f"{type(exc).__name__}: {exc}".splitlines()[0])
        _optional[key] = res
        return res


def _mamba_problems() -> list:
    """Why mamba-ssm's CUDA scan cannot run in this process (empty list: it can)."""
    problems = []
    if not torch.cuda.is_available():
        problems.append(
            "torch.cuda is not available (torch %s is a %s build)"
            % (torch.__version__, "CUDA" if torch.version.cuda else "CPU-only")
        )
    fn, why = _import_optional("mamba_ssm")
    if fn is None:
        problems.append(f"mamba_ssm is not importable ({why})")
    return problems


def _mamba_reason():
    """None when mamba-ssm's CUDA scan can run here, else why not (one line)."""
    problems = _mamba_problems()
    return "; ".join(problems) if problems else None


# --------------------------------------------------------------------------------------------
# C++ CPU kernel (prebuilt with the package, else built once per machine: lpmnet.ops.build)
# --------------------------------------------------------------------------------------------

_cpu = {"tried": False, "module": None, "error": None, "seconds": None, "origin": None}


def _load_cpu_kernel(openmp=None):
    module, _cpu["origin"] = build.load(openmp)
    return module


def _first_error_line(exc: BaseException) -> str:
    """The first compiler error line of a failed build (gcc/clang 'file:line:col: error: ...')."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for pattern in ("error:", "error"):
        for ln in lines:
            low = ln.lower()
            if pattern in low and not low.startswith("error building extension"):
                return ln
    return lines[0] if lines else type(exc).__name__


def _cpu_module(strict: bool):
    """The compiled module, or None (strict=False) / BackendUnavailableError (strict=True)."""
    with _lock:
        if not _cpu["tried"]:
            _cpu["tried"] = True
            started = time.perf_counter()
            try:
                try:
                    _cpu["module"] = _load_cpu_kernel()
                except Exception as exc:
                    if not build.wants_openmp() or isinstance(exc, build.BuildLockTimeout):
                        raise
                    # e.g. a compiler without OpenMP support: a single-threaded kernel still
                    # beats the pure-torch scan.
                    log.warning("lpmnet.ops.scan: building the C++ kernel with -fopenmp failed (%s); "
                                "retrying without OpenMP (single-threaded kernel)",
                                _first_error_line(exc))
                    _cpu["module"] = _load_cpu_kernel(openmp=False)
            except Exception as exc:  # compiler missing, build error, import error
                _cpu["error"] = _first_error_line(exc)
                log.warning(
                    "lpmnet.ops.scan: building the C++ CPU selective-scan kernel failed; falling back "
                    "to the (slower) pure-torch scan. First compiler error: %s",
                    _cpu["error"],
                )
            # every attempt counts, a failed build too: a fusion leaves these seconds out of its own
            _cpu["seconds"] = time.perf_counter() - started
        module, error = _cpu["module"], _cpu["error"]
    if module is None and strict:
        raise BackendUnavailableError(
            "selective_scan backend='cpu' is unavailable: building the C++ kernel "
            f"{build.SOURCE.name} failed ({error}). It needs a C++17 compiler (g++ or clang++) and "
            "ninja (`pip install ninja`); use backend='torch' or 'auto' to run without it."
        )
    return module


def cpu_kernel_info() -> dict:
    """State of the C++ kernel: its module name, the capability, where it came from (prebuilt, cached,
    built), the seconds its load or build took, the build error (loads or builds it)."""
    _cpu_module(strict=False)
    return {
        "name": getattr(_cpu["module"], "__name__", None),
        "capability": build.capability(),
        "available": _cpu["module"] is not None,
        "origin": _cpu["origin"],
        "seconds": _cpu["seconds"],
        "error": _cpu["error"],
    }


def cpu_kernel_load() -> dict | None:
    """``{"origin", "seconds"}`` of this process's attempt to load (or build) the kernel, origin None when it
    failed; None before any attempt (loads nothing)."""
    with _lock:
        return None if _cpu["seconds"] is None else {"origin": _cpu["origin"], "seconds": _cpu["seconds"]}


# --------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------


def available_backends() -> list:
    """Concrete backends usable in this process ("cuda" needs a GPU and mamba-ssm).

    Note: this builds (or loads from the cache) the C++ CPU kernel.
    """
    names = []
    if _mamba_reason() is None:
        names.append("cuda")
    if _cpu_module(strict=False) is not None:
        names.append("cpu")
    names.append("torch")
    return names


def resolve_backend(backend: str = "auto", device="cpu") -> str:
    """Concrete backend ("cuda", "cpu" or "torch") for tensors on ``device``.

    An explicit backend that cannot run raises BackendUnavailableError.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown selective-scan backend {backend!r}; choose one of {BACKENDS}")
    dev = torch.device(device)
    if backend == "cuda":
        problems = []
        if dev.type != "cuda":
            problems.append(f"the tensors are on '{dev.type}', not on a CUDA device")
        problems += _mamba_problems()
        if problems:
            raise BackendUnavailableError(
                "selective_scan backend='cuda' is unavailable: " + "; ".join(problems) + ". "
                f"To use mamba-ssm's fused CUDA kernels, {INSTALL_HINT}, and pass CUDA tensors; "
                "or use backend='auto' (it picks 'cpu' or 'torch' where 'cuda' cannot run)."
            )
        return "cuda"
    if backend == "cpu":
        if dev.type != "cpu":
            raise BackendUnavailableError(
                f"selective_scan backend='cpu' runs on CPU tensors only, got '{dev.type}'; "
                "use backend='auto', 'cuda' or 'torch'."
            )
        _cpu_module(strict=True)
        return "cpu"
    if backend == "torch":
        return "torch"
    if dev.type == "cuda" and _mamba_reason() is None:
        return "cuda"
    if dev.type == "cpu" and _cpu_module(strict=False) is not None:
        return "cpu"
    return "torch"


def _auto_note(name, device) -> str:
    dev = torch.device(device)
    if name == "torch" and dev.type == "cuda":
        return f" ({_mamba_reason()}; for mamba-ssm's fused kernels, {INSTALL_HINT})"
    if name == "torch" and dev.type == "cpu" and _cpu["error"]:
        return f" (C++ kernel unavailable: {_cpu['error']})"
    return ""


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
    _log_once(
        ("scan", name),
        "lpmnet.ops.scan: selective_scan uses the '%s' backend on %s%s",
        name,
        u.device.type,
        _auto_note(name, u.device) if backend == "auto" else "",
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
    fn, _ = _import_optional("mamba_ssm")
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
        mod = _cpu_module(strict=True)
        y = mod.fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
        ctx.delta_softplus = delta_softplus
        return y

    @staticmethod
    def backward(ctx, dy):
        u, delta, A, B, C, D, z, delta_bias = ctx.saved_tensors
        mod = _cpu_module(strict=True)
        du, ddelta, dA, dB, dC, dD, dz, dbias = mod.bwd(
            u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, dy
        )
        return du, ddelta, dA, dB, dC, dD, dz, dbias, None


class _CpuCausalConv1d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, silu):
        ctx.save_for_backward(x, weight, bias)
        ctx.silu = silu
        return _cpu_module(strict=True).conv_fwd(x, weight, bias, silu)

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias = ctx.saved_tensors
        dx, dweight, dbias = _cpu_module(strict=True).conv_bwd(x, weight, bias, ctx.silu, dy)
        return dx, dweight, dbias if bias is not None else None, None


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
        y = _cpu_module(strict=True).fwd(*args, bool(delta_softplus))
    return y.to(u.dtype)


# ---- the fused windowed Mamba layer of LPM-Net -------------------------------------------


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
    return tensors[0].dtype in (torch.float32, torch.float64) and _cpu_module(strict=strict) is not None


def _fused_forward(x, order, window, eps, channels_first_out, *params):
    n, tokens, c = x.shape
    out = x.new_empty(n, c, tokens).transpose(1, 2) if channels_first_out else x.new_empty(n, tokens, c)
    _cpu_module(strict=True).window_mamba_fwd(x, order, window, eps, *params, out)
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
        grads = _cpu_module(strict=True).window_mamba_bwd(x, order, ctx.window, ctx.eps, *params, dout)
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


class _CpuMergeViews(torch.autograd.Function):
    @staticmethod
    def forward(ctx, maximum, *views):
        merged, which = _cpu_module(strict=True).merge_views_fwd(list(views), maximum)
        ctx.save_for_backward(which)
        ctx.mark_non_differentiable(which)
        return merged

    @staticmethod
    def backward(ctx, grad):
        (which,) = ctx.saved_tensors
        views = len(ctx.needs_input_grad) - 1
        return (None, *_cpu_module(strict=True).merge_views_bwd(grad, which, views))


def merge_views(views, maximum=True):
    """Voxel-wise maximum (or minimum) of same-shaped tensors, contiguous, with the gradient routed to
    the view that gave each voxel (the first one on ties; a chain of torch.maximum splits ties). One
    pass each way on CPU float tensors where the C++ kernel is built; torch.maximum elsewhere."""
    views = list(views)
    if not _fused_cpu_usable(views):
        pick = torch.maximum if maximum else torch.minimum
        merged = views[0]
        for view in views[1:]:
            merged = pick(merged, view)
        return merged
    if torch.is_grad_enabled() and any(v.requires_grad for v in views):
        return _CpuMergeViews.apply(bool(maximum), *views)
    return _cpu_module(strict=True).merge_views_fwd(views, bool(maximum))[0]


class _CpuCfCHead(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, w4, fc_weight, fc_bias, components):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(h, w4, fc_weight, fc_bias)
        return tuple(_cpu_module(strict=True).cfc_head_fwd(h, w4, fc_weight, fc_bias, components))

    @staticmethod
    def backward(ctx, d_mixed, d_base=None, d_detail=None):
        h, w4, fc_weight, fc_bias = ctx.saved_tensors
        if d_mixed is None:
            d_mixed = h.new_zeros(h.shape[0], fc_weight.shape[0], h.shape[2])
        grads = [None if g is None else g.contiguous() for g in (d_mixed, d_base, d_detail)]
        dh, dw4, dfc_weight, dfc_bias = _cpu_module(strict=True).cfc_head_bwd(h, w4, fc_weight, fc_bias, *grads)
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
    return tuple(_cpu_module(strict=True).cfc_head_fwd(*args))


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


# --------------------------------------------------------------------------------------------
# causal_conv1d
# --------------------------------------------------------------------------------------------


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
        fn, why = _import_optional("causal_conv1d")
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
        if usable and _cpu_module(strict=backend == "cpu") is not None:
            name = "cpu"
    _log_once(("conv", name), "lpmnet.ops.scan: causal_conv1d uses the '%s' backend on %s",
              name, x.device.type)
    if name == "cuda":
        return fn(x, weight, bias, activation=activation)
    if name == "cpu":
        silu = activation is not None
        args = (x, weight.contiguous(), None if bias is None else bias.contiguous())
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args):
            return _CpuCausalConv1d.apply(*args, silu)
        return _cpu_module(strict=True).conv_fwd(*args, silu)
    L = x.shape[-1]
    out = F.conv1d(x, weight.unsqueeze(1), bias, padding=width - 1, groups=weight.shape[0])[..., :L]
    return F.silu(out) if activation is not None else out
