"""A fusion model judged on real pairs it never saw, against the classical rules a user would try first.

For each held-out pair (two raw, co-registered volumes on one grid) and each of two normalisations, the
model's fusion and the mean, max and Laplacian-pyramid fusions are scored with the paper's eight metrics in
the lpmnet convention and the artefact checks. A metric is *won* when the model beats every rival on it
(ranked as the comparison tables rank it). The two normalisations are the inputs a model meets in practice:

- ``workflow``: the workflow's own (:func:`lpmnet.volumes.normalize.normalize_intensity`: percentile window
  over each volume's Otsu foreground, applied to every voxel);
- ``head``: percentiles taken inside the head (the first, anatomical, volume's filled foreground) and
  everything outside it exactly 0, as skull-stripped scans and many pipelines give
  (:func:`lpmnet.volumes.normalize.normalize_in_head`).

A functional second volume (PET, SPECT) is fused and scored on its luminance through ``colour``, as the
workflow fuses colour pairs.

:func:`blend_profile` answers where the metrics put the mean and the max fusion: it scores the blends
``(1 - t) * mean + t * max`` of a pair, so that each metric's best blend shows whether it rewards mean-like
or max-like volumes, and whether any single volume can beat both ends at once.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from lpmnet.metrics.ranking import METRIC_DIRECTIONS, rank_key
from lpmnet.metrics import ARTEFACT_NAMES, PAPER_METRICS
from lpmnet.methods.classical import fuse_classical
from lpmnet.volumes.io import dhw, load_volume, require_same_grid
from lpmnet.volumes.normalize import normalize_in_head, normalize_intensity

__all__ = ["RIVALS", "NORMALISATIONS", "HeldOutResult", "normalised_pair", "metrics_of", "wins",
           "evaluate_model", "blend_profile", "BLEND_STEPS", "HELD_OUT_COLUMNS", "held_out_rows", "write_held_out_table",
           "read_held_out_table", "fused_with_grid_shift", "grid_cancelled"]

#: The rules a model must beat together.
RIVALS = ("mean", "max", "laplacian")
NORMALISATIONS = ("workflow", "head")
#: The blends of :func:`blend_profile`: t = 0 (the mean fusion) to 1 (the max fusion).
BLEND_STEPS = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))


def normalised_pair(path1, path2, normalisation: str, low: float = 0.5, high: float = 99.5, colour=None,
                    mask: str = "otsu"):
    """The two volumes of a pair in (D, H, W) layout, in [0, 1], as ``normalisation`` gives them (``low``,
    ``high``: the percentiles; ``mask``: the workflow's, "otsu" or "none"), the second as its luminance
    through ``colour`` when it is functional. Volumes on different grids raise
    :class:`lpmnet.errors.InputError` naming the files."""
    from lpmnet.volumes.colour import colour_luminance

    if normalisation not in NORMALISATIONS:
        raise ValueError(f"normalisation must be one of {', '.join(NORMALISATIONS)}, not {normalisation!r}")
    v1, v2 = load_volume(path1), load_volume(path2)
    require_same_grid(v1, v2)
    x1, x2 = dhw(v1.data), dhw(v2.data)
    if normalisation == "workflow":
        a, b = (normalize_intensity(x, low, high, mask="otsu" if mask == "otsu" else None) for x in (x1, x2))
    else:
        a, b = normalize_in_head(x1, x2, low, high)
    if colour:
        b = colour_luminance(b, colour)[0]
    return np.asarray(a, np.float32), np.asarray(b, np.float32)


def metrics_of(a, b, fused) -> dict:
    """The paper's eight metrics (lpmnet convention) and the artefact checks of one fusion."""
    from lpmnet.metrics.compute import compute_metrics

    fused = np.asarray(fused, np.float32)
    return {**compute_metrics(a, b, fused, "lpmnet", metrics=PAPER_METRICS).values,
            **compute_metrics(a, b, fused, "artefacts").values}


def _better(metric, value, other) -> bool:
    direction = METRIC_DIRECTIONS[metric]
    return rank_key(value, direction) < rank_key(other, direction)


def wins(scores: dict, candidate: str, rivals=RIVALS) -> list[str]:
    """The paper metrics on which ``candidate`` beats every one of ``rivals`` (``scores``: method -> metrics)."""
    return [m for m in PAPER_METRICS if all(_better(m, scores[candidate][m], scores[r][m]) for r in rivals)]


@dataclass(frozen=True)
class HeldOutResult:
    """One pair under one normalisation: every method's metrics, and what the model won."""

    normalisation: str
    scores: dict            # method -> {metric: value}, the model under ``model``
    won: list

    @property
    def model(self) -> dict:
        return self.scores["model"]


def evaluate_model(model_path, path1, path2, colour=None, method="lpmnet", device="cpu", low=0.5, high=99.5,
                   mask="otsu", normalisations=NORMALISATIONS):
    """:class:`HeldOutResult` of a checkpoint on one raw pair, for each of ``normalisations`` (``low``,
    ``high``, ``mask``: the workflow's normalisation settings)."""
    from lpmnet.methods import get_method

    spec = get_method(method)
    model, _ = spec.load(model_path, map_location=device)
    model.to(device)
    results = []
    for normalisation in normalisations:
        a, b = normalised_pair(path1, path2, normalisation, low, high, colour, mask)
        fusions = {"model": spec.fuse(model, a, b, device=device)["fused"],
                   **{rule: fuse_classical(rule, a, b) for rule in RIVALS}}
        scores = {name: metrics_of(a, b, fused) for name, fused in fusions.items()}
        results.append(HeldOutResult(normalisation, scores, wins(scores, "model")))
    return results


def blend_profile(a, b, others=None) -> dict:
    """Per paper metric: its value along the blends ``(1 - t) * mean + t * max`` (:data:`BLEND_STEPS`), the
    best blend's t, and for each fusion of ``others`` (name -> volume) its value and whether it beats both
    the mean (t = 0) and the max (t = 1) fusion."""
    mean, maximum = fuse_classical("mean", a, b), fuse_classical("max", a, b)
    along = [metrics_of(a, b, (1 - t) * mean + t * maximum) for t in BLEND_STEPS]
    scored = {name: metrics_of(a, b, fused) for name, fused in (others or {}).items()}
    profile = {}
    for metric in PAPER_METRICS:
        values = [row[metric] for row in along]
        best = min(range(len(values)), key=lambda i: rank_key(values[i], METRIC_DIRECTIONS[metric]))
        profile[metric] = {
            "blend": dict(zip(BLEND_STEPS, values)),
            "best_t": BLEND_STEPS[best],
            "fusions": {name: {"value": s[metric], "beats_mean_and_max": all(
                _better(metric, s[metric], end) for end in (values[0], values[-1]))} for name, s in scored.items()},
        }
    return profile


def fused_with_grid_shift(fuse, a, b, shift) -> np.ndarray:
    """``fuse(a, b)`` with the fusion's own grid (tiles, Mamba windows) moved against the anatomy: both
    volumes padded in front by ``shift`` voxels (one int, or one per axis), fused, cropped back."""
    shifts = (shift,) * a.ndim if np.isscalar(shift) else tuple(shift)
    if len(shifts) != a.ndim or min(shifts) < 0:
        raise ValueError(f"shift must be one count >= 0 or one per axis of the {a.ndim}D volumes, not {shift!r}")
    pad = [(s, 0) for s in shifts]
    fused = np.asarray(fuse(np.pad(a, pad), np.pad(b, pad)))
    return fused[tuple(slice(s, None) for s in shifts)]


def grid_cancelled(fuse, a, b, period: int) -> np.ndarray:
    """The average of ``fuse``'s fusions with its grid moved by 0 or ``period`` / 2 voxels along each axis
    (every combination): a component of the fusion locked to a grid of that period, odd in its harmonic
    along some axis, cancels; the anatomy stays where it was. ``period``: even, at least 2."""
    if period < 2 or period % 2:
        raise ValueError(f"period must be an even number of voxels >= 2, not {period!r}")
    moves = itertools.product((0, period // 2), repeat=a.ndim)
    return np.mean([fused_with_grid_shift(fuse, a, b, shifts) for shifts in moves], axis=0)


#: The columns of a held-out table (:func:`held_out_rows`): one row per pair, normalisation and method.
HELD_OUT_COLUMNS = ("dataset", "subject", "pair", "normalisation", "method", *PAPER_METRICS, *ARTEFACT_NAMES, "wins")


def held_out_rows(label: dict, results) -> list[dict]:
    """The table rows of one pair's :class:`HeldOutResult` s; ``label`` gives its dataset, subject and pair.
    The model's row lists the metrics it won in ``wins``."""
    return [{**{k: label[k] for k in ("dataset", "subject", "pair")}, "normalisation": r.normalisation,
             "method": method, **{m: scores[m] for m in (*PAPER_METRICS, *ARTEFACT_NAMES)},
             "wins": ",".join(r.won) if method == "model" else ""}
            for r in results for method, scores in r.scores.items()]


def write_held_out_table(path, rows) -> None:
    """Write held-out rows as a TSV, atomically."""
    import csv

    from lpmnet.volumes.io import atomic_output

    with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, HELD_OUT_COLUMNS, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()} for row in rows)


def read_held_out_table(path) -> list[dict]:
    """The rows of a held-out table (:func:`write_held_out_table`), metric values as floats."""
    import csv

    with open(path, newline="") as f:
        return [{k: v if k in ("dataset", "subject", "pair", "normalisation", "method", "wins") else float(v)
                 for k, v in row.items()} for row in csv.DictReader(f, delimiter="\t")]
