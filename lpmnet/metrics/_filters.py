"""Separable filtering, Sobel gradients and CPU blocking shared by both metric conventions.

Everything here is plain torch (any device, any floating dtype, differentiable). A 1D correlation is
computed as a sum of shifted, scaled views of the input instead of ``conv1d``/``conv3d``: with the
short kernels of the metrics this is several times faster on CPU (float64 convolutions have no
optimised CPU kernel) and needs no reshaping to put the filtered axis in a channel position.

On CPU, large arrays are processed in blocks of about ``CPU_BLOCK`` elements: a filter's partial sums
and an element-wise chain's temporaries then stay in cache and reuse freed heap memory instead of
faulting in fresh pages, which makes the metrics several times faster on a volume. Inside
``cpu_block_parallelism`` the blocks are spread over a pool of Python threads (torch releases the
GIL) while torch's own intra-op threads are set to one. On other devices every operation runs on
the whole array at once.
"""

from __future__ import annotations

import contextlib
import math
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

CPU_BLOCK = 1 << 16  # elements (512 KiB of float64): a few live blocks fit in L2 and L3

_lock = threading.Lock()
_worker = threading.local()
_pool: ThreadPoolExecutor | None = None
_pool_size = 1
_active = False


@contextlib.contextmanager
def cpu_block_parallelism(device: torch.device):
    """Run block loops on a pool of as many threads as torch had, with torch's intra-op threads at 1.

    Why: OpenMP workers spin-wait between parallel regions, and with thousands of small block
    operations on a shared machine that spinning starves the thread doing the work (runs became
    ten times slower on a busy 2-core host); independent blocks on separate threads do not spin.
    One caller at a time; no effect on other devices.
    """
    global _pool, _pool_size, _active
    if device.type != "cpu":
        yield
        return
    with _lock:
        threads = torch.get_num_threads()
        if threads > 1 and (_pool is None or _pool_size != threads):
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool, _pool_size = ThreadPoolExecutor(threads, thread_name_prefix="lpmnet-metrics"), threads
        torch.set_num_threads(1)
        _active = threads > 1
        try:
            yield
        finally:
            _active = False
            torch.set_num_threads(threads)


def _run_in_worker(fn, bounds):
    _worker.busy = True
    try:
        with torch.no_grad():  # grad mode is per thread; the caller had it off
            return fn(*bounds)
    finally:
        _worker.busy = False


def map_blocks(fn, ranges):
    """``[fn(start, stop) for start, stop in ranges]``, on the thread pool when one is active.

    Serial when autograd records (graph building is not thread-safe) and inside a pool worker
    (nested blocks would wait on their own pool).
    """
    if not _active or len(ranges) < 2 or torch.is_grad_enabled() or getattr(_worker, "busy", False):
        return [fn(start, stop) for start, stop in ranges]
    return list(_pool.map(lambda bounds: _run_in_worker(fn, bounds), ranges))


