"""Intensity normalisation (numpy; scipy for the head's mask).

Robust min-max scaling: clip at low/high percentiles (computed over a foreground mask
or the whole volume), then map the clipped range linearly onto [0, 1].  Nothing here
assumes a zero or non-negative background: z-scored data (negative background), CT in
Hounsfield units and scaled integer data are all handled the same way.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "UNIT_RANGE",
    "unit_range",
    "minmax01",
    "percentile_window",
    "percentile_clip",
    "normalize_intensity",
    "otsu_threshold",
    "foreground_mask",
    "head_mask",
    "head_windows",
    "in_head",
    "normalize_in_head",
]


def _as_float(x) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"expected a numeric array, got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False) if arr.dtype != np.float64 else arr
    if arr.size == 0:
        raise ValueError("empty array")
    if not np.all(np.isfinite(arr)):
        raise ValueError("array contains NaN or inf values")
    return arr


def _selected(arr: np.ndarray, mask) -> np.ndarray:
    """Values of ``arr`` inside ``mask`` (None = all, 'otsu' = automatic foreground)."""
    if mask is None:
        return arr.ravel()
    if isinstance(mask, str):
        if mask != "otsu":
            raise ValueError(f"unknown mask method {mask!r}; use None, 'otsu' or a boolean array")
        mask = foreground_mask(arr)
    m = np.asarray(mask)
    if m.shape != arr.shape:
        raise ValueError(f"mask shape {m.shape} differs from data shape {arr.shape}")
    values = arr[m.astype(bool)]
    if values.size == 0:
        raise ValueError("mask selects no voxel")
    return values


def minmax01(x, mask=None) -> np.ndarray:
    """Map ``x`` linearly so that its min -> 0 and max -> 1 (float32).

    With ``mask`` the min/max are taken inside the mask and the result is clipped to
    [0, 1].  A constant input gives zeros (never NaN).
    """
    arr = _as_float(x)
    values = _selected(arr, mask)
    lo, hi = float(values.min()), float(values.max())
    return _rescale(arr, lo, hi)


#: The intensity convention of a source volume wherever a fusion method, its training or the metrics
#: take one (recorded in the fusion sidecars): :func:`unit_range`.
UNIT_RANGE = "per-volume min-max to [0, 1] of each input"


def unit_range(x, normalize: bool = True) -> np.ndarray:
    """A source volume in [0, 1] (float32) as the fusion methods, their training and the metrics take it;
    the one owner of that convention, which the file-level functions (:func:`lpmnet.engine.fuse.fuse_files`,
    :func:`lpmnet.engine.train.load_pair`, :func:`lpmnet.methods.classical.fuse_classical_files`) and the
    command line's metrics call.

    ``normalize=True``: ``x`` is a raw volume (the command line's inputs), min-max scaled over the whole
    volume (:func:`minmax01`; a constant volume gives zeros). ``normalize=False``: ``x`` was normalised
    before (:func:`normalize_intensity`, the workflow's ``normalize`` rule) and is used as it is, as
    float32, after a check that it lies in [0, 1] (ValueError otherwise) instead of being scaled again.

    Both give the same values for a volume spanning exactly [0, 1] (min-max scaling is then the identity),
    as the workflow's normalised volumes do: its ``normalize`` rule is the last step before the models, after
    the optional resize, so the workflow's jobs pass ``normalize=False`` and scale nothing again.
    """
    if normalize:
        return minmax01(x)
    arr = _as_float(x).astype(np.float32, copy=False)
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"expected a volume normalised to [0, 1], its values span [{lo:.6g}, {hi:.6g}]: "
                         "normalise it first (normalize=True)")
    return arr


def _rescale(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if not hi > lo:
        return np.zeros(arr.shape, dtype=np.float32)
    out = (arr.astype(np.float64) - lo) / (hi - lo)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def percentile_window(x, low: float = 0.5, high: float = 99.5, mask=None) -> tuple[float, float]:
    """The (low, high) percentile values of ``x`` over ``mask`` (or the whole array).

    ``mask`` may be None (whole volume), ``'otsu'`` (automatic foreground, see
    :func:`foreground_mask`) or a boolean array of ``x``'s shape.
    """
    if not (0.0 <= low < high <= 100.0):
        raise ValueError(f"need 0 <= low < high <= 100, got low={low}, high={high}")
    arr = _as_float(x)
    values = _selected(arr, mask)
    lo, hi = np.percentile(values.astype(np.float64), [low, high])
    return float(lo), float(hi)


def percentile_clip(x, low: float = 0.5, high: float = 99.5, mask=None) -> np.ndarray:
    """``x`` clipped to its [low, high] percentile window (float32, same shape)."""
    lo, hi = percentile_window(x, low, high, mask)
    return np.clip(_as_float(x), lo, hi).astype(np.float32)


def normalize_intensity(
    x, low: float = 0.5, high: float = 99.5, mask=None, *, return_window: bool = False
):
    """Percentile-clip then min-max to [0, 1] (float32).

    The window is computed over ``mask`` (None = whole volume, ``'otsu'`` = automatic
    foreground, or a boolean array) but applied to every voxel.  With
    ``return_window=True`` returns ``(normalised, (lo, hi))`` so the window can be
    recorded.  A window of zero width (e.g. a constant volume) gives zeros.
    """
    lo, hi = percentile_window(x, low, high, mask)
    out = _rescale(_as_float(x), lo, hi)
    return (out, (lo, hi)) if return_window else out


def otsu_threshold(x, bins: int = 256) -> float:
    """Otsu's threshold of the values of ``x`` (between-class variance maximum)."""
    arr = _as_float(x).ravel().astype(np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    if hi == lo:
        return lo
    counts, edges = np.histogram(arr, bins=bins, range=(lo, hi))
    centers = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(counts).astype(np.float64)
    w1 = w0[-1] - w0
    s0 = np.cumsum(counts * centers)
    m0 = np.divide(s0, w0, out=np.zeros_like(s0), where=w0 > 0)
    m1 = np.divide(s0[-1] - s0, w1, out=np.zeros_like(s0), where=w1 > 0)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def foreground_mask(x, bins: int = 256) -> np.ndarray:
    """Boolean foreground: voxels above Otsu's threshold (works for any background value)."""
    arr = _as_float(x)
    return arr > otsu_threshold(arr, bins=bins)


def head_mask(anatomical) -> np.ndarray:
    """The head of an anatomical volume: its Otsu foreground closed by 2 voxels and with the holes filled
    (ventricles, dark lesions, the dark brain inside a bright scalp), so that percentiles taken over it are the
    whole head's, not its bright tissue's. A head cut by the field of view (a cropped template, a few thick
    slices) keeps its voxels on the volume's faces, and its holes are filled too."""
    from scipy import ndimage

    closing = 2
    # Closing erodes from outside the volume too: the foreground is first extended beyond the faces.
    foreground = np.pad(foreground_mask(anatomical), closing, mode="edge")
    head = ndimage.binary_fill_holes(
        ndimage.binary_closing(foreground, iterations=closing)[(slice(closing, -closing),) * foreground.ndim])
    # The dark inside of a head cut by a face of the volume reaches that face, so it is no hole in 3D; in each
    # slice across the face the head is still a closed outline.
    for axis in range(head.ndim):
        if head.take(0, axis).any() or head.take(-1, axis).any():
            head |= np.stack([ndimage.binary_fill_holes(s) for s in np.moveaxis(head, axis, 0)], axis=axis)
    return head


def head_windows(x1, x2, low: float = 0.5, high: float = 99.5):
    """(the head of ``x1`` (:func:`head_mask`), the [low, high] percentile window of each volume inside it), or
    None where ``x1`` has no head (no foreground: a constant volume)."""
    head = head_mask(x1)
    if not head.any():
        return None
    return head, tuple(percentile_window(x, low, high, head) for x in (x1, x2))


def in_head(x, head, window) -> np.ndarray:
    """``x`` mapped from ``window`` (lo, hi) onto [0, 1] inside ``head`` and exactly 0 outside it (float32)."""
    return np.where(head, _rescale(_as_float(x), *window), np.float32(0))


def normalize_in_head(x1, x2, low: float = 0.5, high: float = 99.5) -> tuple[np.ndarray, np.ndarray]:
    """Two co-registered volumes as skull-stripped scans and many pipelines give them: each windowed to its
    [low, high] percentiles inside the head of ``x1`` (:func:`head_mask`) and exactly 0 outside it."""
    found = head_windows(x1, x2, low, high)
    if found is None:
        raise ValueError("the first volume has no head to normalise inside: it has no foreground")
    head, windows = found
    return tuple(in_head(x, head, window) for x, window in zip((x1, x2), windows))
