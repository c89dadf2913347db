"""Classical voxel-wise reference fusions of two co-registered volumes.

Rules (inputs are expected in [0, 1], e.g. after :func:`lpmnet.volumes.normalize.minmax01`, but any
common range works):

* ``mean``: ``(x1 + x2) / 2``.
* ``max``: voxel-wise maximum.
* ``pca``: the standard PCA fusion rule ``w1 * x1 + w2 * x2`` with ``(w1, w2)`` the principal
  eigenvector of the 2x2 covariance matrix of the two sources (all voxels), normalised to sum
  1.  The eigenvector's components are taken in absolute value, so anti-correlated contrasts
  (where the textbook ``v / sum(v)`` would give a negative weight or divide by ~0) still get
  two weights in [0, 1].  Sources with equal variance and no covariance (no principal
  direction), or two constant sources, get equal weights.  See :func:`pca_weights`.
* ``laplacian``: 3D Laplacian-pyramid fusion.  Each source is decomposed into ``levels``
  pyramid levels (``levels - 1`` band-pass detail levels and one low-pass residual): a level is
  smoothed with a Gaussian (sigma 1 voxel) and resampled (linear, ``scipy.ndimage.zoom``) to
  half its size, rounded up, and each detail level is the level minus its coarser level
  resampled back to its exact shape, so odd sizes reconstruct exactly.  Detail coefficients
  are selected by maximum absolute value, the coarsest levels are averaged, and the fused
  pyramid is collapsed.  The result is clipped to the common value range of the inputs
  (detail selection may overshoot slightly).  It works on the voxel grid (anisotropic voxels
  are smoothed anisotropically in mm).

:func:`fuse_classical` works on arrays; :func:`fuse_classical_files` on NIfTI files, writing a
float32 volume with exactly the first input's affine and a JSON sidecar.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage

from lpmnet import __version__
from lpmnet.volumes.colour import colour_luminance, write_colour_fusion
from lpmnet.volumes.io import atomic_write_json, file_digest, load_volume, require_same_grid, save_volume, sidecar_path
from lpmnet.volumes.normalize import unit_range

__all__ = [
    "CLASSICAL_METHODS",
    "METHOD_DESCRIPTIONS",
    "LAPLACIAN_LEVELS",
    "LAPLACIAN_SIGMA",
    "NORMALIZATION",
    "fuse_classical",
    "fuse_classical_files",
    "pca_weights",
    "laplacian_pyramid",
    "collapse_pyramid",
]

#: Number of pyramid levels of the ``laplacian`` rule (the coarsest, low-pass level included).
LAPLACIAN_LEVELS = 3
#: Gaussian smoothing (voxels) before each halving of the pyramid.
LAPLACIAN_SIGMA = 1.0

NORMALIZATION = ("each source min-max scaled to [0, 1] over the whole volume "
                 "(lpmnet.volumes.normalize.minmax01) before fusion; output float32 in [0, 1]")
#: The sidecar's Normalization of a fusion of sources normalised before (``normalize=False``).
GIVEN_NORMALIZATION = "none here: sources normalised to [0, 1] before, used as given; output float32 in [0, 1]"


# --------------------------------------------------------------------------- helpers
def _as_pair(x1, x2) -> tuple[np.ndarray, np.ndarray]:
    arrays = []
    for name, x in (("x1", x1), ("x2", x2)):
        arr = np.asarray(x)
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"{name} must be a numeric array, got dtype {arr.dtype}")
        if arr.size == 0:
            raise ValueError(f"{name} is empty")
        arr = arr.astype(np.float32, copy=False)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains NaN or inf values")
        arrays.append(arr)
    if arrays[0].shape != arrays[1].shape:
        raise ValueError(f"x1 and x2 must have one shape, got {arrays[0].shape} and {arrays[1].shape}")
    return arrays[0], arrays[1]


def _resample(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Linear resampling of ``a`` onto exactly ``shape`` (voxel edges aligned)."""
    if a.shape == tuple(shape):
        return a
    factors = [t / s for t, s in zip(shape, a.shape)]
    out = ndimage.zoom(a, factors, order=1, mode="nearest", grid_mode=True)
    if out.shape != tuple(shape):  # safety net against rounding in zoom's output shape
        out = out[tuple(slice(0, n) for n in shape)]
        pad = [(0, t - s) for t, s in zip(shape, out.shape)]
        out = np.pad(out, pad, mode="edge")
    return out


