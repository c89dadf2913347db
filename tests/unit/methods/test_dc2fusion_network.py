"""DC2Fusion (lpmnet.methods.dc2fusion) against the original code's outputs.

The fixture (../shared/fixtures/baselines/dc2fusion, see its README) holds a perturbed state dict of
the original network (louelin/DC2Fsuion @233b5c27, ``embed_dim=24``), two input pairs and the
original's float64 eval-mode outputs. A re-implementation that loads the state dict strictly and
reproduces the outputs to round-off is numerically the same network at that width.

There is no output of the original at the trained width (``embed_dim=96``). What changes with the
width inside the network is the blocks' arithmetic (head width 8 -> 32, gate widths C/8, the
BatchNorm eps = C, the reshape quirk's shuffle pattern); the wiring between blocks is the same code
at every width. So the tests restate the original block literally (``original_block_forward``: the
original's operation order, window layout, grouped convolution, in-place reference-grid arithmetic),
check that this restatement reproduces the fixture when it replaces every block, and then that the
default-width model with random weights equals itself with every block replaced by the restatement.
"""

from contextlib import contextmanager
from functools import reduce
from operator import mul
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from baseline_fixtures import read_cases, read_config, read_keys, read_state_dict_float64
from helpers import one_thread
from lpmnet.methods.dc2fusion import CrossTransformerBlock3D, DC2Fusion, sample_partner

# The fixture README's acceptance bound; a float64 re-implementation lands near 1e-13.
FIXTURE_TOL = 1e-6
# Two float64 evaluations of the same function in different operation orders.
SAME_FUNCTION_TOL = 1e-10


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def fixture_dir(baseline_fixtures):
    return baseline_fixtures / "dc2fusion"


@pytest.fixture(scope="module")
def config(fixture_dir):
    return read_config(fixture_dir)


@pytest.fixture(scope="module")
def state_dict(fixture_dir):
    return read_state_dict_float64(fixture_dir)


@pytest.fixture(scope="module")
def cases(fixture_dir, config):
    return read_cases(fixture_dir, config)


def constructor_kwargs(config):
    kwargs = dict(config["constructor_kwargs"])
    kwargs["window_size"] = tuple(kwargs["window_size"])
    return kwargs


@pytest.fixture(scope="module")
def models(config, state_dict):
    """The fixture network in both variants, float64, eval mode, loaded strictly."""
    built = {}
    for variant in ("faithful", "fixed"):
        model = DC2Fusion(**constructor_kwargs(config), variant=variant).double().eval()
        model.load_state_dict(state_dict, strict=True)
        built[variant] = model
    return built


@contextmanager
def float64_default():
    """As the fixtures were computed: tensors the forward creates itself are float64 too."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def run(model, x1, x2):
    with float64_default(), torch.no_grad():
        return model(x1, x2)


def rel(actual, expected):
    return ((actual - expected).abs().max() / expected.abs().max()).item()




def perturb_(model, seed):
    """The fixture recipe (README step 2) on a freshly initialised model, so that no two modules share
    identical default values (all-ones norms, zero biases, unit running variances)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            n = torch.randn(t.shape, generator=g, dtype=t.dtype)
            if name.endswith("running_var"):
                t.mul_(torch.exp(0.2 * n))
            elif name.endswith("running_mean"):
                t.add_(0.1 * n)
            elif t.numel() == 1 or t.std() == 0:
                t.add_(0.05 * n)
            else:
                t.add_(0.1 * t.std() * n)
    return model


def smooth_pair(shape, seed, batch=1):
    """Image-like inputs in [0, 1], as the fixture inputs (README step 5)."""
    g = torch.Generator().manual_seed(seed)
    pair = [F.avg_pool3d(torch.rand((batch, 1) + shape, generator=g), 3, 1, 1, count_include_pad=False)
            for _ in range(2)]
    return [x.double() for x in pair]


# --- a literal restatement of the original block (models/DC2Fusion.py: CrossTransformerBlock3D) ---

