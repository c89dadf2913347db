"""Colour fusion of a functional image (PET, SPECT) with an anatomical one, as the 2D fusion literature does it.

The 2D codes (e.g. CDDFuse, EMMA, MambaDFuse on the Harvard MRI-PET/SPECT images) read the functional image
as a colour picture, convert it to YCbCr, fuse the anatomical image with its luminance Y, and put its
chrominance back. In 3D the functional volume is grey, so it is first mapped through a colour map, the
way PET viewers show it:

* :func:`colour_map`: a volume in [0, 1] through a matplotlib colour map (``hot`` by default) -> RGB in [0, 1];
* :func:`rgb_to_ycbcr` / :func:`ycbcr_to_rgb`: the full-range BT.601 (JFIF) transform with its exact
  inverse (OpenCV's ``COLOR_RGB2YCrCb``, which the 2D codes call, uses the same coefficients rounded);
* :func:`colour_luminance`: the luminance a method fuses, scaled from the colour map's luminance range to
  [0, 1] (so that a zero of the functional volume stays 0, as every method and metric expects of a
  normalised volume), and the chrominance to put back;
* :func:`colour_fused`: the fused luminance, scaled back, with that chrominance, as RGB in [0, 1] (a colour
  outside the RGB cube is desaturated, not clipped, so that its luminance stays the fused one);
* :func:`to_rgb24`: RGB in [0, 1] as the unsigned bytes of an RGB24 NIfTI
  (:func:`lpmnet.volumes.io.save_rgb_volume`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: The colour map of a functional volume unless one is asked for: the one most PET viewers use.
DEFAULT_COLOUR_MAP = "hot"
#: Luminance weights of R, G, B (ITU-R BT.601) and the chrominance scales (JFIF: Cb, Cr in [0, 1]).
KR, KG, KB = 0.299, 0.587, 0.114
CB_SCALE, CR_SCALE = 2 * (1 - KB), 2 * (1 - KR)


def colour_map(volume, name=DEFAULT_COLOUR_MAP):
    """RGB (shape ``volume.shape + (3,)``, float32 in [0, 1]) of a volume in [0, 1] through the matplotlib
    colour map ``name``; an unknown name is a ValueError listing the choices."""
    import matplotlib

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        raise ValueError(f"unknown colour map {name!r}; choose one of matplotlib's, e.g. hot, inferno, jet, "
                         "viridis") from None
    values = np.clip(np.asarray(volume, dtype=np.float64), 0.0, 1.0)
    return cmap(values)[..., :3].astype(np.float32)


def rgb_to_ycbcr(rgb):
    """(Y, Cb, Cr), each of shape ``rgb.shape[:-1]``, of RGB in [0, 1]: Y in [0, 1], Cb and Cr in [0, 1]
    around 0.5 (full-range BT.601, as JPEG)."""
    rgb = np.asarray(rgb, dtype=np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = KR * r + KG * g + KB * b
    return y, 0.5 + (b - y) / CB_SCALE, 0.5 + (r - y) / CR_SCALE


def ycbcr_to_rgb(y, cb, cr):
    """RGB (float64, last axis R, G, B) of :func:`rgb_to_ycbcr`'s values, its exact inverse (not clipped)."""
    y, cb, cr = (np.asarray(v, dtype=np.float64) for v in (y, cb, cr))
    r = y + CR_SCALE * (cr - 0.5)
    b = y + CB_SCALE * (cb - 0.5)
    g = (y - KR * r - KB * b) / KG
    return np.stack([r, g, b], axis=-1)


def luminance_range(name=DEFAULT_COLOUR_MAP):
    """(lowest, highest) luminance Y of the colour map ``name`` (hot: 0.012, its dark red, and 1, white)."""
    y, _, _ = rgb_to_ycbcr(colour_map(np.linspace(0.0, 1.0, 256), name))
    return float(y.min()), float(y.max())


def colour_luminance(volume, name=DEFAULT_COLOUR_MAP):
    """(Y, Cb, Cr) of a functional volume in [0, 1] shown through the colour map ``name``: a method fuses
    the anatomical volume with Y, scaled from the map's :func:`luminance_range` to [0, 1] (float32); Cb and
    Cr are put back by :func:`colour_fused`."""
    y, cb, cr = rgb_to_ycbcr(colour_map(volume, name))
    lo, hi = luminance_range(name)
    y = np.clip((y - lo) / (hi - lo), 0.0, 1.0)
    return y.astype(np.float32), cb.astype(np.float32), cr.astype(np.float32)


