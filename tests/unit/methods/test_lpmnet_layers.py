"""LPM-Net's fused CPU kernels (lpmnet.methods.lpmnet.layers) against their pure-PyTorch references, in float64:
outputs and gradients."""

import pytest
import torch

from lpmnet.methods.lpmnet import layers
from lpmnet.methods.lpmnet.network import WindowMambaLayer, _window_order
from lpmnet.ops import cpu


@pytest.fixture(autouse=True)
def kernel():
    if cpu.module(strict=False) is None:
        pytest.skip(f"C++ kernel unavailable: {cpu.cpu_kernel_info()['error']}")


def _grads(fn, tensors, dys):
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    outputs = fn(*leaves)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    torch.autograd.backward(outputs, dys[:len(outputs)])
    return [o.detach() for o in outputs], [t.grad for t in leaves]


def _assert_same(a, b, tol=1e-10):
    (ya, ga), (yb, gb) = a, b
    assert len(ya) == len(yb)
    for x, y in zip(ya + ga, yb + gb):
        torch.testing.assert_close(x, y, rtol=tol, atol=tol)


@pytest.mark.parametrize("shifted", [False, True])
def test_fused_window_mamba_matches_its_reference(shifted):
    torch.manual_seed(0)
    layer = WindowMambaLayer(8, shifted, d_state=4, d_conv=4, expand=2, window=4).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    n, h, w, c = 2, 8, 8, 8
    order, _ = _window_order(h, w, 4, layer.shift, "cpu")
    x = torch.randn(n, h * w, c, dtype=torch.float64)
    dy = torch.randn(n, h * w, c, dtype=torch.float64)
    params = [None if p is None else p.detach() for p in layer.fused_params()]
    present = [i for i, p in enumerate(params) if p is not None]  # in_proj's and out_proj's biases are None

    def with_params(fn):
        def call(x, *tensors):
            full = list(params)
            for i, t in zip(present, tensors):
                full[i] = t
            return fn(x, order, 16, layer.norm.eps, full)
        return call

    tensors = [x, *(params[i] for i in present)]
    _assert_same(_grads(with_params(layers.fused_window_mamba), tensors, [dy]),
                 _grads(with_params(layers.window_mamba_ref), tensors, [dy]))


@pytest.mark.parametrize("maximum", [True, False])
def test_merge_views_matches_its_reference(maximum):
    torch.manual_seed(1)
    views = [torch.randn(2, 3, 4, 5, dtype=torch.float64) for _ in range(3)]
    dy = [torch.randn(2, 3, 4, 5, dtype=torch.float64)]

    def fused(*views):
        return layers.merge_views(views, maximum)

    def reference(*views):
        return layers.merge_views_ref(views, maximum)

    _assert_same(_grads(fused, views, dy), _grads(reference, views, dy), tol=0)


@pytest.mark.parametrize("components", [True, False])
def test_fused_cfc_head_matches_its_reference(components):
    torch.manual_seed(2)
    b, c, v, o = 2, 6, 300, 1
    tensors = [torch.randn(b, c, v, dtype=torch.float64), 0.3 * torch.randn(4 * c, c, dtype=torch.float64),
               0.3 * torch.randn(o, c, dtype=torch.float64), torch.randn(o, dtype=torch.float64)]
    dys = [torch.randn(b, o, v, dtype=torch.float64) for _ in range(3)]
    _assert_same(_grads(lambda *t: layers.fused_cfc_head(*t, components), tensors, dys),
                 _grads(lambda *t: layers.cfc_head_ref(*t, components), tensors, dys))