def block_ranges(n: int, item_elements: int, device: torch.device) -> list[tuple[int, int]]:
    """Consecutive ranges covering 0..n whose items hold about ``CPU_BLOCK`` elements together on
    CPU (at least one item each); a single range on other devices."""
    if device.type != "cpu":
        return [(0, n)]
    step = max(1, CPU_BLOCK // max(1, item_elements))
    return [(start, min(n, start + step)) for start in range(0, n, step)]


def blockwise_sum(fn, tensors, dim: int):
    """sum over blocks along ``dim`` of ``fn(*blocks)``, where ``fn`` returns a reduction of its block
    that adds across blocks (e.g. a sum over ``dim``). ``tensors`` have equal size along ``dim``."""
    n = tensors[0].shape[dim]
    item = tensors[0].numel() // max(1, n)

    def block(start, stop):
        return fn(*(t.narrow(dim, start, stop - start) for t in tensors))

    return sum(map_blocks(block, block_ranges(n, item, tensors[0].device)))


def gaussian_taps(size: int, sigma: float) -> list[float]:
    """Normalised 1D Gaussian of odd ``size``; its outer products are the normalised 2D/3D windows
    (MATLAB ``fspecial('gaussian')`` and the reference 3D kernel factorise exactly)."""
    if size % 2 == 0:
        raise ValueError(f"Gaussian window size must be odd, not {size}")
    half = size // 2
    weights = [math.exp(-(i * i) / (2.0 * sigma * sigma)) for i in range(-half, half + 1)]
    total = math.fsum(weights)
    return [w / total for w in weights]


def _output_length(n, ntaps, same, step):
    if same:
        return n
    if n < ntaps:
        raise ValueError(f"a {ntaps}-tap window does not fit in {n} samples")
    return (n - ntaps) // step + 1


def _shifted_sum(x, taps, dim, same, step):
    ntaps = len(taps)
    count = _output_length(x.shape[dim], ntaps, same, step)
    if same:
        half = ntaps // 2
        x = F.pad(x, [0, 0] * (x.ndim - 1 - dim) + [half, half])
    index = [slice(None)] * x.ndim
    out = None
    for k, w in enumerate(taps):
        if w == 0:
            continue
        index[dim] = slice(k, k + (count - 1) * step + 1, step)
        term = x[tuple(index)]
        out = term * w if out is None else out.add_(term, alpha=w)
    return out


class _LinearFilter(torch.autograd.Function):
    """``apply(x)`` for a linear filter, with ``adjoint(grad)`` as its gradient.

    Why: recorded by autograd, a filter made of shifted slices keeps every tap's slice in the graph,
    and its backward zero-fills and adds one full-size tensor per tap: the loss of a 64^3 training
    step took 255 ms, 160 ms this way. The adjoint of a correlation is the correlation with the
    reversed taps, computed by the same blocked code as the forward.
    """

    @staticmethod
    def forward(ctx, x, apply, adjoint):
        ctx.adjoint = adjoint
        return apply(x)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        return ctx.adjoint(grad), None, None


def _records_filter_gradient(x, step):
    """Whether autograd must differentiate a filter of ``x``; the adjoint is written for ``step`` 1."""
    return step == 1 and x.requires_grad and torch.is_grad_enabled()


def _adjoint_input(grad, ntaps, dims, same):
    """The gradient of a filter's output, padded so the reversed taps' correlation gives the input's
    length: 'same' (odd taps) needs the forward's padding; 'valid' the full correlation's."""
    if same:
        return grad
    pad = [0] * (2 * grad.ndim)
    for dim in dims:
        pad[2 * (grad.ndim - 1 - dim):2 * (grad.ndim - dim)] = (ntaps - 1, ntaps - 1)
    return F.pad(grad, pad)


def correlate1d(x: torch.Tensor, taps, dim: int, *, same: bool = False, step: int = 1) -> torch.Tensor:
    """Correlate ``x`` with ``taps`` along ``dim``: ``out[i] = sum_k taps[k] * x[i*step + k]``.

    ``same=False`` is MATLAB's 'valid' (output length ``n - len(taps) + 1``, then every ``step``-th
    sample, which is how 'valid' filtering followed by ``[::2]`` decimation is computed without
    evaluating the discarded samples). ``same=True`` zero-pads ``len(taps) // 2`` on both sides so the
    output keeps the input length (odd ``taps``).
    """
    dim = dim % x.ndim
    if _records_filter_gradient(x, step):
        return _LinearFilter.apply(
            x, lambda t: correlate1d(t, taps, dim, same=same),
            lambda g: correlate1d(_adjoint_input(g, len(taps), [dim], same), taps[::-1], dim, same=same))
    n = x.shape[dim]
    n_out = _output_length(n, len(taps), same, step)
    if x.numel() <= CPU_BLOCK or x.device.type != "cpu":
        return _shifted_sum(x, taps, dim, same, step)
    # Lines along `dim` are independent: block over the other dimensions, never across `dim`.
    outer, inner = math.prod(x.shape[:dim]), math.prod(x.shape[dim + 1:])
    x3 = x.reshape(outer, n, inner)
    out = x3.new_empty(outer, n_out, inner)
    if n * inner <= CPU_BLOCK:
        def block(start, stop):
            out[start:stop] = _shifted_sum(x3[start:stop], taps, 1, same, step)

        map_blocks(block, block_ranges(outer, n * inner, x.device))
    else:
        tiles = [(o, i0, i1) for o in range(outer) for i0, i1 in block_ranges(inner, n, x.device)]

        def block(start, stop):
            for o, i0, i1 in tiles[start:stop]:
                out[o, :, i0:i1] = _shifted_sum(x3[o, :, i0:i1], taps, 0, same, step)

        map_blocks(block, [(k, k + 1) for k in range(len(tiles))])
    return out.reshape(*x.shape[:dim], n_out, *x.shape[dim + 1:])


def _correlate_planes(x, taps, same, step):
    """``taps`` along each of the last two dimensions; on CPU plane by plane, both passes in cache."""
    def both(t):
        return _shifted_sum(_shifted_sum(t, taps, t.ndim - 2, same, step), taps, t.ndim - 1, same, step)

    if x.numel() <= CPU_BLOCK or x.device.type != "cpu":
        return both(x)
    height, width = x.shape[-2:]
    planes = x.reshape(-1, height, width)
    out = planes.new_empty(planes.shape[0], _output_length(height, len(taps), same, step),
                           _output_length(width, len(taps), same, step))

    def block(start, stop):
        out[start:stop] = both(planes[start:stop])

    map_blocks(block, block_ranges(planes.shape[0], height * width, x.device))
    return out.reshape(*x.shape[:-2], *out.shape[-2:])


def gaussian_blur(x: torch.Tensor, size: int, sigma: float, ndim: int, *, same: bool = False,
                  step: int = 1) -> torch.Tensor:
    """Separable Gaussian filtering over the last ``ndim`` (>= 2) dimensions (see ``correlate1d``)."""
    if _records_filter_gradient(x, step):
        # symmetric taps: the filter is its own adjoint, but for the padding of 'valid'
        dims = range(x.ndim - ndim, x.ndim)
        return _LinearFilter.apply(
            x, lambda t: gaussian_blur(t, size, sigma, ndim, same=same),
            lambda g: gaussian_blur(_adjoint_input(g, size, dims, same), size, sigma, ndim, same=same))
    taps = gaussian_taps(size, sigma)
    for dim in range(x.ndim - ndim, x.ndim - 2):
        x = correlate1d(x, taps, dim, same=same, step=step)
    return _correlate_planes(x, taps, same, step)


def sobel(x: torch.Tensor, padding: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Sobel responses over the last two dimensions, same size as ``x``.

    Returns ``(v, h)``: ``v`` is the correlation with [[1, 2, 1], [0, 0, 0], [-1, -2, -1]] (a
    difference across rows), ``h`` the correlation with [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]] (a
    difference across columns). ``padding`` is ``"zeros"`` (MATLAB ``conv2(..., 'same')``) or
    ``"reflect"`` (mirror without repeating the edge, as Shreyamsha Kumar's ``per_extn_im_fn``).
    Each caller assigns the x/y roles and signs of its own reference.
    """
    if padding == "zeros":
        xp = F.pad(x, (1, 1, 1, 1))
    elif padding == "reflect":
        lead = x.shape[:-2]
        xp = F.pad(x.reshape(-1, *x.shape[-2:]), (1, 1, 1, 1), mode="reflect")
        xp = xp.reshape(*lead, *xp.shape[-2:])
    else:
        raise ValueError(f"unknown Sobel padding {padding!r}")
    v = correlate1d(correlate1d(xp, (1.0, 2.0, 1.0), -1), (1.0, 0.0, -1.0), -2)
    h = correlate1d(correlate1d(xp, (1.0, 2.0, 1.0), -2), (-1.0, 0.0, 1.0), -1)
    return v, h