def _window_partition(x, ws):
    B, D, H, W, C = x.shape
    x = x.view(B, D // ws[0], ws[0], H // ws[1], ws[1], W // ws[2], ws[2], C)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).contiguous().view(-1, reduce(mul, ws), C)


def _window_reverse(windows, ws, B, D, H, W):
    x = windows.view(B, D // ws[0], H // ws[1], W // ws[2], ws[0], ws[1], ws[2], -1)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).contiguous().view(B, D, H, W, -1)


def _ln_channels_first(x, norm):
    return F.layer_norm(x.permute(0, 2, 3, 4, 1), norm.normalized_shape, norm.weight, norm.bias,
                        norm.eps).permute(0, 4, 1, 2, 3)


def original_block_forward(blk, x, xa):
    """The original block's eval forward, restated in the original's operation order from the block's
    parameters only (functional calls; none of the re-implementation's forward code is used)."""
    shortcut = x
    B, D, H, W, C = x.shape
    ws = tuple(x_size if x_size <= w else w for x_size, w in zip((D, H, W), blk.window_size))
    ln1 = lambda t: F.layer_norm(t, (C,), blk.norm1.weight, blk.norm1.bias)  # noqa: E731
    x = ln1(x)
    pad_d1 = (ws[0] - D % ws[0]) % ws[0]
    pad_b = (ws[1] - H % ws[1]) % ws[1]
    pad_r = (ws[2] - W % ws[2]) % ws[2]
    x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b, 0, pad_d1))
    xa = F.pad(xa, (0, 0, 0, pad_r, 0, pad_b, 0, pad_d1))
    _, Dp, Hp, Wp, _ = x.shape

    concat = torch.cat([x, xa], dim=-1).permute(0, 4, 1, 2, 3)
    concat = F.conv3d(concat, blk.proj_q.weight, blk.proj_q.bias)
    off = F.conv3d(concat, blk.conv_offset[0].weight, blk.conv_offset[0].bias, padding=1, groups=2 * C)
    off = F.conv3d(F.gelu(_ln_channels_first(off, blk.conv_offset[1].norm)), blk.conv_offset[3].weight)
    Dk, Hk, Wk = off.shape[2:]
    offset_range = torch.tensor([1.0 / Dk, 1.0 / Hk, 1.0 / Wk]).reshape(1, 3, 1, 1, 1)
    off = off.tanh().mul(offset_range).mul(2).permute(0, 2, 3, 4, 1)
    ref_z, ref_y, ref_x = torch.meshgrid(torch.linspace(0.5, Dk - 0.5, Dk), torch.linspace(0.5, Hk - 0.5, Hk),
                                         torch.linspace(0.5, Wk - 0.5, Wk), indexing="ij")
    ref = torch.stack((ref_z, ref_y, ref_x), -1)
    ref[..., 2].div_(Dk).mul_(2).sub_(1)
    ref[..., 1].div_(Wk).mul_(2).sub_(1)
    ref[..., 0].div_(Hk).mul_(2).sub_(1)
    pos = off + ref[None].expand(B, -1, -1, -1, -1)
    xa_sampled = F.grid_sample(xa.permute(0, 4, 1, 2, 3), pos[..., (2, 1, 0)], mode="bilinear", align_corners=True)
    xa_sampled = xa_sampled.reshape(B, Dk, Hk, Wk, C)

    x_windows = _window_partition(x, ws)
    B_, N, _ = x_windows.shape
    xa_windows = _window_partition(xa_sampled, ws)

    cnn = F.conv3d(torch.cat([x, xa_sampled], dim=4).permute(0, 4, 1, 2, 3), blk.dwconv3x3[0].weight,
                   blk.dwconv3x3[0].bias, padding=3, groups=C)
    bn = blk.dwconv3x3[1]
    # LazyBatchNorm3d(dim): dim is the eps.
    cnn = F.gelu(F.batch_norm(cnn, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, float(C)))
    ci = blk.channel_interaction
    channel = cnn.mean(dim=(2, 3, 4), keepdim=True)
    channel = F.conv3d(F.gelu(_ln_channels_first(F.conv3d(channel, ci[1].weight, ci[1].bias), ci[2].norm)),
                       ci[4].weight, ci[4].bias)
    cnn = F.conv3d(cnn, blk.projection.weight, blk.projection.bias)

    attn_mod, heads = blk.cross_attn, blk.cross_attn.num_heads
    q = F.linear(x_windows, attn_mod.q.weight, attn_mod.q.bias).reshape(B_, N, heads, C // heads).permute(0, 2, 1, 3)
    k = F.linear(xa_windows, attn_mod.k.weight, attn_mod.k.bias).reshape(B_, N, heads, C // heads).permute(0, 2, 1, 3)
    v = F.linear(x_windows, attn_mod.v.weight, attn_mod.v.bias).reshape(B_, N, heads, C // heads).permute(0, 2, 1, 3)
    q = q * (C // heads) ** -0.5
    gate = torch.sigmoid(channel).reshape(-1, 1, heads, 1, C // heads)
    v = (v.reshape(gate.shape[0], -1, heads, N, C // heads) * gate).reshape(-1, heads, N, C // heads)
    x_atten = ((q @ k.transpose(-2, -1)) @ v).transpose(1, 2).reshape(B_, N, C)

    si = blk.spatial_interaction
    spatial = _window_reverse(x_atten, ws, B, Dp, Hp, Wp).permute(0, 4, 1, 2, 3)
    spatial = F.conv3d(F.gelu(_ln_channels_first(F.conv3d(spatial, si[0].weight, si[0].bias), si[1].norm)),
                       si[3].weight, si[3].bias)
    cnn = _window_partition((torch.sigmoid(spatial) * cnn).permute(0, 2, 3, 4, 1), ws)
    out = F.linear(torch.cat([cnn, ln1(x_atten)], dim=2), blk.proj.weight, blk.proj.bias)
    out = _window_reverse(out, ws, B, Dp, Hp, Wp)[:, :D, :H, :W]

    x = shortcut + out
    mlp = blk.mlp
    return x + F.linear(F.gelu(F.linear(ln1(x), mlp.fc1.weight, mlp.fc1.bias)), mlp.fc2.weight, mlp.fc2.bias)


def with_original_blocks():
    return mock.patch.object(CrossTransformerBlock3D, "forward", original_block_forward)


# --- the fixture ---

def test_fixture_reproduced(models, config, cases):
    model = models["faithful"]
    for meta, case in zip(config["cases"], cases):
        assert list(case["x1"].shape) == meta["x1_shape"]
        fused = run(model, case["x1"], case["x2"])
        assert list(fused.shape) == meta["fused_shape"]
        assert fused.dtype == torch.float64
        assert rel(fused, case["fused"]) <= FIXTURE_TOL, meta["file"]
        assert fused.abs().max().item() == pytest.approx(meta["max_abs_fused"], rel=1e-6)


def test_original_block_restatement_reproduces_fixture(models, config, cases):
    """Validates the restatement used for the default-width check below."""
    with with_original_blocks():
        for meta, case in zip(config["cases"], cases):
            assert rel(run(models["faithful"], case["x1"], case["x2"]), case["fused"]) <= FIXTURE_TOL, meta["file"]


# --- names, shapes and BatchNorm settings ---

def test_state_dict_names_and_shapes(fixture_dir):
    for keys_file, kwargs in (("keys_default.txt", {}), ("keys.txt", {"embed_dim": 24})):
        expected = read_keys(fixture_dir / keys_file)
        for variant in ("faithful", "fixed"):
            # The meta device builds the 98.8M-parameter default without allocating it.
            with torch.device("meta"):
                model = DC2Fusion(**kwargs, variant=variant)
            got = [(name, tuple(t.shape)) for name, t in model.state_dict().items()]
            assert got == expected, (keys_file, variant)
    assert sum(p.numel() for p in DC2Fusion(embed_dim=24).parameters()) == 7_453_634


def test_batchnorm_eps(config):
    expected = {(bn["num_features"], bn["eps"]) for bn in config["batchnorm"]}
    faithful = [m for m in DC2Fusion(**constructor_kwargs(config)).modules() if isinstance(m, torch.nn.BatchNorm3d)]
    assert len(faithful) == 2 * sum((2, 2, 6, 2))  # one per block, encoder and decoder
    assert {(m.num_features, m.eps) for m in faithful} == expected
    assert all(m.eps == m.num_features for m in faithful)
    with torch.device("meta"):
        fixed = [m for m in DC2Fusion(variant="fixed").modules() if isinstance(m, torch.nn.BatchNorm3d)]
    assert {m.eps for m in fixed} == {1e-5}


# --- the default (trained) width ---

@pytest.fixture(scope="module")
def default_model():
    torch.manual_seed(5)
    return perturb_(DC2Fusion(), seed=6).double().eval()


def test_default_width_is_the_original_block_function(default_model):
    """embed_dim=96, random weights: the model equals itself with every block replaced by the
    restatement of the original block that reproduces the fixture at embed_dim=24."""
    x1, x2 = smooth_pair((32, 32, 32), seed=3)
    fused = run(default_model, x1, x2)
    assert fused.shape == (1, 1, 32, 32, 32)
    assert torch.isfinite(fused).all()
    with with_original_blocks():
        assert rel(fused, run(default_model, x1, x2)) <= SAME_FUNCTION_TOL


def test_default_width_blocks_on_odd_grids():
    """Blocks of every default-width stage on grids that need window padding and shrinking."""
    torch.manual_seed(7)
    for dim, heads, grid in ((96, 3, (3, 5, 2)), (384, 12, (1, 3, 4)), (768, 24, (1, 1, 2))):
        blk = perturb_(CrossTransformerBlock3D(dim, heads, (2, 2, 2), 4.0, True, 0.0, faithful=True), seed=dim)
        blk = blk.double().eval()
        x, xa = torch.randn(2, *grid, dim, dtype=torch.float64), torch.randn(2, *grid, dim, dtype=torch.float64)
        with float64_default(), torch.no_grad():
            assert rel(blk(x, xa), original_block_forward(blk, x, xa)) <= SAME_FUNCTION_TOL, dim


# --- the fixed variant ---

def test_variants_differ_but_share_parameters(models, cases):
    """Both variants loaded the fixture strictly (``models``); the fixes change the network itself,
    not only the output rule (whose scale alone makes the outputs differ)."""
    case = cases[1]
    faithful, fixed = (run(models[v], case["x1"], case["x2"]) for v in ("faithful", "fixed"))
    assert rel(fixed, faithful) > 0.5
    with float64_default(), torch.no_grad():
        channels = {v: models[v].fusion_channels(case["x1"], case["x2"]) for v in models}
    for c_fixed, c_faithful in zip(channels["fixed"], channels["faithful"]):
        assert rel(c_fixed, c_faithful) > 0.05


def test_only_the_documented_parameters_are_dead(config, fixture_dir):
    """A gradient pass (float32; 36^3 so that even the bottleneck grid is 2^3 and its deformable
    offsets get gradients) finds exactly the fixture README's parameters without influence."""
    model = DC2Fusion(**constructor_kwargs(config)).eval()
    model.load_state_dict(torch.load(fixture_dir / "state_dict.pt", weights_only=True), strict=True)
    x1, x2 = (x.float() for x in smooth_pair((36, 36, 36), seed=1))
    model(x1, x2).sum().backward()
    dead = {name for name, p in model.named_parameters() if p.grad is None or not p.grad.any()}
    expected = {name for name, _ in model.named_parameters()
                if ".cross_attn.proj." in name or name.startswith("swin.concat_back_dim.0.")}
    assert dead == expected
    assert sum(p.numel() for name, p in model.named_parameters() if name in dead) == 345_696


def test_fixed_weights_per_sample_and_bounded(models, cases):
    model = models["fixed"]
    a, b = (cases[1][k][:, :, :8, :12, :8] for k in ("x1", "x2"))
    x1, x2 = torch.cat([a, b.flip(3)]), torch.cat([b, a.flip(2)])
    batch = run(model, x1, x2)
    for i in range(2):
        assert rel(batch[i:i + 1], run(model, x1[i:i + 1], x2[i:i + 1])) <= SAME_FUNCTION_TOL
    # Weights in [0, 1] summing to one: every voxel lies between the two output channels.
    with float64_default(), torch.no_grad():
        f1, f2 = model.fusion_channels(x1, x2)
    tiny = 1e-12 * max(f1.abs().max(), f2.abs().max())
    assert (batch >= torch.minimum(f1, f2) - tiny).all() and (batch <= torch.maximum(f1, f2) + tiny).all()
    # The faithful L1NW couples the samples of a batch (sums over the whole tensor).
    faithful = run(models["faithful"], x1, x2)
    assert rel(faithful[:1], run(models["faithful"], x1[:1], x2[:1])) > 0.1


def test_fixed_sampling_is_identity_at_zero_offsets():
    partner = torch.randn(2, 5, 3, 4, 6, dtype=torch.float64)
    zero = torch.zeros(2, 3, 3, 4, 6, dtype=torch.float64)
    assert torch.allclose(sample_partner(partner, zero, faithful=False), partner.permute(0, 2, 3, 4, 1), atol=1e-14)
    # The original's grid (and reshape) do not give the partner back.
    assert not torch.allclose(sample_partner(partner, zero, faithful=True), partner.permute(0, 2, 3, 4, 1), atol=1e-3)


# --- any input shape ---

def test_odd_shapes(models):
    x1, x2 = smooth_pair((19, 23, 17), seed=4)
    for variant, model in models.items():
        fused = run(model, x1, x2)
        assert fused.shape == (1, 1, 19, 23, 17), variant
        assert torch.isfinite(fused).all(), variant
    # Documented padding: edge replication to multiples of 4 at the far end, output channels cropped.
    model = models["faithful"]
    padded = [F.pad(x, (0, 3, 0, 1, 0, 1), mode="replicate") for x in (x1, x2)]
    with float64_default(), torch.no_grad():
        direct, via_padded = model.fusion_channels(x1, x2), model.fusion_channels(*padded)
    for channel, full in zip(direct, via_padded):
        assert torch.equal(channel, full[:, :, :19, :23, :17])


def test_bad_inputs():
    model = DC2Fusion(embed_dim=24)
    with pytest.raises(ValueError, match="equal shape"):
        model(torch.zeros(1, 1, 8, 8, 8), torch.zeros(1, 1, 8, 8, 4))
    with pytest.raises(ValueError, match="variant"):
        DC2Fusion(variant="paper")
    with pytest.raises(ValueError, match="heads"):
        DC2Fusion(embed_dim=32)