# --------------------------------------------------------------------------- rules
def _fuse_mean(x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    return ((x1.astype(np.float64) + x2) / 2.0).astype(np.float32)


def _fuse_max(x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    return np.maximum(x1, x2).astype(np.float32)


def pca_weights(x1, x2) -> tuple[float, float]:
    """Weights ``(w1, w2)`` (>= 0, summing to 1) of the PCA fusion rule.

    The absolute components of the principal eigenvector of the 2x2 covariance of the two
    sources, normalised to sum 1; equal weights when there is no principal direction (both
    sources constant, or equal variances and zero covariance).
    """
    a, b = _as_pair(x1, x2)
    a = a.ravel().astype(np.float64)
    b = b.ravel().astype(np.float64)
    da, db = a - a.mean(), b - b.mean()
    n = max(a.size - 1, 1)
    cov = np.array([[da @ da, da @ db], [da @ db, db @ db]]) / n
    eigvals, eigvecs = np.linalg.eigh(cov)  # ascending eigenvalues
    top = float(eigvals[-1])
    if not top > 0 or (top - float(eigvals[0])) <= 1e-12 * top:
        return 0.5, 0.5
    v = np.abs(eigvecs[:, -1])
    w1 = float(v[0] / v.sum())
    return w1, 1.0 - w1


def _fuse_pca(x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    w1, w2 = pca_weights(x1, x2)
    return (w1 * x1.astype(np.float64) + w2 * x2.astype(np.float64)).astype(np.float32)


def laplacian_pyramid(x, levels: int = LAPLACIAN_LEVELS, sigma: float = LAPLACIAN_SIGMA) -> list[np.ndarray]:
    """Laplacian pyramid of ``x``: ``levels - 1`` detail arrays (finest first), then the low-pass residual.

    Fewer levels are returned when the array cannot be halved any further (every axis of size 1).
    :func:`collapse_pyramid` inverts it exactly (up to float rounding) for any sizes.
    """
    if int(levels) != levels or levels < 1:
        raise ValueError(f"levels must be a positive integer, got {levels!r}")
    current = np.asarray(x, dtype=np.float32)
    pyramid = []
    for _ in range(int(levels) - 1):
        if all(n == 1 for n in current.shape):
            break
        smaller = tuple((n + 1) // 2 for n in current.shape)
        coarse = _resample(ndimage.gaussian_filter(current, sigma, mode="nearest"), smaller)
        pyramid.append(current - _resample(coarse, current.shape))
        current = coarse
    pyramid.append(current)
    return pyramid


def collapse_pyramid(pyramid: list[np.ndarray]) -> np.ndarray:
    """Rebuild the array from a :func:`laplacian_pyramid` (detail levels finest first, residual last)."""
    current = pyramid[-1]
    for detail in reversed(pyramid[:-1]):
        current = detail + _resample(current, detail.shape)
    return current


def _fuse_laplacian(x1: np.ndarray, x2: np.ndarray, levels: int = LAPLACIAN_LEVELS,
                    sigma: float = LAPLACIAN_SIGMA) -> np.ndarray:
    p1 = laplacian_pyramid(x1, levels, sigma)
    p2 = laplacian_pyramid(x2, levels, sigma)
    fused = [np.where(np.abs(d1) >= np.abs(d2), d1, d2) for d1, d2 in zip(p1[:-1], p2[:-1])]
    fused.append((p1[-1] + p2[-1]) / 2.0)
    out = collapse_pyramid(fused)
    lo = min(float(x1.min()), float(x2.min()))
    hi = max(float(x1.max()), float(x2.max()))
    return np.clip(out, lo, hi).astype(np.float32)


#: Fusion rules by name: each takes two float32 arrays of one shape and returns a float32 array.
CLASSICAL_METHODS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "mean": _fuse_mean,
    "max": _fuse_max,
    "pca": _fuse_pca,
    "laplacian": _fuse_laplacian,
}

#: One-line description of each rule (written into the sidecars).
METHOD_DESCRIPTIONS = {
    "mean": "voxel-wise mean (x1 + x2) / 2",
    "max": "voxel-wise maximum",
    "pca": "PCA rule: w1*x1 + w2*x2 with weights from the principal eigenvector (absolute values, "
           "normalised to sum 1) of the 2x2 covariance of the sources",
    "laplacian": f"3D Laplacian pyramid ({LAPLACIAN_LEVELS} levels, Gaussian sigma {LAPLACIAN_SIGMA} voxel, "
                 "linear resampling to exact shapes): max-abs selection of detail coefficients, mean of "
                 "the coarsest level, result clipped to the inputs' value range",
}


def _check_method(method: str) -> Callable:
    try:
        return CLASSICAL_METHODS[method]
    except (KeyError, TypeError):
        raise ValueError(f"unknown classical fusion method {method!r}; "
                         f"choose from {sorted(CLASSICAL_METHODS)}") from None


def fuse_classical(method: str, x1, x2) -> np.ndarray:
    """Fuse two arrays of one shape with the rule ``method`` (a key of :data:`CLASSICAL_METHODS`).

    Inputs should already be in [0, 1]; returns a float32 array of the same shape.
    """
    rule = _check_method(method)
    a, b = _as_pair(x1, x2)
    return np.ascontiguousarray(rule(a, b), dtype=np.float32)


# --------------------------------------------------------------------------- files
def fuse_classical_files(method: str, path1, path2, out_path, normalize: bool = True, colour=None) -> dict:
    """Fuse two co-registered NIfTI files with a classical rule; returns the sidecar dict.

    Both inputs are loaded with :func:`lpmnet.volumes.io.load_volume` (an :class:`InputError` names a
    missing, unreadable, non-3D, non-finite or constant file) and must be on one voxel grid
    (:func:`lpmnet.volumes.io.require_same_grid`; otherwise an :class:`InputError` names ``path2``).
    Each is brought to [0, 1] by :func:`lpmnet.volumes.normalize.unit_range` (the one owner of that
    convention): with ``normalize`` (default) a raw volume is min-max scaled; without, a volume normalised
    before must lie in [0, 1] and is used as it is (both agree exactly on one spanning [0, 1]). It is fused
    and written as float32 to ``out_path``
    (``.nii.gz`` or ``.nii``) with exactly the first input's affine and header as template.
    A JSON sidecar (:func:`sidecar_path`: same name, ``.json``) records the method, the sources
    (path and sha256), the normalisation, the rule's parameters and, as a network's fusion does
    (:func:`lpmnet.engine.fuse.fuse_files`), its ``Seconds`` from reading to writing and its ``ParameterCount``
    (0: nothing learnt).  Both writes are atomic. ``colour``: the second input is functional and fused in
    colour through this colour map, as :func:`lpmnet.engine.fuse.fuse_files` does it.
    """
    _check_method(method)
    out_path = Path(out_path)
    if not out_path.name.lower().endswith((".nii.gz", ".nii")):
        raise ValueError(f"{out_path}: output must end in .nii.gz or .nii")
    tic = time.perf_counter()
    v1, v2 = load_volume(path1), load_volume(path2)
    require_same_grid(v1, v2)
    x1, x2 = unit_range(v1.data, normalize), unit_range(v2.data, normalize)
    if colour:
        x2, cb, cr = colour_luminance(x2, colour)
    fused = fuse_classical(method, x1, x2)

    parameters: dict = {}
    if method == "pca":
        w1, w2 = pca_weights(x1, x2)
        parameters = {"weights": [w1, w2]}
    elif method == "laplacian":
        parameters = {"levels": LAPLACIAN_LEVELS, "sigma_voxels": LAPLACIAN_SIGMA}

    save_volume(out_path, fused, v1.affine, header=v1.header,
                description=f"lpmnet classical fusion: {method}")
    coloured = write_colour_fusion(out_path, fused, cb, cr, v1.affine, v1.header, colour) if colour else None
    seconds = time.perf_counter() - tic
    sidecar = {
        "Description": f"classical reference fusion ({method}) in the grid of the first input",
        "Method": method,
        "MethodDescription": METHOD_DESCRIPTIONS[method],
        "Parameters": parameters,
        "SourceFiles": [{"path": str(p), "sha256": file_digest(p)} for p in (path1, path2)],
        "SpaceOf": str(path1),
        "Normalization": NORMALIZATION if normalize else GIVEN_NORMALIZATION,
        "OutputRange": [float(fused.min()), float(fused.max())],
        "ParameterCount": 0,
        "Seconds": round(seconds, 3),
        **({"Colour": coloured} if coloured else {}),
        "lpmnet_version": __version__,
    }
    atomic_write_json(sidecar_path(out_path), sidecar)
    return sidecar
