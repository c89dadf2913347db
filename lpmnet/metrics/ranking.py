"""Which way each metric is better, and the key that ranks one value: what the comparison tables, the viewer
and the held-out validation order results by. Free of pandas and scipy, so that training and fusion jobs can
rank too."""

from __future__ import annotations

import numpy as np

__all__ = ["HIGHER", "LOWER", "CLOSER_TO_ZERO", "METRIC_DIRECTIONS", "METRIC_ARROWS", "ranked_values", "score_key",
           "rank_key"]

HIGHER, LOWER, CLOSER_TO_ZERO = "higher", "lower", "closer_to_zero"

#: Which way is better, per metric.  ``closer_to_zero`` metrics are ranked and tested on the
#: absolute value of each subject's value (an error of -0.1 is as bad as one of +0.1, and signed
#: errors of opposite sign must not average out to a perfect score).  Metrics not listed here are
#: reported (mean, std, test) but not ranked and left out of the mean rank.
METRIC_DIRECTIONS = {
    "SSIM": HIGHER,
    "Qabf": HIGHER,
    "MI": HIGHER,
    "SCD": HIGHER,
    "VIF": HIGHER,
    "AG": HIGHER,
    "SD": HIGHER,
    "SF": HIGHER,
    "EN": HIGHER,
    "PSNR": HIGHER,
    "Nabf": LOWER,          # artefacts the fusion adds: less is better
    "rSFe": CLOSER_TO_ZERO,  # signed relative spatial-frequency error: 0 = the reference SF exactly
    "background": LOWER,    # fused level where both sources are empty
    "lattice": LOWER,       # the 16-voxel window period over the mean fusion's
}

#: How the tables mark each direction: higher, lower, closer to zero is better.
METRIC_ARROWS = {HIGHER: "\u2191", LOWER: "\u2193", CLOSER_TO_ZERO: "\u21920"}


def ranked_values(values: np.ndarray, direction: str) -> np.ndarray:
    """The per-subject numbers that ranks and tests use."""
    return np.abs(values) if direction == CLOSER_TO_ZERO else values


def score_key(score: float, direction: str) -> float:
    """Smaller is better; rounded so that equal results count as ties.

    The means of the same values taken in another order can differ in the last bit, which
    must not break a tie.
    """
    key = -score if direction == HIGHER else score
    return float(f"{key:.12g}")


def rank_key(value: float, direction: str) -> float:
    """The key that orders one value of a metric with ``direction`` as the tables rank it: smaller is better,
    equal results tie."""
    return score_key(float(ranked_values(np.float64(value), direction)), direction)
