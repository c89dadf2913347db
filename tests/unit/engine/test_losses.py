import math

import pytest
import torch
import torch.nn.functional as F

from lpmnet.engine.losses import FusionLoss
from lpmnet.metrics.lpmnet_convention import spatial_frequency_3d, ssim3d
from lpmnet.methods.lpmnet.network import FusionOutput


def _output(seed=0, with_rec=True):
    g = torch.Generator().manual_seed(seed)
    t = [torch.rand(1, 1, 12, 12, 12, generator=g, dtype=torch.float64) for _ in range(3)]
    rec = torch.rand(1, 2, 12, 12, 12, generator=g, dtype=torch.float64) if with_rec else None
    return FusionOutput(t[0], t[1], t[2], rec)


def test_faithful_terms_by_hand():
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(2, 1, 1, 12, 12, 12, generator=g, dtype=torch.float64)
    out = _output()
    total, terms = FusionLoss(mode="faithful")(a, b, out, iteration=7, iterations=100, step_in_epoch=3,
                                              max_epoch=20)
    lam = math.exp((3 - 20) * 0.002)
    expected = (
        0.05 * (F.mse_loss(out.fused, a) + F.mse_loss(out.fused, b)) / 2
        + (1 - (ssim3d(a, out.fused) + ssim3d(b, out.fused)) / 2)
        + (1 - (ssim3d(a, out.detail) + ssim3d(b, out.detail)) / 2)  # only the detail term: the loop bug
        - 0.5 * lam * spatial_frequency_3d(out.fused)
        + F.mse_loss(out.reconstruction, torch.cat([a, b], 1))
    )
    assert float(total) == pytest.approx(float(expected), rel=1e-12)
    assert terms["base"] == 0.0 and terms["lambda"] == pytest.approx(lam)
    assert terms["total"] == pytest.approx(sum(terms[k] for k in ("mse", "ssim", "base", "detail", "sf", "rec")))


def test_fixed_mode_adds_base_and_uses_global_warmup():
    a, b = torch.rand(2, 1, 1, 12, 12, 12, dtype=torch.float64)
    out = _output()
    loss = FusionLoss(mode="fixed")
    _, terms = loss(a, b, out, iteration=0, iterations=3000, step_in_epoch=0, max_epoch=10)
    assert terms["base"] == pytest.approx(float((F.mse_loss(out.base, a) + F.mse_loss(out.base, b)) / 2))
    assert terms["lambda"] == pytest.approx(math.exp(-6))
    assert loss.sf_lambda(3000, 3000, 5, 10) == 1.0
    # faithful lambda is a saw-tooth: it depends only on the step within the epoch
    faithful = FusionLoss()
    assert faithful.sf_lambda(10, 3000, 2, 30) == faithful.sf_lambda(500, 3000, 2, 30)


def test_perfect_fusion_has_zero_similarity_terms_and_gradients_flow():
    a = torch.rand(1, 1, 12, 12, 12, dtype=torch.float64)
    fused = a.clone().requires_grad_(True)
    out = FusionOutput(fused, a, a, None)
    total, terms = FusionLoss()(a, a, out, iteration=0, iterations=1, step_in_epoch=0, max_epoch=1)
    assert terms["mse"] == 0 and terms["ssim"] == pytest.approx(0, abs=1e-12) and terms["rec"] == 0.0
    total.backward()
    assert torch.isfinite(fused.grad).all() and fused.grad.abs().sum() > 0


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="faithful"):
        FusionLoss(mode="paper")