def fused_luminance_y(fused_luminance, name=DEFAULT_COLOUR_MAP):
    """The luminance Y of the colour fusion of a fused volume in [0, 1] (the inverse of the scaling of
    :func:`colour_luminance`)."""
    lo, hi = luminance_range(name)
    return lo + np.clip(np.asarray(fused_luminance, dtype=np.float64), 0.0, 1.0) * (hi - lo)


def colour_fused(fused_luminance, cb, cr, name=DEFAULT_COLOUR_MAP):
    """The colour fusion: RGB (float32 in [0, 1], last axis R, G, B) of the fused luminance (scaled back to
    the colour map's luminance, :func:`fused_luminance_y`) with the functional volume's chrominance.

    Where that colour lies outside the RGB cube (a bright fused voxel where the PET is saturated red, say),
    its chrominance is scaled towards grey just enough to come inside, instead of clipping the channels:
    the hue is kept and the luminance stays exactly the fused one, which the metrics score.
    """
    y, chroma, scale = _in_gamut(fused_luminance_y(fused_luminance, name), cb, cr)
    return np.clip(y[..., None] + scale[..., None] * chroma, 0.0, 1.0).astype(np.float32)


def _in_gamut(y, cb, cr):
    """(luminance Y, each channel's offset from its grey, the share of that offset that stays inside the RGB
    cube: 1 where the whole chrominance fits)."""
    chroma = ycbcr_to_rgb(np.zeros_like(y), cb, cr)
    with np.errstate(divide="ignore", invalid="ignore"):
        room = np.where(chroma > 0, (1.0 - y[..., None]) / chroma,
                        np.where(chroma < 0, -y[..., None] / chroma, np.inf))
    return y, chroma, np.clip(room.min(axis=-1, initial=1.0), 0.0, 1.0)


#: How far outside the RGB cube a colour must lie to count as desaturated (far below a byte step, 1/255): the
#: colour map's own colours lie on the cube's surface, a float32 rounding error inside or outside it.
DESATURATION_TOLERANCE = 1e-4


def desaturated(fused_luminance, cb, cr, name=DEFAULT_COLOUR_MAP):
    """Where :func:`colour_fused` had to scale the chrominance towards grey (a boolean volume)."""
    y, chroma, _ = _in_gamut(fused_luminance_y(fused_luminance, name), cb, cr)
    full = y[..., None] + chroma
    return np.maximum(full - 1.0, -full).max(axis=-1) > DESATURATION_TOLERANCE


def rgb_path(out_path):
    """The colour volume written beside a fused luminance volume: ``<name>_rgb.nii.gz``."""
    out_path = Path(out_path)
    stem = out_path.name.removesuffix(".gz").removesuffix(".nii")
    return out_path.with_name(f"{stem}_rgb.nii.gz")


def write_colour_fusion(out_path, fused_luminance, cb, cr, affine, header, colour):
    """Write the colour fusion of the fused luminance volume ``out_path`` (arrays in the files' voxel order)
    as an RGB24 NIfTI beside it (:func:`rgb_path`); returns what its sidecar says of it."""
    from lpmnet.volumes.io import save_rgb_volume

    path = save_rgb_volume(rgb_path(out_path), to_rgb24(colour_fused(fused_luminance, cb, cr, colour)), affine,
                           header, description=f"lpmnet colour fusion ({colour})")
    lo, hi = luminance_range(colour)
    return {"ColourMap": colour, "RGB": str(path), "LuminanceRange": [round(lo, 6), round(hi, 6)],
            "Luminance": "this volume is the luminance Y (BT.601) of the colour fusion, scaled from the colour "
                         "map's luminance range to [0, 1]: the anatomical volume fused with the functional "
                         "volume's luminance through the colour map; the metrics score it, as the 2D toolboxes "
                         "score colour fusions on Y",
            "Chrominance": "the functional volume's Cb and Cr through the colour map, scaled towards grey where "
                           "the fused luminance would leave the RGB cube",
            "DesaturatedFraction": round(float(np.mean(desaturated(fused_luminance, cb, cr, colour))), 6)}


def to_rgb24(rgb):
    """RGB in [0, 1] as unsigned bytes (rounded to the nearest of 0..255), the data of an RGB24 NIfTI."""
    return np.rint(np.clip(np.asarray(rgb, dtype=np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
