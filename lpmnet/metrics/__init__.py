"""Fusion quality metrics in two labelled conventions, and the project's artefact checks.

The fusion literature uses one name for several different numbers, so every value carries the
convention that produced it (the definitions: the docstrings of each convention's module):

- ``"lpmnet"`` (:mod:`lpmnet.metrics.lpmnet_convention`): the LPM-Net code's own 3D definitions,
  which reproduce the paper's tables; inputs are expected in [0, 1].
- ``"standard"`` (:mod:`lpmnet.metrics.standard_convention`): the community's 2D toolboxes applied
  slice by slice on min-max normalised 0..255 data, for comparison with published 2D tables.
- ``"artefacts"`` (:mod:`lpmnet.metrics.artefacts`): the project's artefact checks, ``background``
  (fused level where both sources are empty) and ``lattice`` (the 16-voxel window period against the
  mean fusion's); not a convention of the literature, listed as one so that they reach every table.

A metric that is undefined for the data (0/0, e.g. a constant source) is NaN; PSNR of a fused
volume equal to both sources is +inf. A constant volume min-max normalises to zeros, so that the
gradient, spread and entropy of a constant F are 0 instead of the LPM-Net code's NaN. Both
conventions run vectorised on CPU or CUDA in float64 (on CPU in cache-sized blocks spread over
torch's thread count).
"""

from __future__ import annotations

METRIC_NAMES = ("SSIM", "Qabf", "MI", "SCD", "VIF", "AG", "SD", "SF", "rSFe", "EN", "PSNR", "Nabf")
#: The eight metrics of LPM-Net's paper tables, in their order.
PAPER_METRICS = ("SSIM", "Qabf", "MI", "SCD", "VIF", "AG", "SD", "rSFe")
ARTEFACT_NAMES = ("background", "lattice")
CONVENTIONS = ("lpmnet", "standard")
#: The conventions and the artefact checks, the "convention" column of every table.
TABLE_CONVENTIONS = (*CONVENTIONS, "artefacts")

#: What :mod:`lpmnet.metrics.compute` provides; imported with it (and torch) when first asked for, so that
#: the tables and figures, which need only the names above, run without torch.
_COMPUTE_API = ("MetricSet", "compute_all", "compute_metrics", "undefined_reason")


def __getattr__(name):
    if name in _COMPUTE_API:
        from lpmnet.metrics import compute

        return getattr(compute, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
