"""lpmnet.engine.losses.MIFLoss: MambaDFuse's medical-fusion loss, 2D as the original, 3D as the project's extension."""

import math

import pytest
import torch
import torch.nn.functional as F

from helpers import one_thread
from lpmnet.engine.losses import MIFLoss, sobel_magnitude
from lpmnet.metrics.lpmnet_convention import ssim3d


@pytest.fixture(autouse=True)
def single_thread():
    with one_thread():
        yield


def images(shape, seed):
    """Image-like [0, 1] float64 tensors: uniform noise smoothed by a 3x3 mean filter."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    smooth = F.avg_pool2d(x.reshape(-1, *shape[-2:]), 3, stride=1, padding=1, count_include_pad=False)
    return smooth.reshape(shape)


# --- the original's formulas, restated with conv2d as its code computes them -----------------------

def original_sobel(x):
    kernel_x = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=x.dtype)[None, None]
    kernel_y = torch.tensor([[1.0, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=x.dtype)[None, None]
    return F.conv2d(x, kernel_x, padding=1).abs() + F.conv2d(x, kernel_y, padding=1).abs()


def original_ssim(img1, img2, window_size=11, sigma=1.5):
    gauss = torch.tensor([math.exp(-(x - window_size // 2) ** 2 / (2 * sigma ** 2)) for x in range(window_size)],
                         dtype=img1.dtype)
    gauss = gauss / gauss.sum()
    window = (gauss[:, None] @ gauss[None, :])[None, None]

    def local_mean(t):
        return F.conv2d(t, window, padding=window_size // 2)

    mu1, mu2 = local_mean(img1), local_mean(img2)
    sigma1_sq = local_mean(img1 * img1) - mu1 ** 2
    sigma2_sq = local_mean(img2 * img2) - mu2 ** 2
    sigma12 = local_mean(img1 * img2) - mu1 * mu2
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    ssim_map = ((2 * mu1 * mu2 + c1) * (2 * sigma12 + c2)) / ((mu1 ** 2 + mu2 ** 2 + c1) * (sigma1_sq + sigma2_sq + c2))
    return ssim_map.mean()


def original_fusion_loss_med(a, b, f):
    intensity = 20 * F.l1_loss(f, torch.max(a, b))
    gradient = 100 * F.l1_loss(original_sobel(f), torch.max(original_sobel(a), original_sobel(b)))
    ssim = 50 * (1 - (0.5 * original_ssim(a, f) + 0.5 * original_ssim(b, f)))
    return intensity + gradient + ssim, {"intensity": intensity, "gradient": gradient, "ssim": ssim}


def test_2d_terms_equal_the_originals():
    a, b, f = images((3, 3, 1, 20, 24), seed=0).unbind(0)
    total, terms = MIFLoss()(a, b, f)
    expected_total, expected = original_fusion_loss_med(a, b, f)
    assert total.dtype == torch.float64
    assert float(total) == pytest.approx(float(expected_total), rel=1e-12)
    for name, value in expected.items():
        assert terms[name] == pytest.approx(float(value), rel=1e-12), name
    assert terms["total"] == pytest.approx(sum(terms[k] for k in ("intensity", "gradient", "ssim")), rel=1e-12)


def test_weights_scale_their_terms():
    a, b, f = images((3, 2, 1, 16, 16), seed=1).unbind(0)
    _, unit = MIFLoss(intensity_weight=1.0, gradient_weight=1.0, ssim_weight=1.0)(a, b, f)
    _, default = MIFLoss()(a, b, f)
    for name, weight in (("intensity", 20), ("gradient", 100), ("ssim", 50)):
        assert default[name] == pytest.approx(weight * unit[name], rel=1e-12)


def test_3d_sobel_of_a_volume_constant_along_d_is_the_2d_sobel_of_its_slices():
    image = images((2, 1, 10, 12), seed=2)
    volume = image[:, :, None].expand(-1, -1, 7, -1, -1)
    grad3 = sobel_magnitude(volume, 3)
    # Away from the two zero-padded end slices the D response vanishes and the others are 2D Sobel.
    interior = grad3[:, :, 1:-1]
    torch.testing.assert_close(interior, original_sobel(image)[:, :, None].expand_as(interior), rtol=1e-12, atol=0)
    # And the 2D magnitude is the original's Sobelxy.
    torch.testing.assert_close(sobel_magnitude(image, 2), original_sobel(image), rtol=1e-12, atol=0)


@pytest.mark.parametrize("ramp_axis", [-3, -2, -1])
def test_3d_sobel_keeps_the_2d_gain_on_a_unit_ramp(ramp_axis):
    n = 7
    ramp = torch.arange(n, dtype=torch.float64)
    shape = [1, 1, 1]
    shape[ramp_axis] = n
    volume = ramp.view(shape).expand(n, n, n)[None, None]
    interior = sobel_magnitude(volume, 3)[..., 1:-1, 1:-1, 1:-1]
    torch.testing.assert_close(interior, torch.full_like(interior, 8.0))  # 2D Sobel of a unit ramp: 8


def test_3d_terms_of_a_volume_constant_along_d_are_the_2d_terms_per_interior_slice():
    """On volumes constant along D, every slice far enough from the two ends (1 slice for the
    gradient, 5 for the 11-tap SSIM window, 0 for the intensity) contributes exactly its 2D value,
    and the end slices contribute the same whatever D is (for D >= 10). So D * term(D) is affine in D
    with slope the 2D term: the difference quotient of two depths recovers the 2D value exactly."""
    a, b, f = images((3, 2, 1, 14, 16), seed=3).unbind(0)
    _, flat = MIFLoss()(a, b, f)
    loss = MIFLoss()

    def terms3d(depth):
        return loss(*(t[:, :, None].expand(-1, -1, depth, -1, -1) for t in (a, b, f)))[1]

    d1, d2 = 12, 15
    t1, t2 = terms3d(d1), terms3d(d2)
    for name in ("intensity", "gradient", "ssim"):
        slope = (d2 * t2[name] - d1 * t1[name]) / (d2 - d1)
        assert slope == pytest.approx(flat[name], rel=1e-9, abs=1e-12), name
    assert t1["intensity"] == pytest.approx(flat["intensity"], rel=1e-12)


def test_3d_ssim_term_is_the_ssim3d_of_lpmnets_loss():
    a, b, f = images((3, 1, 1, 12, 13, 14), seed=7).unbind(0)
    _, terms = MIFLoss()(a, b, f)
    assert terms["ssim"] == pytest.approx(float(50 * (1 - (ssim3d(a, f) + ssim3d(b, f)) / 2)), rel=1e-12)


@pytest.mark.parametrize("shape", [(2, 1, 16, 16), (1, 1, 8, 12, 12)])
def test_gradients_flow_to_the_fused_image(shape):
    g = torch.Generator().manual_seed(4)
    a, b = torch.rand(2, *shape, generator=g, dtype=torch.float64)
    fused = torch.rand(shape, generator=g, dtype=torch.float64, requires_grad=True)
    total, _ = MIFLoss()(a, b, fused)
    total.backward()
    assert torch.isfinite(fused.grad).all() and fused.grad.abs().sum() > 0


@pytest.mark.parametrize("shape", [(2, 1, 16, 16), (1, 1, 8, 12, 12)])
def test_minimum_when_fused_is_the_elementwise_max(shape):
    a = images((1, *shape), seed=5)[0]
    # A == B == F: every term vanishes, and since all three are >= 0 (SSIM <= 1) this is the minimum.
    total, _ = MIFLoss()(a, a, a.clone())
    assert abs(float(total)) < 1e-10
    # B = A / 2 <= A with weaker gradients: F = max(A, B) = A zeroes the intensity and gradient terms
    # exactly; only the SSIM against the darker B remains.
    _, terms = MIFLoss()(a, a / 2, torch.maximum(a, a / 2))
    assert terms["intensity"] == 0.0 and terms["gradient"] == 0.0 and terms["ssim"] > 0
    # Moving F away from max(A, B) costs.
    _, moved = MIFLoss()(a, a / 2, a + 0.05 * torch.sin(7 * a))
    assert moved["intensity"] > 0 and moved["gradient"] > 0


def test_half_inputs_compute_in_float32_and_shapes_are_checked():
    a, b, f = images((3, 1, 1, 16, 16), seed=6).half().unbind(0)
    total, _ = MIFLoss()(a, b, f)
    assert total.dtype == torch.float32
    with pytest.raises(ValueError, match="one shape"):
        MIFLoss()(a, b, f[..., :-1])
    with pytest.raises(ValueError, match="one shape"):
        MIFLoss()(a.expand(-1, 2, -1, -1), b.expand(-1, 2, -1, -1), f.expand(-1, 2, -1, -1))


def test_lpmnet_plus_mif_adds_the_mif_loss_at_a_fiftieth_to_lpmnet_s_objective():
    from lpmnet.engine.losses import FusionLoss, make_loss
    from lpmnet.methods.lpmnet.network import LPMNet

    torch.manual_seed(0)
    x1, x2 = (torch.rand(1, 1, 16, 16, 16) for _ in range(2))
    output = LPMNet().eval()(x1, x2)
    schedule = dict(iteration=3, iterations=10, step_in_epoch=1, max_epoch=5)
    compute, terms = make_loss("lpmnet+mif", 3)
    total, logged = compute(x1, x2, output, schedule)
    lpmnet_total, _ = FusionLoss()(x1, x2, output, **schedule)
    mif_total, mif_terms = MIFLoss()(x1, x2, output.fused)
    assert total.item() == pytest.approx(lpmnet_total.item() + mif_total.item() / 50, rel=1e-6)
    assert set(terms) == set(logged) - {"total"} and logged["mif_gradient"] == pytest.approx(mif_terms["gradient"] / 50)
    # Its share keeps the MIF SSIM term weighing as LPM-Net's when the SSIM weight changes.
    compute, _ = make_loss("lpmnet+mif", 3, {"ssim_weight": 10.0})
    assert compute(x1, x2, output, schedule)[1]["mif_ssim"] == pytest.approx(logged["mif_ssim"], rel=1e-6)


def test_mif_background_adds_the_mean_of_the_fusion_over_the_voxels_where_both_sources_are_zero():
    from lpmnet.engine.losses import make_loss

    torch.manual_seed(0)
    x1, x2 = (torch.rand(2, 1, 12, 12, 12) for _ in range(2))
    empty = torch.zeros_like(x1, dtype=torch.bool)
    empty[..., :3] = True  # a slab outside the head: both sources exactly 0
    x1, x2 = x1.masked_fill(empty, 0), x2.masked_fill(empty, 0)
    halo = torch.where(empty, 0.05, torch.maximum(x1, x2)).requires_grad_()
    compute, terms = make_loss("mif+background", 3, {"background_weight": 10.0})
    total, logged = compute(x1, x2, halo, {})
    mif_total, _ = MIFLoss()(x1, x2, halo)
    assert terms[-1] == "background" and logged["background"] == pytest.approx(10.0 * 0.05, rel=1e-5)
    assert total.item() == pytest.approx(mif_total.item() + 0.5, rel=1e-5)
    # Outside the head it pulls the fusion down, evenly; inside it adds nothing to MIF's gradient.
    total.backward()
    mif_halo = halo.detach().clone().requires_grad_()
    MIFLoss()(x1, x2, mif_halo)[0].backward()
    extra = halo.grad - mif_halo.grad
    assert torch.allclose(extra[empty], torch.full_like(extra[empty], 10.0 / empty.sum().item()), rtol=1e-4)
    assert extra[~empty].abs().max() < 1e-9
    # A network unbounded below gains nothing by going negative there.
    below = torch.where(empty, -0.05, torch.maximum(x1, x2))
    assert compute(x1, x2, below, {})[1]["background"] == pytest.approx(logged["background"], rel=1e-5)
    # Without empty voxels it is MIF's loss.
    inside = torch.rand(1, 1, 8, 8, 8) + 0.1
    assert compute(inside, inside, inside, {})[0].item() == pytest.approx(MIFLoss()(inside, inside, inside)[0].item())
