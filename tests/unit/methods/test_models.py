"""LPM-Net model: parameter count, checkpoint compatibility, and equality with an independent
re-statement of the original forward pass written from docs/lpmnet.md."""

import math

import pytest
import torch
import torch.nn.functional as F

from lpmnet.errors import InputError
from lpmnet.methods import count_parameters, save_checkpoint
from lpmnet.methods.lpmnet.network import (
    LPMNet,
    conv3d_by_planes,
    load_checkpoint,
    random_block_mask,
)

# The original code's state-dict keys and shapes (docs/lpmnet.md, "Checkpoint compatibility").
ORIGINAL_VIEW_KEYS = {
    "Conv_{v}.layers.0.conv.weight": (8, 8, 3, 3),
    "Conv_{v}.layers.0.conv.bias": (8,),
    "Conv_{v}.layers.1.conv.weight": (8, 16, 3, 3),
    "Conv_{v}.layers.1.conv.bias": (8,),
}
for _j in (0, 1):
    ORIGINAL_VIEW_KEYS.update({
        f"Mamba_{{v}}.layers.{_j}.norm.weight": (24,),
        f"Mamba_{{v}}.layers.{_j}.norm.bias": (24,),
        f"Mamba_{{v}}.layers.{_j}.mamba.A_log": (24, 8),
        f"Mamba_{{v}}.layers.{_j}.mamba.D": (24,),
        f"Mamba_{{v}}.layers.{_j}.mamba.in_proj.weight": (48, 24),
        f"Mamba_{{v}}.layers.{_j}.mamba.conv1d.weight": (24, 1, 4),
        f"Mamba_{{v}}.layers.{_j}.mamba.conv1d.bias": (24,),
        f"Mamba_{{v}}.layers.{_j}.mamba.x_proj.weight": (18, 24),
        f"Mamba_{{v}}.layers.{_j}.mamba.dt_proj.weight": (24, 2),
        f"Mamba_{{v}}.layers.{_j}.mamba.dt_proj.bias": (24,),
        f"Mamba_{{v}}.layers.{_j}.mamba.out_proj.weight": (24, 24),
    })
ORIGINAL_KEYS = {"Conv_in.weight": (8, 2, 3, 3, 3), "Conv_in.bias": (8,)}
for _v in ("P1", "P2", "P3"):
    ORIGINAL_KEYS.update({k.format(v=_v): s for k, s in ORIGINAL_VIEW_KEYS.items()})
for _head, _out in (("cfc", 1), ("cfc_mask", 2)):
    for _name in ("ff1", "ff2", "time_a", "time_b"):
        ORIGINAL_KEYS[f"{_head}.{_name}.weight"] = (24, 24, 1, 1, 1)
    ORIGINAL_KEYS[f"{_head}.fc.weight"] = (_out, 24, 1, 1, 1)
    ORIGINAL_KEYS[f"{_head}.fc.bias"] = (_out,)


