"""The kernel module's sources: collected generically (the operations' and every method's ``csrc``), each one
part of the key that decides whether a prebuilt module is current, and registered into one module."""

import shutil

import pytest
import torch

from lpmnet.ops import build, cpu
from lpmnet.ops.causal_conv1d import causal_conv1d, causal_conv1d_ref
from lpmnet.ops.selective_scan import selective_scan, selective_scan_ref


def _relative(paths):
    return [p.relative_to(build.PACKAGE).as_posix() for p in paths]


def test_the_sources_are_the_operations_and_the_methods_kernels():
    sources = _relative(build.sources())
    ops = [s for s in sources if s.startswith("ops/csrc/")]
    assert sources[:len(ops)] == sorted(ops) and "ops/csrc/bindings.cpp" in ops  # then the methods' kernels
    assert {"ops/csrc/selective_scan.cpp", "ops/csrc/causal_conv1d.cpp", "methods/lpmnet/csrc/layers.cpp"} <= set(sources)
    assert "ops/csrc/common.h" in _relative(build.headers())
    # the build and the module's bindings name no method: each source registers its own functions
    assert "methods/lpmnet" not in (build.PACKAGE / "ops" / "build.py").read_text()
    bindings = (build.PACKAGE / "ops" / "csrc" / "bindings.cpp").read_text()
    assert "window_mamba" not in bindings and "m.def(" not in bindings


@pytest.fixture
def package_copy(tmp_path, monkeypatch):
    """A copy of the package's kernel sources, which :mod:`lpmnet.ops.build` then reads."""
    for path in [*build.sources(), *build.headers()]:
        target = tmp_path / path.relative_to(build.PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    monkeypatch.setattr(build, "PACKAGE", tmp_path)
    return tmp_path


def test_the_key_changes_with_any_one_source_or_header(package_copy):
    base = build.kernel_key("DEFAULT", False)
    files = [*build.sources(), *build.headers()]
    assert len(files) >= 5 and "methods/lpmnet/csrc/layers.cpp" in _relative(files)
    for path in files:
        original = path.read_bytes()
        path.write_bytes(original + b"\n// edited\n")
        assert build.kernel_key("DEFAULT", False) != base, path
        path.write_bytes(original)
    assert build.kernel_key("DEFAULT", False) == base
    added = package_copy / "methods" / "another" / "csrc" / "kernel.cpp"
    added.parent.mkdir(parents=True)
    added.write_text("// a method's new kernel\n")
    assert added in build.sources() and build.kernel_key("DEFAULT", False) != base


def test_sources_of_the_same_file_name_are_refused(package_copy):
    clash = package_copy / "methods" / "another" / "csrc" / "layers.cpp"
    clash.parent.mkdir(parents=True)
    clash.write_text("// same object file name as lpmnet's layers.cpp\n")
    with pytest.raises(RuntimeError, match="layers.cpp"):
        build.sources()


def test_the_module_holds_every_registered_function():
    module = cpu.module(strict=False)
    if module is None:
        pytest.skip(f"C++ kernel unavailable: {cpu.cpu_kernel_info()['error']}")
    names = {"fwd", "bwd", "conv_fwd", "conv_bwd", "window_mamba_fwd", "window_mamba_bwd", "merge_views_fwd",
             "merge_views_bwd", "cfc_head_fwd", "cfc_head_bwd", "kernel_key"}
    assert names <= set(dir(module))


def _grads(fn, leaves, dy):
    leaves = {k: None if v is None else v.detach().clone().requires_grad_() for k, v in leaves.items()}
    y = fn(**leaves)
    y.backward(dy)
    return y.detach(), {k: v.grad for k, v in leaves.items() if v is not None}


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_selective_scan_matches_its_reference(backend):
    if backend == "cpu" and cpu.module(strict=False) is None:
        pytest.skip("C++ kernel unavailable")
    g = torch.Generator().manual_seed(1)
    batch, dim, L, N = 2, 3, 13, 5
    inputs = dict(u=torch.randn(batch, dim, L, generator=g, dtype=torch.float64),
                  delta=0.3 * torch.randn(batch, dim, L, generator=g, dtype=torch.float64),
                  A=-torch.rand(dim, N, generator=g, dtype=torch.float64) - 0.5,
                  B=torch.randn(batch, N, L, generator=g, dtype=torch.float64),
                  C=torch.randn(batch, N, L, generator=g, dtype=torch.float64),
                  D=torch.randn(dim, generator=g, dtype=torch.float64),
                  z=torch.randn(batch, dim, L, generator=g, dtype=torch.float64),
                  delta_bias=torch.randn(dim, generator=g, dtype=torch.float64))
    dy = torch.randn(batch, dim, L, generator=g, dtype=torch.float64)
    y, grads = _grads(lambda **kw: selective_scan(**kw, delta_softplus=True, backend=backend), inputs, dy)
    y_ref, grads_ref = _grads(lambda **kw: selective_scan_ref(**kw, delta_softplus=True), inputs, dy)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    for name in grads_ref:
        torch.testing.assert_close(grads[name], grads_ref[name], rtol=1e-9, atol=1e-9, msg=name)


@pytest.mark.parametrize("activation", ["silu", None])
@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_causal_conv1d_matches_its_reference(backend, activation):
    if backend == "cpu" and cpu.module(strict=False) is None:
        pytest.skip("C++ kernel unavailable")
    g = torch.Generator().manual_seed(2)
    inputs = dict(x=torch.randn(2, 6, 11, generator=g, dtype=torch.float64),
                  weight=torch.randn(6, 4, generator=g, dtype=torch.float64),
                  bias=torch.randn(6, generator=g, dtype=torch.float64))
    dy = torch.randn(2, 6, 11, generator=g, dtype=torch.float64)
    y, grads = _grads(lambda **kw: causal_conv1d(**kw, activation=activation, backend=backend), inputs, dy)
    y_ref, grads_ref = _grads(lambda **kw: causal_conv1d_ref(**kw, activation=activation), inputs, dy)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    for name in grads_ref:
        torch.testing.assert_close(grads[name], grads_ref[name], rtol=1e-11, atol=1e-11, msg=name)
