"""Artefact checks of a fused volume: the project's, not a convention of the literature.

- ``background``: the 99th percentile of the fused values where both sources are 0 (the normalised
  sources' background, clipped to exactly 0 by :mod:`lpmnet.volumes.normalize`). A fusion should leave
  empty space empty; LPM-Net trained too briefly lifts it to 0.3-0.7. Shipped models must stay at
  or below 0.02.
- ``lattice``: how much more the fused volume's spectrum peaks at the period of the Mamba windows
  (16 voxels) than that of the mean fusion ``(A + B) / 2``, along the worst axis. Per axis, the
  power ``P(nu) = mean |sum_n w_n x_n exp(-2 pi i nu n)|^2`` over all lines along that axis (``w`` a
  Hann window, so that the far stronger low frequencies of the anatomy do not leak), at exactly
  nu = 1/16 and at its neighbours (1/16) * r and (1/16) / r, r = 1 + 48/N (the upper one 3 frequency
  bins away, outside the window's main lobe); the peak is P(1/16) over the neighbours' geometric
  mean (1 for any smooth power-law spectrum), and the check is the fused volume's peak over
  the mean fusion's, maximum over the axes of at least 64 voxels (4 windows; shorter axes cannot
  resolve the peak). 1 = no more lattice than the sources have; the shipped models must stay at or
  below 1.10. The power alone would not do: a fusion with more contrast than the mean (the maximum,
  say) has more power at every frequency, 1/16 included, without any lattice.
"""

from __future__ import annotations

import math

import torch

#: Period (voxels) whose component ``lattice`` measures: the window edge of LPM-Net's Mamba layers.
LATTICE_PERIOD = 16
#: Shortest axis (voxels) whose spectrum ``lattice`` inspects: 4 windows.
LATTICE_MIN_LENGTH = 64
#: Distance (in frequency bins 1/N) of the upper neighbour the 1/16 peak is compared with.
NEIGHBOUR_BINS = 3
#: Percentile of the fused background values that ``background`` reports.
BACKGROUND_PERCENTILE = 99.0

#: Why a check is NaN (the tables' notes).
UNDEFINED = {
    "background": "undefined: no voxel where both sources are 0",
    "lattice": f"undefined: no axis of at least {LATTICE_MIN_LENGTH} voxels where the mean of the sources has a "
               "spectrum",
}


def background_level(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """The 99th percentile (nearest rank) of ``f`` where ``a`` and ``b`` are both <= 0 (NaN without
    such voxels)."""
    values = f[(a <= 0) & (b <= 0)]
    if values.numel() == 0:
        return torch.tensor(math.nan, dtype=f.dtype)
    rank = max(1, math.ceil(values.numel() * BACKGROUND_PERCENTILE / 100))
    return torch.kthvalue(values.cpu(), rank).values


def _powers(x: torch.Tensor, axis: int, frequencies) -> torch.Tensor:
    """The Hann-windowed power at each of ``frequencies`` (cycles/voxel), averaged over the lines
    along ``axis``: one pass over ``x`` for all of them."""
    n = x.shape[axis]
    position = torch.arange(n, dtype=torch.float64, device=x.device)
    hann = torch.sin(math.pi * (position + 0.5) / n) ** 2
    angle = 2 * math.pi * torch.tensor(frequencies, dtype=torch.float64, device=x.device)[:, None] * position
    taps = torch.cat((hann * torch.cos(angle), hann * torch.sin(angle)))  # (2F, n): real parts, imaginary parts
    projected = torch.tensordot(x.to(torch.float64).movedim(axis, -1), taps.T, dims=1)  # (..., 2F)
    real, imaginary = projected.square().flatten(0, -2).mean(0).chunk(2)
    return real + imaginary


def periodic_power(x: torch.Tensor, axis: int, frequency: float) -> torch.Tensor:
    """Mean over the lines along ``axis`` of the Hann-windowed power at ``frequency`` (cycles/voxel)."""
    return _powers(x, axis, [frequency])[0]


def spectral_peak(x: torch.Tensor, axis: int, period: int = LATTICE_PERIOD) -> torch.Tensor:
    """P(1/period) over the geometric mean of P at (1/period) * r and (1/period) / r along ``axis``,
    r = 1 + 3 period / N (the upper neighbour 3 frequency bins away). Symmetric in log frequency, so
    that a smooth power-law spectrum, whatever its slope, has a peak of exactly 1."""
    centre = 1 / period
    r = 1 + NEIGHBOUR_BINS * period / x.shape[axis]
    at_centre, above, below = _powers(x, axis, [centre, centre * r, centre / r])
    return at_centre / torch.sqrt(above * below)


def lattice_ratio(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor, period: int = LATTICE_PERIOD) -> torch.Tensor:
    """max over the axes of >= 64 voxels of spectral_peak(f) / spectral_peak((a + b) / 2); NaN without
    such an axis or where the mean fusion has no spectrum there."""
    mean = (a + b) / 2
    ratios = [spectral_peak(f, axis, period) / spectral_peak(mean, axis, period)
              for axis in range(f.ndim) if f.shape[axis] >= LATTICE_MIN_LENGTH]
    ratios = [r for r in ratios if torch.isfinite(r)]
    return torch.stack(ratios).max() if ratios else torch.tensor(math.nan, dtype=torch.float64)


def compute(a, b, f, axis, names):
    """Values of ``names`` (the slice axis is irrelevant here: both checks are 3D)."""
    checks = {"background": lambda: background_level(a, b, f), "lattice": lambda: lattice_ratio(a, b, f)}
    return {name: checks[name]() for name in names}, {name: None for name in names}