def original_state_dict(seed=0, dtype=torch.float32):
    """A state dict with the original keys and random (but Mamba-plausible) values."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in ORIGINAL_KEYS.items():
        if key.endswith("A_log"):
            sd[key] = torch.log(torch.arange(1, 9, dtype=dtype)).repeat(24, 1) + 0.1 * torch.rand(shape, generator=g, dtype=dtype)
        elif key.endswith("dt_proj.bias"):
            dt = torch.exp(torch.rand(shape, generator=g, dtype=dtype) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
            sd[key] = dt + torch.log(-torch.expm1(-dt))
        elif key.endswith("norm.weight") or key.endswith(".D"):
            sd[key] = 1 + 0.1 * torch.randn(shape, generator=g, dtype=dtype)
        else:
            fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
            sd[key] = torch.randn(shape, generator=g, dtype=dtype) / math.sqrt(fan_in)
    return sd


# ---------------------------------------------------------------------------------------------
# Independent re-statement of the original forward pass (eval mode), straight from the spec:
# explicit window loops, a sequential scan, and mamba_simple's (b, d, l) layout.
# ---------------------------------------------------------------------------------------------

def ref_mamba(p, pre, x):
    """x: (n, L, d) -> (n, L, d)."""
    w_in = p[pre + "in_proj.weight"]
    di = w_in.shape[0] // 2
    xz = torch.einsum("nld,ed->nel", x, w_in)  # (n, 2di, L)
    xs, z = xz[:, :di], xz[:, di:]
    k = p[pre + "conv1d.weight"].shape[-1]
    xs = F.conv1d(F.pad(xs, (k - 1, 0)), p[pre + "conv1d.weight"], p[pre + "conv1d.bias"], groups=di)
    xs = xs * torch.sigmoid(xs)
    x_dbl = torch.einsum("ndl,ed->nle", xs, p[pre + "x_proj.weight"])
    r = p[pre + "dt_proj.weight"].shape[1]
    n_state = p[pre + "A_log"].shape[1]
    dt = F.softplus(x_dbl[..., :r] @ p[pre + "dt_proj.weight"].T + p[pre + "dt_proj.bias"])  # (n, L, di)
    b_in, c_out = x_dbl[..., r:r + n_state], x_dbl[..., r + n_state:]
    a = -torch.exp(p[pre + "A_log"])
    h = torch.zeros(x.shape[0], di, n_state, dtype=x.dtype)
    ys = []
    for t in range(x.shape[1]):
        h = torch.exp(dt[:, t, :, None] * a) * h + dt[:, t, :, None] * b_in[:, t, None, :] * xs[:, :, t, None]
        ys.append((h * c_out[:, t, None, :]).sum(-1) + p[pre + "D"] * xs[:, :, t])
    y = torch.stack(ys, dim=1) * F.silu(z.transpose(1, 2))
    return y @ p[pre + "out_proj.weight"].T


def ref_view(p, view, slices):
    """slices: (n, C, rows, cols) -> (n, 24, rows, cols)."""
    x = slices
    for i in range(2):
        pre = f"Conv_{view}.layers.{i}.conv."
        x = torch.cat([F.leaky_relu(F.conv2d(x, p[pre + "weight"], p[pre + "bias"], padding=1), 0.01), x], 1)
    x = x.permute(0, 2, 3, 1)
    for j in range(2):
        pre = f"Mamba_{view}.layers.{j}."
        if j % 2:
            x = torch.roll(x, (-8, -8), (1, 2))
        corners = [(r0, c0) for r0 in range(0, x.shape[1], 16) for c0 in range(0, x.shape[2], 16)]
        n = x.shape[0]
        wins = torch.cat([x[:, r0:r0 + 16, c0:c0 + 16, :].reshape(n, 256, -1) for r0, c0 in corners])
        wins = F.layer_norm(wins, (24,), p[pre + "norm.weight"], p[pre + "norm.bias"])
        wins = ref_mamba(p, pre + "mamba.", wins)
        out = torch.empty_like(x)
        for k, (r0, c0) in enumerate(corners):
            out[:, r0:r0 + 16, c0:c0 + 16, :] = wins[k * n:(k + 1) * n].reshape(n, 16, 16, -1)
        x = torch.roll(out, (8, 8), (1, 2)) if j % 2 else out
    return x.permute(0, 3, 1, 2)


def ref_forward(p, x1, x2):
    """Eval-mode forward for (1, 1, D, H, W) inputs with D, H, W multiples of 16."""
    f = F.conv3d(torch.cat([x1, x2], 1), p["Conv_in.weight"], p["Conv_in.bias"], padding=1)[0]  # (C, D, H, W)
    p1 = ref_view(p, "P1", f.permute(1, 0, 2, 3)).permute(1, 0, 2, 3)  # D slices of HxW
    p2 = ref_view(p, "P2", f.permute(2, 0, 1, 3)).permute(1, 2, 0, 3)  # H slices of DxW
    p3 = ref_view(p, "P3", f.permute(3, 0, 1, 2)).permute(1, 2, 3, 0)  # W slices of DxH
    h = torch.maximum(torch.maximum(p1, p2), p3)[None]

    def conv(name, t):
        return F.conv3d(t, p[f"cfc.{name}.weight"], p.get(f"cfc.{name}.bias"))

    ff1, ff2 = conv("ff1", h), conv("ff2", h)
    t = torch.sigmoid(conv("time_a", h) + conv("time_b", h))
    squash = lambda v: torch.tanh(v) / 2 + 0.5  # noqa: E731
    return squash(conv("fc", ff1 * (1 - t) + t * ff2)), squash(conv("fc", ff1)), squash(conv("fc", ff2))


# ---------------------------------------------------------------------------------------------


def test_parameter_count_matches_paper():
    assert count_parameters(LPMNet()) == 26051
    assert count_parameters(LPMNet(reconstruction=False)) == 23697


def test_original_state_dict_keys_load_strictly():
    model = LPMNet()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == ORIGINAL_KEYS
    model.load_state_dict(original_state_dict(), strict=True)


def test_forward_equals_independent_restatement_float64():
    sd = original_state_dict(seed=1, dtype=torch.float64)
    model = LPMNet().double().eval()
    model.load_state_dict(sd, strict=True)
    g = torch.Generator().manual_seed(3)
    x1 = torch.rand(1, 1, 16, 32, 32, generator=g, dtype=torch.float64)
    x2 = torch.rand(1, 1, 16, 32, 32, generator=g, dtype=torch.float64)
    with torch.no_grad():
        out = model(x1, x2)
        fused, base, detail = ref_forward(sd, x1, x2)
    torch.testing.assert_close(out.fused, fused, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(out.base, base, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(out.detail, detail, rtol=1e-9, atol=1e-10)
    assert out.reconstruction is None


def test_training_gradients_equal_the_independent_restatements_float64():
    """The fast paths (CPU conv and scan kernels, window gathers, split projections) give the loss and
    the gradients of every parameter of the plain restatement (F.conv1d, a sequential scan, rolls)."""
    from lpmnet.engine.losses import make_loss

    sd = {k: v for k, v in original_state_dict(seed=2, dtype=torch.float64).items() if not k.startswith("cfc_mask")}
    model = LPMNet(reconstruction=False).double().train()
    model.load_state_dict(sd, strict=True)
    reference = {k: v.clone().requires_grad_() for k, v in sd.items()}
    g = torch.Generator().manual_seed(4)
    x1, x2 = (torch.rand(1, 1, 16, 32, 16, generator=g, dtype=torch.float64) for _ in range(2))
    loss_fn, _ = make_loss("lpmnet", 3, {})
    schedule = dict(iteration=3, iterations=10, step_in_epoch=0, max_epoch=10)
    loss, _ = loss_fn(x1, x2, model(x1, x2), schedule)
    loss.backward()
    fused, base, detail = ref_forward(reference, x1, x2)
    expected, _ = loss_fn(x1, x2, type(model(x1, x2))(fused, base, detail, None), schedule)
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, reference[name].grad, rtol=1e-8, atol=1e-11, msg=name)


@pytest.mark.parametrize("kernel, padding", [(3, 1), ((5, 3, 1), (2, 1, 0)), ((3, 3, 3), (0, 1, 1))])
def test_conv3d_by_planes_equals_conv3d_with_gradients(kernel, padding):
    """Conv_in's 2D form gives conv3d's output and the gradients of input, weight and bias, for depth
    kernels and paddings other than Conv_in's (a shorter output when the padding is below the reach)."""
    g = torch.Generator().manual_seed(5)
    conv = torch.nn.Conv3d(2, 3, kernel, padding=padding).double()
    x = torch.rand(2, 2, 7, 6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    out = conv3d_by_planes(x, conv)
    expected = conv(x)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-13)
    dout = torch.rand(expected.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad(out, (x, conv.weight, conv.bias), dout)
    expected_grads = torch.autograd.grad(expected, (x, conv.weight, conv.bias), dout)
    for name, got, want in zip(("input", "weight", "bias"), grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-13, msg=name)
    with pytest.raises(ValueError, match="stride-1"):
        conv3d_by_planes(x, torch.nn.Conv3d(2, 3, 3, stride=2))


@pytest.mark.parametrize("dim, d_state, expand, biases, shifted", [
    (24, 8, 1, False, True),  # LPM-Net's layer
    (12, 5, 2, True, False),  # widths that are not whole SIMD vectors, Mamba's optional biases
])
@pytest.mark.parametrize("channels_first_out", [False, True])
def test_fused_window_mamba_layer_equals_the_composed_layer(dim, d_state, expand, biases, shifted,
                                                             channels_first_out):
    """The fused CPU kernel of a windowed Mamba layer gives the output and every gradient (input and
    parameters) of the composed layer (LayerNorm, the Mamba block, the window gathers) in float64,
    reading a strided input as the first layer of a view does."""
    from lpmnet.methods.lpmnet.network import WindowMambaLayer

    torch.manual_seed(6)
    layer = WindowMambaLayer(dim, shifted, d_state, 3 if biases else 4, expand).double()
    if biases:
        layer.mamba.in_proj = torch.nn.Linear(dim, 2 * layer.mamba.d_inner, bias=True).double()
        layer.mamba.out_proj = torch.nn.Linear(layer.mamba.d_inner, dim, bias=True).double()
    with torch.no_grad():
        for param in layer.parameters():
            param.add_(0.1 * torch.randn_like(param))
    x = torch.randn(3, dim, 32, 48, dtype=torch.float64).permute(0, 2, 3, 1).requires_grad_()
    weights = torch.randn(3, 32, 48, dim, dtype=torch.float64)
    results = {}
    for backend in ("cpu", "torch"):
        layer.mamba.scan_backend = backend
        layer.zero_grad()
        x.grad = None
        y = layer(x, channels_first_out=channels_first_out)
        (y * weights).sum().backward()
        results[backend] = [y.detach(), x.grad] + [p.grad for p in layer.parameters()]
    assert results["cpu"][0].permute(0, 3, 1, 2).is_contiguous() == channels_first_out
    names = ["output", "input gradient"] + [name for name, _ in layer.named_parameters()]
    for name, fused, composed in zip(names, results["cpu"], results["torch"]):
        torch.testing.assert_close(fused, composed, rtol=1e-10, atol=1e-12, msg=name)


def test_fused_window_mamba_layer_in_float32_matches_float64():
    """The float32 kernel (its own exp2 of the decays, exp, softplus and sigmoid polynomials) stays
    within float32 rounding of the float64 layer, output and gradients, over decays from about 1
    down to the clamp (step sizes up to ~100): the CUDA kernels' exp2f path, restated on a CPU."""
    from lpmnet.methods.lpmnet.network import WindowMambaLayer

    torch.manual_seed(7)
    layer = WindowMambaLayer(24, True, 8, 4, 1).double()
    with torch.no_grad():
        layer.mamba.dt_proj.bias.copy_(torch.linspace(-6.0, 100.0, 24))
        layer.mamba.A_log.add_(0.3 * torch.randn_like(layer.mamba.A_log))
    x = torch.randn(2, 24, 32, 32, dtype=torch.float64).permute(0, 2, 3, 1)
    weights = torch.randn(2, 24, 32, 32, dtype=torch.float64).permute(0, 2, 3, 1)  # a strided dout
    results = []
    for dtype in (torch.float64, torch.float32):
        layer.to(dtype).zero_grad()
        xin = x.to(dtype, copy=True).requires_grad_()  # a leaf with the strided layout
        y = layer(xin, channels_first_out=True)
        (y * weights.to(dtype)).sum().backward()
        results.append([y.detach(), xin.grad] + [p.grad.clone() for p in layer.parameters()])
    names = ["output", "input gradient"] + [name for name, _ in layer.named_parameters()]
    for name, single, double in zip(names, results[1], results[0]):
        scale = double.abs().max().item()
        torch.testing.assert_close(single.double(), double, rtol=1e-4, atol=1e-5 * scale, msg=name)


@pytest.mark.parametrize("out_channels, with_components", [(1, True), (2, False)])
def test_fused_cfc_head_equals_the_composed_head(out_channels, with_components, monkeypatch):
    """The fused CPU kernel of the CfC head gives the composed head's outputs and gradients (input and
    every weight) in float64, over a voxel count that is not a whole number of its blocks."""
    import lpmnet.methods.lpmnet.network
    from lpmnet.methods.lpmnet.network import CfCHead

    torch.manual_seed(7)
    head = CfCHead(24, out_channels).double()
    h = torch.randn(2, 24, 5, 7, 9, dtype=torch.float64, requires_grad=True)
    weights = [torch.randn(2, out_channels, 5, 7, 9, dtype=torch.float64) for _ in range(3)]
    results = {}
    for fused in (True, False):
        monkeypatch.setattr(lpmnet.methods.lpmnet.network, "fused_cfc_head_usable", lambda *args, fused=fused: fused)
        head.zero_grad()
        h.grad = None
        outputs = [t for t in head(h, with_components=with_components) if t is not None]
        sum((t * w).sum() for t, w in zip(outputs, weights)).backward()
        results[fused] = outputs + [h.grad] + [p.grad for p in head.parameters()]
    assert len(results[True]) == (3 if with_components else 1) + 1 + 6
    for fused, composed in zip(results[True], results[False]):
        torch.testing.assert_close(fused, composed, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("maximum", [True, False])
def test_merged_views_route_the_gradient_to_the_chosen_view(maximum):
    """The one-pass merge of the three views equals torch.maximum/minimum and its gradient, ties go to
    the first view, and the merged volume is contiguous (the head reads it without a copy)."""
    from lpmnet.methods.lpmnet.layers import merge_views

    torch.manual_seed(8)
    views = [torch.randn(1, 4, 6, 3, 5, dtype=torch.float64).transpose(3, 4), torch.randn(1, 4, 5, 6, 3, dtype=torch.float64).transpose(2, 3),
             torch.randn(1, 4, 6, 5, 3, dtype=torch.float64)]
    views[2][0, 0, 0, 0, 0] = 10.0 if maximum else -10.0  # a sure win of the third
    views[1][0, 1, 0, 0, 0] = views[0][0, 1, 0, 0, 0] = 5.0 if maximum else -5.0  # a tie of the first two
    leaves = [v.clone().requires_grad_() for v in views]
    merged = merge_views(leaves, maximum)
    assert merged.is_contiguous()
    pick = torch.maximum if maximum else torch.minimum
    torch.testing.assert_close(merged, pick(pick(views[0], views[1]), views[2]), rtol=0, atol=0)
    grad = torch.randn_like(merged)
    merged.backward(grad)
    chosen = torch.stack(views).argmax(0) if maximum else torch.stack(views).argmin(0)
    for k, leaf in enumerate(leaves):
        torch.testing.assert_close(leaf.grad, torch.where(chosen == k, grad, 0.0), rtol=0, atol=0)
    assert leaves[0].grad[0, 1, 0, 0, 0] == grad[0, 1, 0, 0, 0] and leaves[1].grad[0, 1, 0, 0, 0] == 0
    assert leaves[2].grad[0, 0, 0, 0, 0] == grad[0, 0, 0, 0, 0]


@pytest.mark.parametrize("fuse_method", ["max", "mean", "min"])
def test_inference_in_passes_equals_the_whole_view_pass(fuse_method, monkeypatch):
    """Inference on a CPU runs a few slices (and voxels of the head) at a time; with a pass budget of a
    few slices, so that no view's slice count divides evenly, it gives the whole-graph pass's numbers."""
    import lpmnet.methods.lpmnet.network

    monkeypatch.setattr(lpmnet.methods.lpmnet.network, "_PASS_BYTES", 1_300_000)  # 2-3 slices of the padded 32 x 48 x 32
    torch.manual_seed(5)
    model = LPMNet(fuse_method=fuse_method).double().eval()
    x1, x2 = torch.rand(2, 1, 1, 20, 33, 17, dtype=torch.float64)
    with torch.no_grad():
        in_passes = model(x1, x2)
    whole = model(x1, x2)  # with autograd on, the graph of whole views
    assert whole.fused.requires_grad
    for got, expected in zip(in_passes[:3], whole[:3]):
        torch.testing.assert_close(got, expected.detach(), rtol=1e-12, atol=1e-14)


def test_any_shape_is_padded_and_cropped_back():
    torch.manual_seed(0)
    model = LPMNet().eval()
    x1, x2 = torch.rand(2, 1, 1, 17, 23, 30)
    with torch.no_grad():
        out = model(x1, x2)
    for t in (out.fused, out.base, out.detail):
        assert t.shape == (1, 1, 17, 23, 30)
        assert torch.isfinite(t).all() and t.min() >= 0 and t.max() <= 1


def test_padding_is_edge_replication_cropped_back():
    torch.manual_seed(0)
    model = LPMNet().eval()
    x1, x2 = torch.rand(2, 1, 1, 17, 20, 9)
    with torch.no_grad():
        out = model(x1, x2).fused
        pad = (0, 7, 0, 12, 0, 15)  # up to 32 x 32 x 16
        padded = model(F.pad(x1, pad, mode="replicate"), F.pad(x2, pad, mode="replicate")).fused
    torch.testing.assert_close(out, padded[..., :17, :20, :9], rtol=0, atol=0)


def test_reconstruction_runs_only_in_training():
    torch.manual_seed(0)
    model = LPMNet()
    x1, x2 = torch.rand(2, 2, 1, 16, 16, 16)
    out = model.train()(x1, x2)
    assert out.reconstruction.shape == (2, 2, 16, 16, 16)
    out.fused.mean().add(out.reconstruction.mean()).backward()
    assert all(p.grad is not None for p in model.parameters())
    with torch.no_grad():
        assert model.eval()(x1, x2).reconstruction is None
    assert LPMNet(reconstruction=False).train()(x1, x2).reconstruction is None


def test_block_mask_drops_whole_blocks():
    g = torch.Generator().manual_seed(0)
    mask = random_block_mask((16, 24, 8), 0.5, generator=g)
    assert mask.shape == (16, 24, 8)
    blocks = mask.reshape(2, 8, 3, 8, 1, 8)
    assert torch.all(blocks.amin(dim=(1, 3, 5)) == blocks.amax(dim=(1, 3, 5)))
    assert 0 < mask.mean() < 1


def test_fuse_methods_and_plain_head():
    x1, x2 = torch.rand(2, 1, 1, 16, 16, 16)
    for method in ("max", "mean", "min"):
        with torch.no_grad():
            assert LPMNet(fuse_method=method).eval()(x1, x2).fused.shape == x1.shape
    out = LPMNet(iscfc=False, reconstruction=False).eval()(x1, x2)
    assert out.base is None and out.detail is None
    with pytest.raises(ValueError, match="fuse_method"):
        LPMNet(fuse_method="median")


def test_load_checkpoint_accepts_original_and_project_formats(tmp_path):
    sd = original_state_dict(seed=2)
    torch.save(sd, tmp_path / "original.pth")
    torch.save({"model": {"module." + k: v for k, v in sd.items()}}, tmp_path / "wrapped.pth")
    # both wrappers: "model" wins, as for every method's original state dicts (methods.original_state_dict)
    torch.save({"model": sd, "state_dict": original_state_dict(seed=3)}, tmp_path / "both.pth")
    x1, x2 = torch.rand(2, 1, 1, 16, 16, 16)
    model, card = load_checkpoint(tmp_path / "original.pth")
    assert not model.training and card["source"] == "original state dict"
    with torch.no_grad():
        expected = model(x1, x2).fused
        assert torch.equal(load_checkpoint(tmp_path / "wrapped.pth")[0](x1, x2).fused, expected)
        assert torch.equal(load_checkpoint(tmp_path / "both.pth")[0](x1, x2).fused, expected)

    save_checkpoint(tmp_path / "project.pt", model, "lpmnet", model.config, model_card={"data": "unit test"})
    loaded, card = load_checkpoint(tmp_path / "project.pt")
    assert card == {"data": "unit test"}
    with torch.no_grad():
        assert torch.equal(loaded(x1, x2).fused, expected)

    small = LPMNet(base_c=4, depth_c=1, depth_m=1, reconstruction=False)
    torch.save(small.state_dict(), tmp_path / "small.pth")
    assert load_checkpoint(tmp_path / "small.pth")[0].config["base_c"] == 4


def test_load_checkpoint_bad_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(InputError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="not an LPM-Net state dict"):
        load_checkpoint(tmp_path / "other.pt")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    torch.manual_seed(0)
    model = LPMNet().eval()
    x1, x2 = torch.rand(2, 1, 1, 32, 48, 32)
    with torch.no_grad():
        cpu = model(x1, x2).fused
        gpu = model.cuda()(x1.cuda(), x2.cuda()).fused.cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-4)
