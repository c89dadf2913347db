"""The project's artefact checks: background level and the 16-voxel lattice, in the tables."""

import math

import numpy as np
import pytest
import torch

from lpmnet.metrics import TABLE_CONVENTIONS, compute_all, compute_metrics
from lpmnet.metrics.artefacts import background_level, lattice_ratio, periodic_power


def _sources(shape=(40, 44, 36), seed=0):
    """Two smooth 'heads' on an empty background (exactly 0 outside)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij"))
    inside = (grid ** 2).sum(0) < 0.6
    smooth = np.cos(3 * grid[0]) * np.sin(2 * grid[1]) + grid[2]
    a = inside * (0.5 + 0.3 * smooth + 0.05 * rng.random(shape))
    b = inside * (0.4 - 0.2 * smooth + 0.05 * rng.random(shape))
    return np.clip(a, 0, 1), np.clip(b, 0, 1)


def test_background_is_the_fused_level_where_both_sources_are_empty():
    a, b = _sources()
    mean = (a + b) / 2
    checks = compute_metrics(a, b, mean, convention="artefacts")
    assert checks.values["background"] == 0
    lifted = mean + 0.4 * ((a == 0) & (b == 0))
    assert compute_metrics(a, b, lifted, convention="artefacts").values["background"] == pytest.approx(0.4)
    # 99th percentile (nearest rank): 2 % of the background at 1 still counts, 0.5 % does not.
    f = mean.copy()
    empty = np.flatnonzero((a == 0) & (b == 0))
    f.flat[empty[: int(0.02 * len(empty))]] = 1
    assert compute_metrics(a, b, f, convention="artefacts").values["background"] == 1
    f = mean.copy()
    f.flat[empty[: int(0.005 * len(empty))]] = 1
    assert compute_metrics(a, b, f, convention="artefacts").values["background"] == 0


def test_lattice_compares_the_16_voxel_period_with_the_mean_fusion():
    a, b = _sources((40, 44, 96))
    mean = (a + b) / 2
    assert compute_metrics(a, b, mean, convention="artefacts").values["lattice"] == pytest.approx(1, abs=1e-12)
    # A stripe pattern of period 16 along W (what the window lattice looks like) is flagged ...
    stripes = mean + 0.2 * (np.arange(mean.shape[2]) % 16 == 8)
    assert compute_metrics(a, b, stripes, convention="artefacts").values["lattice"] > 1.5
    # ... a brighter but lattice-free fusion (max) and other periods are not.
    assert compute_metrics(a, b, np.maximum(a, b), convention="artefacts").values["lattice"] < 1.1
    other = mean + 0.05 * np.cos(2 * np.pi * np.arange(mean.shape[1]) / 5)[None, :, None]
    assert compute_metrics(a, b, other, convention="artefacts").values["lattice"] < 1.1


def test_periodic_power_is_the_windowed_dft_at_exactly_one_sixteenth():
    x = torch.rand(3, 40, 5, dtype=torch.float64)
    n = torch.arange(40, dtype=torch.float64)
    hann = torch.sin(math.pi * (n + 0.5) / 40) ** 2
    dft = (x * hann[None, :, None] * torch.exp(-2j * math.pi * n / 16)[None, :, None]).sum(1)
    assert float(periodic_power(x, 1, 1 / 16)) == pytest.approx(float(dft.abs().square().mean()), rel=1e-12)


def test_undefined_checks_say_why_and_reach_the_tables(tmp_path):
    from lpmnet.metrics.records import write_metrics_json
    from lpmnet.evaluation.tables import aggregate

    a, b = _sources((24, 24, 24))
    full = np.clip(a + 0.1, 0, 1)  # no empty voxel in the first source
    checks = compute_metrics(full, b, (full + b) / 2, convention="artefacts")
    assert math.isnan(checks.values["background"]) and "both sources are 0" in checks.notes["background"]
    zero = np.zeros((8, 8, 64))
    assert math.isnan(lattice_ratio(*(torch.from_numpy(v) for v in (zero, zero, zero))))
    assert "at least 64 voxels" in checks.notes["lattice"]  # 24^3: no axis long enough
    assert float(background_level(*(torch.from_numpy(v) for v in (a, b, (a + b) / 2)))) == 0
    results = compute_all(a, b, (a + b) / 2, conventions=TABLE_CONVENTIONS)
    assert tuple(results) == ("lpmnet", "standard", "artefacts")
    path = write_metrics_json(tmp_path / "m.json", "s1", "mean", results)
    long_df, summary = aggregate([path])
    assert set(long_df[long_df.convention == "artefacts"].metric) == {"background", "lattice"}
    assert summary.set_index("convention").loc["artefacts", "background_mean"] == 0
