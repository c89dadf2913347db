"""Selective scan backends against the plain sequential reference (lpmnet.ops.selective_scan.selective_scan_ref)."""

import logging
import math
import shutil
import time

import pytest
import torch
import torch.nn.functional as F

from lpmnet.errors import BackendUnavailableError  # noqa: E402
from lpmnet.ops import backends, cpu  # noqa: E402
from lpmnet.ops import selective_scan as scan  # noqa: E402
from lpmnet.ops.backends import available_backends, resolve_backend  # noqa: E402
from lpmnet.ops.causal_conv1d import causal_conv1d  # noqa: E402
from lpmnet.ops.selective_scan import selective_scan  # noqa: E402
from lpmnet.ops.selective_scan import selective_scan_ref as reference_selective_scan  # noqa: E402

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


@pytest.fixture(scope="module")
def cpu_kernel():
    """Builds (or loads from torch's extension cache) the C++ kernel once for this module."""
    t0 = time.perf_counter()
    info = cpu.cpu_kernel_info()
    info["fixture_seconds"] = time.perf_counter() - t0
    print(
        f"\n[lpmnet.ops.cpu] C++ kernel {info['name']} ({info['capability']}): "
        f"available={info['available']}, build/load {info['seconds'] or 0:.1f} s"
        + (f", error: {info['error']}" if info["error"] else "")
    )
    return info


@pytest.fixture(params=["cpu", "torch"])
def backend(request, cpu_kernel):
    if request.param == "cpu" and not cpu_kernel["available"]:
        pytest.skip(f"C++ kernel unavailable: {cpu_kernel['error']}")
    return request.param


