"""Computation of the metrics (torch, CPU or CUDA): :func:`compute_metrics`, :func:`compute_all`.

Importing :mod:`lpmnet.metrics` does not import this module (nor torch): the names, conventions and the
per-job records are what the tables and figures need. ``lpmnet.metrics.compute_all`` and the other names
of this module are still reachable from the package, imported on first use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from lpmnet.metrics import ARTEFACT_NAMES, CONVENTIONS, METRIC_NAMES, TABLE_CONVENTIONS, artefacts, \
    lpmnet_convention, standard_convention
from lpmnet.metrics._filters import cpu_block_parallelism

_MODULES = {"lpmnet": lpmnet_convention, "standard": standard_convention, "artefacts": artefacts}
#: The metrics each convention defines.
_NAMES = {"lpmnet": METRIC_NAMES, "standard": METRIC_NAMES, "artefacts": ARTEFACT_NAMES}


@dataclass(frozen=True)
class MetricSet:
    """Metric values of one convention.

    ``values`` maps metric name to float, in ``METRIC_NAMES`` order. ``slices_used`` maps metric
    name to the number of 2D slices averaged: in ``standard`` the slices left after skipping those
    without content or where the metric is undefined; in ``lpmnet`` the number of slices for the
    slice-wise metrics (Qabf, MI, Nabf) and None for whole-volume metrics. ``to_dict()`` gives the
    same as plain dicts (values may be NaN or inf floats). ``notes`` says, for each undefined (NaN)
    value, why it is undefined, so that tables can show the reason instead of a bare NaN.
    """

    convention: str
    values: dict
    slices_used: dict
    notes: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"convention": self.convention, "values": dict(self.values),
                "slices_used": dict(self.slices_used), "notes": dict(self.notes)}


_AXES = "DHW"


def undefined_reason(convention, metric, shape, axis=0, slices_used=None):
    """Why ``metric`` of ``convention`` came out NaN for volumes of ``shape`` (D, H, W)."""
    if convention == "artefacts":
        return artefacts.UNDEFINED[metric]
    from lpmnet.metrics._shared import VIF_MIN_SIZE
    from lpmnet.metrics.standard_convention import SSIM_WINDOW

    if convention == "lpmnet" and metric == "VIF" and min(shape) < VIF_MIN_SIZE:
        small = int(np.argmin(shape))
        return (f"undefined: the 3D VIF needs at least {VIF_MIN_SIZE} voxels along every axis, this volume has "
                f"{shape[small]} along {_AXES[small]}")
    plane = [n for i, n in enumerate(shape) if i != axis]
    window = {"VIF": VIF_MIN_SIZE, "SSIM": SSIM_WINDOW}.get(metric)
    if convention == "standard" and window and min(plane) < window:
        return (f"undefined: the 2D {metric} needs slices of at least {window}x{window} voxels, the slices along "
                f"{_AXES[axis]} are {plane[0]}x{plane[1]}")
    if slices_used == 0:
        return "undefined: no slice where the metric is defined (no content in the sources or the fused image)"
    return "undefined for these volumes (0/0: a source or the fused image has no contrast)"


def _as_tensor(x, name, device):
    if isinstance(x, torch.Tensor):
        t = x.detach()
        target = t.device if device is None else torch.device(device)
    else:
        array = np.asarray(x, dtype=np.float64)
        # torch cannot wrap a read-only buffer (e.g. a memory-mapped image) without a copy.
        t = torch.from_numpy(array if array.flags.writeable else array.copy())
        target = torch.device("cpu") if device is None else torch.device(device)
    if t.ndim != 3:
        raise ValueError(f"{name} must be a 3D (D, H, W) volume, got shape {tuple(t.shape)}")
    t = t.to(device=target, dtype=torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} has non-finite values")
    return t


def _prepare(a, b, f, axis, device, metrics):
    a, b, f = (_as_tensor(x, n, device) for x, n in ((a, "A"), (b, "B"), (f, "F")))
    if not a.shape == b.shape == f.shape:
        raise ValueError(f"A, B and F must have one shape, got {tuple(a.shape)}, {tuple(b.shape)}, "
                         f"{tuple(f.shape)}")
    if min(a.shape) < 2:
        raise ValueError(f"every dimension must be at least 2, got shape {tuple(a.shape)}")
    if not b.device == f.device == a.device:
        raise ValueError("A, B and F must be on one device (or pass device=)")
    if not -3 <= axis < 3:
        raise ValueError(f"axis must be in -3..2, not {axis}")
    known = METRIC_NAMES + ARTEFACT_NAMES
    names = known if metrics is None else tuple(metrics)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {known}")
    names = tuple(n for n in known if n in names)
    return a, b, f, axis % 3, names


def _check_convention(convention):
    if convention not in _MODULES:
        raise ValueError(f"convention must be one of {TABLE_CONVENTIONS}, not {convention!r}")


def _evaluate(a, b, f, convention, axis, names):
    names = tuple(n for n in names if n in _NAMES[convention])
    with torch.no_grad(), cpu_block_parallelism(a.device):
        values, used = _MODULES[convention].compute(a, b, f, axis, names)
    values = {n: float(values[n]) for n in names}
    notes = {n: undefined_reason(convention, n, tuple(f.shape), axis, used[n])
             for n in names if math.isnan(values[n])}
    return MetricSet(convention, values, {n: used[n] for n in names}, notes)


def compute_metrics(a, b, f, convention: str = "lpmnet", axis: int = 0, device=None,
                    metrics=None) -> MetricSet:
    """Metrics of fused ``f`` against sources ``a`` and ``b`` in one convention.

    ``a``, ``b``, ``f``: 3D (D, H, W) numpy arrays or torch tensors of one shape (each dimension >= 2);
    for ``"lpmnet"`` they should already be in [0, 1]. ``axis``: the slice axis of the slice-wise
    metrics (0 is the LPM-Net code's). ``device``: where to compute; None means the inputs' device
    (CPU for numpy). ``metrics``: an optional subset of ``METRIC_NAMES`` and ``ARTEFACT_NAMES`` (all by
    default; each convention computes those it defines).
    """
    _check_convention(convention)
    a, b, f, axis, names = _prepare(a, b, f, axis, device, metrics)
    return _evaluate(a, b, f, convention, axis, names)


def compute_all(a, b, f, conventions=CONVENTIONS, axis: int = 0, device=None,
                metrics=None) -> dict:
    """``compute_metrics`` for each convention: a dict convention -> MetricSet."""
    for convention in conventions:
        _check_convention(convention)
    a, b, f, axis, names = _prepare(a, b, f, axis, device, metrics)
    return {c: _evaluate(a, b, f, c, axis, names) for c in conventions}