def make_inputs(batch, dim, L, N, dtype=torch.float64, device="cpu", big_delta=False,
                D=True, z=True, bias=True, seed=0):
    """Realistic magnitudes: A = -exp(A_log), A_log = log(1..N); delta_bias = inverse softplus
    of dt in [1e-3, 0.1] (mamba-ssm init); raw delta ~ small noise, or ~5 (large steps)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    A_log = torch.log(torch.arange(1, N + 1, dtype=torch.float64)).repeat(dim, 1)
    dt = torch.exp(
        torch.rand(dim, generator=g, dtype=torch.float64) * (math.log(0.1) - math.log(1e-3))
        + math.log(1e-3)
    )
    t = {
        "u": rnd(batch, dim, L),
        "delta": 0.3 * rnd(batch, dim, L) + (5.0 if big_delta else 0.0),
        "A": -torch.exp(A_log),
        "B": rnd(batch, N, L),
        "C": rnd(batch, N, L),
        "D": 1.0 + 0.1 * rnd(dim) if D else None,
        "z": rnd(batch, dim, L) if z else None,
        "delta_bias": dt + torch.log(-torch.expm1(-dt)) if bias else None,
    }
    return {k: (v.to(device=device, dtype=dtype) if v is not None else None) for k, v in t.items()}


def leaf(inputs, dtype=None, device=None):
    return {
        k: (v.detach().to(dtype=dtype or v.dtype, device=device or v.device).requires_grad_()
            if v is not None else None)
        for k, v in inputs.items()
    }


def run_with_grads(fn, inputs, softplus, dy):
    y = fn(**inputs, delta_softplus=softplus)
    y.backward(dy.to(dtype=y.dtype, device=y.device))
    grads = {}
    for k, v in inputs.items():
        if v is not None:
            grads[k] = v.grad if v.grad is not None else torch.zeros_like(v)
    return y.detach(), grads


def assert_close_scaled(actual, expected, tol, name):
    """Relative-ish comparison: rtol=tol, atol=tol * max|expected| (gradients such as dA are sums
    over batch and time, so a purely relative test on tiny entries would be meaningless)."""
    expected = expected.to(device=actual.device, dtype=torch.float64)
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(actual.double(), expected, rtol=tol, atol=tol * scale, msg=lambda m: f"{name}: {m}")


CASES = {
    # name: (batch, d, L, N, options)
    "all_options": (2, 5, 37, 8, dict()),
    "large_delta": (3, 4, 64, 8, dict(big_delta=True)),
    "L1": (2, 3, 1, 8, dict()),
    "batch1_plain": (1, 2, 50, 8, dict(D=False, z=False, bias=False, softplus=False)),
    "N12_bias_no_softplus": (2, 3, 33, 12, dict(z=False, softplus=False, positive=True)),
    "N16_z_only": (2, 4, 70, 16, dict(D=False, bias=False)),
    "realistic_256": (2, 24, 256, 8, dict()),
    "N5_D_only": (3, 2, 17, 5, dict(z=False, bias=False)),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_sequential_reference(backend, case, dtype):
    batch, dim, L, N, opts = CASES[case]
    opts = dict(opts)
    softplus = opts.pop("softplus", True)
    positive = opts.pop("positive", False)
    inputs = make_inputs(batch, dim, L, N, **opts)
    if positive:  # without softplus, delta must still be a positive step
        inputs["delta"] = inputs["delta"].abs() * 0.1
        inputs["delta_bias"] = inputs["delta_bias"].abs()
    dy = torch.randn(batch, dim, L, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y_ref, g_ref = run_with_grads(reference_selective_scan, leaf(inputs), softplus, dy)

    def fn(**kw):
        return selective_scan(**kw, backend=backend)

    y, grads = run_with_grads(fn, leaf(inputs, dtype=dtype), softplus, dy)
    assert y.dtype == dtype and y.shape == (batch, dim, L)
    tol = 1e-5 if dtype == torch.float64 else 1e-4
    assert_close_scaled(y, y_ref, tol, "y")
    assert set(grads) == set(g_ref)
    for k in g_ref:
        assert grads[k].dtype == dtype
        assert_close_scaled(grads[k], g_ref[k], tol, f"d{k}")


def test_non_contiguous_inputs(backend):
    """B, C as views of a (batch, L, N) tensor and u, delta, z of (batch, L, d) (the layouts a
    Mamba block produces) give the same results as contiguous copies."""
    batch, dim, L, N = 3, 6, 40, 8
    inputs = make_inputs(batch, dim, L, N, dtype=torch.float32)
    views = {}
    for k, v in inputs.items():
        if v is not None and v.dim() == 3:
            views[k] = v.transpose(1, 2).contiguous().transpose(1, 2)
            assert not views[k].is_contiguous()
        else:
            views[k] = v
    with torch.no_grad():
        a = selective_scan(**inputs, delta_softplus=True, backend=backend)
        b = selective_scan(**views, delta_softplus=True, backend=backend)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    dy = torch.randn(batch, dim, L)
    _, ga = run_with_grads(lambda **kw: selective_scan(**kw, backend=backend), leaf(inputs), True, dy)
    _, gb = run_with_grads(lambda **kw: selective_scan(**kw, backend=backend), leaf(views), True, dy)
    for k in ga:
        torch.testing.assert_close(ga[k], gb[k], rtol=1e-5, atol=1e-5)


def test_expanded_output_gradient(backend):
    """y.sum().backward() hands the kernel a stride-0 (expanded) gradient."""
    inputs = make_inputs(2, 3, 19, 8, dtype=torch.float64)
    a, b = leaf(inputs), leaf(inputs)
    selective_scan(**a, delta_softplus=True, backend=backend).sum().backward()
    y = selective_scan(**b, delta_softplus=True, backend=backend)
    y.backward(torch.ones_like(y))
    for k, v in a.items():
        if v is not None:
            torch.testing.assert_close(v.grad, b[k].grad)


def test_extreme_delta_is_stable(backend):
    """Huge steps (delta*A down to about -1e4): no overflow, no NaN, same as the reference."""
    inputs = make_inputs(2, 3, 20, 8, dtype=torch.float32)
    inputs["delta"] = inputs["delta"] * 0 + torch.linspace(-20, 1200, 20)
    dy = torch.randn(2, 3, 20)
    y_ref, g_ref = run_with_grads(reference_selective_scan, leaf(inputs, dtype=torch.float64), True, dy)
    y, g = run_with_grads(lambda **kw: selective_scan(**kw, backend=backend), leaf(inputs), True, dy)
    assert torch.isfinite(y).all() and all(torch.isfinite(v).all() for v in g.values())
    assert_close_scaled(y, y_ref, 1e-4, "y")
    for k in g_ref:
        assert_close_scaled(g[k], g_ref[k], 1e-4, f"d{k}")


def test_gradcheck(backend):
    inputs = make_inputs(2, 3, 9, 4, dtype=torch.float64, seed=3)
    keys = [k for k, v in inputs.items() if v is not None]

    def fn(*args):
        return selective_scan(**dict(zip(keys, args)), delta_softplus=True, backend=backend)

    args = tuple(inputs[k].clone().requires_grad_() for k in keys)
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_half_precision_input_returns_input_dtype(backend):
    inputs = make_inputs(2, 4, 24, 8, dtype=torch.float32)
    inputs["u"] = inputs["u"].to(torch.bfloat16)
    y = selective_scan(**inputs, delta_softplus=True, backend=backend)
    assert y.dtype == torch.bfloat16
    ref = reference_selective_scan(**{k: (v.double() if v is not None else None) for k, v in inputs.items()},
                                   delta_softplus=True)
    torch.testing.assert_close(y.double(), ref, rtol=2e-2, atol=2e-2)


def test_empty_batch(backend):
    inputs = make_inputs(0, 3, 10, 8, dtype=torch.float32)
    y = selective_scan(**inputs, delta_softplus=True, backend=backend)
    assert y.shape == (0, 3, 10)


def test_inference_keeps_no_graph(backend):
    inputs = leaf(make_inputs(2, 3, 12, 8, dtype=torch.float32))
    with torch.no_grad():
        y = selective_scan(**inputs, delta_softplus=True, backend=backend)
    assert y.grad_fn is None and not y.requires_grad


def test_torch_backend_blocks_and_chunks_agree():
    """Several batch blocks (checkpointed under autograd) and chunk sizes not dividing L."""
    inputs = make_inputs(5, 3, 45, 8, dtype=torch.float64)
    dy = torch.randn(5, 3, 45, dtype=torch.float64)
    y_ref, g_ref = run_with_grads(reference_selective_scan, leaf(inputs), True, dy)
    for chunk, block in [(1, 2), (7, 1), (16, 3), (64, 5)]:
        def fn(**kw):
            return scan._scan_torch(**kw, chunk=chunk, block=block)

        y, g = run_with_grads(fn, leaf(inputs), True, dy)
        assert_close_scaled(y, y_ref, 1e-10, f"y chunk={chunk}")
        for k in g_ref:
            assert_close_scaled(g[k], g_ref[k], 1e-10, f"d{k} chunk={chunk}")


def test_cpu_kernel_is_thread_count_independent(cpu_kernel):
    if not cpu_kernel["available"]:
        pytest.skip("C++ kernel unavailable")
    inputs = make_inputs(37, 4, 30, 8, dtype=torch.float32)
    dy = torch.randn(37, 4, 30)
    n = torch.get_num_threads()
    results = []
    try:
        for threads in (1, max(2, n)):
            torch.set_num_threads(threads)
            results.append(run_with_grads(lambda **kw: selective_scan(**kw, backend="cpu"),
                                          leaf(inputs), True, dy))
    finally:
        torch.set_num_threads(n)
    (y1, g1), (y2, g2) = results
    assert torch.equal(y1, y2)
    for k in g1:
        assert torch.equal(g1[k], g2[k]), k


# ---- dispatch, errors, logging --------------------------------------------------------------


def test_cpu_kernel_builds(cpu_kernel):
    if not cpu_kernel["available"] and shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler on this machine")
    assert cpu_kernel["available"], cpu_kernel["error"]
    assert cpu_kernel["capability"].lower() in cpu_kernel["name"]


def test_available_and_resolve(cpu_kernel):
    names = available_backends()
    assert "torch" in names
    assert ("cpu" in names) == cpu_kernel["available"]
    assert resolve_backend("auto", "cpu") == ("cpu" if cpu_kernel["available"] else "torch")
    assert resolve_backend("torch", "cpu") == "torch"
    with pytest.raises(ValueError, match="unknown"):
        resolve_backend("fast", "cpu")


def test_shape_errors_are_clear():
    inputs = make_inputs(2, 3, 10, 4, dtype=torch.float32)
    bad = dict(inputs, B=inputs["B"][:, :, :5])
    with pytest.raises(ValueError, match="B must have shape"):
        selective_scan(**bad)
    with pytest.raises(ValueError, match="u must be"):
        selective_scan(**dict(inputs, u=inputs["u"][0]))


def test_explicit_cuda_on_cpu_tensors_raises():
    inputs = make_inputs(1, 2, 5, 4, dtype=torch.float32)
    with pytest.raises(BackendUnavailableError) as exc:
        selective_scan(**inputs, backend="cuda")
    msg = str(exc.value)
    assert "backend='cuda'" in msg and "'cpu'" in msg
    assert "pip install --no-build-isolation mamba-ssm causal-conv1d" in msg
    if backends.mamba_reason() is not None:
        assert "mamba_ssm" in msg or "torch.cuda" in msg


def test_explicit_cpu_on_failed_build_raises_and_auto_falls_back(monkeypatch, caplog):
    def boom(openmp=None):
        raise RuntimeError(
            "Error building extension 'lpmnet_scan_cpu_x':\n[1/2] c++ -MMD ... -c selective_scan.cpp\n"
            "FAILED: selective_scan.o\nselective_scan.cpp:12:3: error: expected ';' before '}'\n"
            "ninja: build stopped: subcommand failed."
        )

    for key, value in {"tried": False, "module": None, "error": None}.items():
        monkeypatch.setitem(cpu._state, key, value)
    monkeypatch.setattr(cpu, "_load_cpu_kernel", boom)
    with caplog.at_level(logging.WARNING, logger="lpmnet.ops.cpu"):
        assert resolve_backend("auto", "cpu") == "torch"
        assert resolve_backend("auto", "cpu") == "torch"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    fallback = [m for m in warnings if "falling back" in m]
    assert len(fallback) == 1, warnings  # logged once, not per call
    assert "selective_scan.cpp:12:3: error: expected ';' before '}'" in fallback[0]
    with pytest.raises(BackendUnavailableError, match="expected ';'"):
        resolve_backend("cpu", "cpu")
    assert "cpu" not in available_backends()


def test_backend_logged_once(backend, monkeypatch, caplog):
    monkeypatch.setattr(backends, "_logged", set())
    inputs = make_inputs(1, 2, 6, 4, dtype=torch.float32)
    with caplog.at_level(logging.INFO, logger="lpmnet.ops.selective_scan"):
        for _ in range(3):
            selective_scan(**inputs, backend=backend)
    lines = [r.getMessage() for r in caplog.records if "selective_scan uses" in r.getMessage()]
    assert len(lines) == 1 and f"'{backend}'" in lines[0]


# ---- causal_conv1d ------------------------------------------------------------------------


def causal_conv1d_loop(x, weight, bias, activation):
    batch, dim, L = x.shape
    width = weight.shape[-1]
    out = torch.zeros_like(x)
    for t in range(L):
        for k in range(width):
            s = t - (width - 1) + k
            if s >= 0:
                out[:, :, t] += weight[:, k] * x[:, :, s]
    if bias is not None:
        out = out + bias[:, None]
    return F.silu(out) if activation else out


def _conv_inputs(layout, width, with_bias, dtype=torch.float64):
    """x (3, 5, 11) contiguous, or a channels-last view of a wider tensor (Mamba's in_proj output)."""
    if layout == "contiguous":
        x = torch.randn(3, 5, 11, dtype=dtype)
    else:
        x = torch.randn(3, 11, 12, dtype=dtype).transpose(1, 2)[:, 2:7]
    w = torch.randn(5, width, dtype=dtype)
    b = torch.randn(5, dtype=dtype) if with_bias else None
    return x, w, b


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("conv_backend", ["cpu", "torch"])
@pytest.mark.parametrize("width", [1, 2, 4])
@pytest.mark.parametrize("activation", ["silu", None])
@pytest.mark.parametrize("with_bias", [True, False])
def test_causal_conv1d_matches_loop(layout, conv_backend, width, activation, with_bias, cpu_kernel):
    x, w, b = _conv_inputs(layout, width, with_bias)
    expected = causal_conv1d_loop(x, w, b, activation)
    torch.testing.assert_close(causal_conv1d(x, w, b, activation=activation, backend=conv_backend), expected)
    # nn.Conv1d weight layout (d, 1, width) is accepted too
    torch.testing.assert_close(causal_conv1d(x, w.unsqueeze(1), b, activation=activation, backend=conv_backend),
                               expected)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("activation", ["silu", None])
@pytest.mark.parametrize("with_bias", [True, False])
def test_causal_conv1d_cpu_kernel_gradients(layout, activation, with_bias, cpu_kernel):
    x, w, b = _conv_inputs(layout, 4, with_bias)
    inputs = [t.requires_grad_() for t in (x, w, b) if t is not None]

    def conv(*args):
        x, w, *b = args
        return causal_conv1d(x, w, b[0] if b else None, activation=activation, backend="cpu")

    assert torch.autograd.gradcheck(conv, inputs)
    # float32 against the reference, and the (batch, L, d) storage of the kernel's output
    x32, w32, b32 = (None if t is None else t.detach().float() for t in (x, w, b))
    out = causal_conv1d(x32, w32, b32, activation=activation, backend="cpu")
    assert out.transpose(1, 2).is_contiguous()
    torch.testing.assert_close(out, causal_conv1d(x32, w32, b32, activation=activation, backend="torch"),
                               rtol=1e-5, atol=1e-6)


def test_causal_conv1d_cpu_kernel_refuses_what_it_cannot_run(cpu_kernel):
    with pytest.raises(BackendUnavailableError, match="float32/float64"):
        causal_conv1d(torch.randn(1, 2, 8, dtype=torch.bfloat16), torch.randn(2, 4, dtype=torch.bfloat16),
                      backend="cpu")
    # auto: half precision runs on the reference path
    out = causal_conv1d(torch.randn(1, 2, 8, dtype=torch.bfloat16), torch.randn(2, 4, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16


def test_causal_conv1d_explicit_cuda_on_cpu_raises():
    with pytest.raises(BackendUnavailableError, match="mamba-ssm causal-conv1d"):
        causal_conv1d(torch.randn(1, 2, 8), torch.randn(2, 4), backend="cuda")
    with pytest.raises(ValueError):
        causal_conv1d(torch.randn(1, 2, 8), torch.randn(2, 4), activation="relu")


# ---- GPU ----------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.cuda is not available")
class TestGPU:
    def _compare(self, backend, dtype, tol, **opts):
        batch, dim, L, N = 4, 24, 256, 8
        inputs = make_inputs(batch, dim, L, N, **opts)
        dy = torch.randn(batch, dim, L, dtype=torch.float64)
        y_ref, g_ref = run_with_grads(reference_selective_scan, leaf(inputs), True, dy)
        y, g = run_with_grads(lambda **kw: selective_scan(**kw, backend=backend),
                              leaf(inputs, dtype=dtype, device="cuda"), True, dy)
        assert y.is_cuda and y.dtype == dtype
        assert_close_scaled(y, y_ref.cuda(), tol, "y")
        for k in g_ref:
            assert_close_scaled(g[k], g_ref[k].cuda(), tol, f"d{k}")

    @pytest.mark.parametrize("big_delta", [False, True])
    def test_torch_backend_on_cuda(self, big_delta):
        self._compare("torch", torch.float32, 1e-4, big_delta=big_delta)
        self._compare("torch", torch.float64, 1e-5, big_delta=big_delta)

    @pytest.mark.parametrize("big_delta", [False, True])
    def test_cuda_backend(self, big_delta):
        if backends.mamba_reason() is not None:
            pytest.skip(backends.mamba_reason())
        # mamba-ssm's fp32 kernel is tested upstream at about this tolerance
        self._compare("cuda", torch.float32, 2e-3, big_delta=big_delta)

    def test_cuda_and_torch_backends_agree(self):
        if backends.mamba_reason() is not None:
            pytest.skip(backends.mamba_reason())
        inputs = make_inputs(64, 24, 256, 8, dtype=torch.float32, device="cuda")
        with torch.no_grad():
            a = selective_scan(**inputs, delta_softplus=True, backend="cuda")
            b = selective_scan(**inputs, delta_softplus=True, backend="torch")
        assert_close_scaled(a, b, 2e-3, "y")
        assert resolve_backend("auto", "cuda") == "cuda"

    def test_auto_on_cuda(self):
        inputs = make_inputs(2, 3, 20, 8, dtype=torch.float64, device="cuda")
        y = selective_scan(**inputs, delta_softplus=True)  # float64: torch backend even with mamba-ssm
        ref = reference_selective_scan(**{k: (v.cpu() if v is not None else None) for k, v in inputs.items()},
                                       delta_softplus=True)
        assert_close_scaled(y, ref.cuda(), 1e-5, "y")
        expected = "cuda" if backends.mamba_reason() is None else "torch"
        assert resolve_backend("auto", "cuda") == expected
        with pytest.raises(BackendUnavailableError):
            resolve_backend("cpu", "cuda")

    def test_causal_conv1d_cuda(self):
        x = torch.randn(3, 24, 50, device="cuda")
        w = torch.randn(24, 4, device="cuda")
        b = torch.randn(24, device="cuda")
        expected = causal_conv1d_loop(x.double(), w.double(), b.double(), "silu")
        torch.testing.assert_close(causal_conv1d(x, w, b).double(), expected, rtol=1e-4, atol=1e-4)
