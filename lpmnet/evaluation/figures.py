"""Pictures of volumes for the workflow report: fusion montages and registration QC (PNG).

Rendering uses :class:`matplotlib.figure.Figure` with the Agg canvas directly, so importing
this module neither selects a backend nor touches pyplot's global state.  PNGs are written
atomically (:func:`lpmnet.volumes.io.atomic_output`).

* :func:`fusion_montage`: one row per volume (the sources, then each fused result), three
  orthogonal slices through the centre of the voxel grid.  Volumes are shown in their closest
  canonical (RAS+) orientation (:func:`nibabel.as_closest_canonical`: voxel axes permuted and
  flipped, no resampling), in the neurological convention: patient's left on the image's
  left, anterior up in axial slices, superior up in coronal and sagittal slices, anterior on
  the right in sagittal slices.  Each row is scaled to its own 1st-99th percentile.
* :func:`registration_qc_figure`: the edges of a registered image over the fixed image.

The curves of training and of the learning curve are in :mod:`lpmnet.evaluation.curves`.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lpmnet.volumes.io import atomic_output, load_volume, require_same_grid, same_grid
from lpmnet.volumes.registration import resample_like

__all__ = ["fusion_montage", "orthogonal_slices", "label_edges", "registration_qc_figure", "ORIENTATION_NOTE",
           "EDGE_LETTERS"]

ORIENTATION_NOTE = ("closest canonical RAS orientation, neurological convention "
                    "(patient's left on image left, anterior/superior up); "
                    "each row scaled to its own 1st\u201399th percentile")

DPI = 100
WIDTH_IN = 11.0

#: Anatomical direction at the left, right, top and bottom edge of each view of a closest-canonical (RAS)
#: volume shown with ``origin="lower"`` (neurological convention).
EDGE_LETTERS = {"axial": ("L", "R", "A", "P"), "coronal": ("L", "R", "S", "I"), "sagittal": ("P", "A", "S", "I")}


def label_edges(ax, view, color="#ffd84d"):
    """Write the anatomical direction of each edge of ``view`` inside the axes."""
    left, right, top, bottom = EDGE_LETTERS[view]
    style = dict(transform=ax.transAxes, color=color, fontsize=9, fontweight="bold")
    ax.text(0.02, 0.5, left, ha="left", va="center", **style)
    ax.text(0.98, 0.5, right, ha="right", va="center", **style)
    ax.text(0.5, 0.97, top, ha="center", va="top", **style)
    ax.text(0.5, 0.03, bottom, ha="center", va="bottom", **style)


def save_figure(fig: Figure, out_png) -> Path:
    FigureCanvasAgg(fig)
    out = Path(out_png)
    with atomic_output(out) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, facecolor=fig.get_facecolor())
    return out


# --------------------------------------------------------------------------- montage
def _canonical(data: np.ndarray, affine: np.ndarray):
    img = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine))
    canon = np.asarray(img.dataobj, dtype=np.float32)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return canon, img.affine, zooms


def orthogonal_slices(data, affine) -> dict[str, np.ndarray]:
    """The three mid-slices of a volume as displayed by :func:`fusion_montage`.

    ``{"axial", "coronal", "sagittal"}`` -> 2D array for ``imshow(..., origin="lower")``: after
    :func:`nibabel.as_closest_canonical`, axial = ``[:, :, k].T`` (columns left->right, rows
    posterior->anterior), coronal = ``[:, j, :].T`` (left->right, inferior->superior), sagittal =
    ``[i, :, :].T`` (posterior->anterior, inferior->superior), through the grid centre.
    """
    canon, _, _ = _canonical(data, affine)
    ci, cj, ck = (n // 2 for n in canon.shape)
    return {"axial": canon[:, :, ck].T, "coronal": canon[:, cj, :].T, "sagittal": canon[ci, :, :].T}


def _window(data: np.ndarray) -> tuple[float, float]:
    lo, hi = (float(v) for v in np.percentile(data, [1, 99]))
    if not hi > lo:
        lo, hi = float(data.min()), float(data.max())
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def grid_caption(volume) -> str:
    """The file's own grid (voxel axes i, j, k as stored), not the display order of the canonical views."""
    grid = "\u00d7".join(str(n) for n in volume.shape)
    voxel = "\u00d7".join(f"{z:.3g}" for z in volume.zooms)
    return f"grid {grid} (i\u00d7j\u00d7k as stored), voxel {voxel} mm"


ROW_LABEL_PAD_PT = 8


def _row_label(label, kind):
    return f"{label}\n({kind})"


def _row_label_weight(kind):
    return "bold" if kind == "fused" else "normal"


def _row_label_width_in(fig, labels) -> float:
    """The left margin (inches) that the widest row label and its padding need, measured as drawn."""
    renderer = FigureCanvasAgg(fig).get_renderer()
    widths = []
    for text, kind in labels:
        drawn = fig.text(0, 0, text, fontsize=10, fontweight=_row_label_weight(kind))
        widths.append(drawn.get_window_extent(renderer).width / fig.dpi)
        drawn.remove()
    return max(widths) + (ROW_LABEL_PAD_PT + 8) / 72


def fusion_montage(sources: dict, fused: dict, out_png, title: str, *, colour_map=None, functional=None,
                   rgb=None) -> Path:
    """Montage of source and fused volumes; writes ``out_png`` and returns its path.

    ``sources`` / ``fused``: label -> NIfTI path (rows in this order: sources first, then
    fusions).  All volumes must be on one voxel grid (shape and affine), otherwise an
    :class:`InputError` names the first file that differs.  Columns: axial, coronal and
    sagittal slices through the grid centre (see the module docstring for the orientation).
    A colour pair (:mod:`lpmnet.volumes.colour`) shows its ``functional`` source (a label of ``sources``)
    through ``colour_map`` and, for each label of ``rgb`` (label -> RGB24 NIfTI), that colour fusion in
    place of the grey fused luminance.
    """
    from lpmnet.volumes.io import load_rgb_volume

    rgb = {str(k): Path(v) for k, v in (rgb or {}).items()}
    rows = [(str(k), Path(v), "source") for k, v in sources.items()]
    rows += [(str(k), rgb.get(str(k), Path(v)), "fused") for k, v in fused.items()]
    if not rows:
        raise ValueError("fusion_montage needs at least one volume")
    volumes = []
    for label, path, _ in rows:
        if label in rgb:
            data, affine = load_rgb_volume(path)
            volumes.append(_ColourVolume(data, affine, path))
        else:
            volumes.append(load_volume(path, allow_constant=True))
    for vol in volumes[1:]:
        require_same_grid(volumes[0], vol)

    first, affine, zooms = _canonical(volumes[0].data, volumes[0].affine)
    nx, ny, nz = first.shape
    zx, zy, zz = zooms
    centre = affine @ np.array([nx // 2, ny // 2, nz // 2, 1.0])
    # (view, horizontal size mm, vertical size mm, column title)
    views = [
        ("axial", nx * zx, ny * zy, f"axial  z = {centre[2]:.1f} mm"),
        ("coronal", nx * zx, nz * zz, f"coronal  y = {centre[1]:.1f} mm"),
        ("sagittal", ny * zy, nz * zz, f"sagittal  x = {centre[0]:.1f} mm"),
    ]

    widths = [v[1] for v in views]
    height_mm = max(v[2] for v in views)
    fig = Figure(figsize=(WIDTH_IN, 1), dpi=DPI, facecolor="white")
    label_in = _row_label_width_in(fig, [(_row_label(label, kind), kind) for label, _, kind in rows])
    header_in, footer_in = 0.9, 0.35
    scale = (WIDTH_IN - label_in - 0.3) / (sum(widths) * 1.06)  # inches per mm (with gaps)
    row_in = min(max(height_mm * scale, 1.2), 4.5) + 0.1
    fig_h = header_in + footer_in + row_in * len(rows)
    fig.set_size_inches(WIDTH_IN, fig_h)
    grid = fig.add_gridspec(
        len(rows), 3, width_ratios=widths, wspace=0.04, hspace=0.06,
        left=label_in / WIDTH_IN, right=1 - 0.3 / WIDTH_IN,
        top=1 - header_in / fig_h, bottom=footer_in / fig_h)

    for r, ((label, path, kind), vol) in enumerate(zip(rows, volumes)):
        slices = _display_slices(vol, colour_map if label == functional else None)
        for c, (view, w_mm, h_mm, col_title) in enumerate(views):
            ax = fig.add_subplot(grid[r, c])
            ax.imshow(slices[view], cmap="gray", vmin=0, vmax=1, origin="lower",
                      extent=(0, w_mm, 0, h_mm), interpolation="nearest", aspect="equal")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_facecolor("black")
            for spine in ax.spines.values():
                spine.set_visible(False)
            if r == 0:
                ax.set_title(col_title, fontsize=10)
                label_edges(ax, view)
            if c == 0:
                ax.set_ylabel(_row_label(label, kind), rotation=0, ha="right", va="center", fontsize=10,
                              labelpad=ROW_LABEL_PAD_PT, fontweight=_row_label_weight(kind))
    fig.suptitle(title, fontsize=13, y=1 - 0.12 / fig_h, va="top")
    fig.text(0.5, 1 - 0.42 / fig_h, ORIENTATION_NOTE, ha="center", va="top", fontsize=8.5, color="#444")
    fig.text(0.5, 0.1 / fig_h, grid_caption(volumes[0]), ha="center", va="bottom", fontsize=8, color="#666")
    return save_figure(fig, out_png)


class _ColourVolume:
    """An RGB24 volume (bytes, last axis R, G, B) where the montage takes a grey volume: shape and affine."""

    def __init__(self, data, affine, path):
        self.data, self.affine, self.shape, self.path = data, affine, data.shape[:3], path


def _display_slices(vol, colour_map=None) -> dict[str, np.ndarray]:
    """The three slices of a montage row in [0, 1]: grey (windowed at the 1st and 99th percentiles), through
    ``colour_map`` (windowed the same way, then RGB), or an RGB volume's own colours."""
    if isinstance(vol, _ColourVolume):
        channels = [orthogonal_slices(vol.data[..., c].astype(np.float32) / 255.0, vol.affine) for c in range(3)]
        return {view: np.stack([ch[view] for ch in channels], axis=-1) for view in channels[0]}
    lo, hi = _window(vol.data)
    slices = {view: np.clip((s - lo) / (hi - lo), 0.0, 1.0) for view, s in orthogonal_slices(vol.data, vol.affine).items()}
    if colour_map:
        from lpmnet.volumes.colour import colour_map as apply

        return {view: apply(s, colour_map) for view, s in slices.items()}
    return slices


# --------------------------------------------------------------------------- registration QC
def _ras_view(vol) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Data reoriented to the closest RAS axes (for display) and its voxel sizes."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(vol.affine)
    data = nib.orientations.apply_orientation(vol.data, ornt)
    zooms = np.asarray(vol.zooms)[np.argsort(ornt[:, 0])]
    return np.ascontiguousarray(data), tuple(float(z) for z in zooms)


def _display_range(x: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(x, [1.0, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1.0)


def registration_qc_figure(fixed_path, registered_path, out_png, title: str = "") -> Path:
    """Save a PNG: three orthogonal mid-slices (closest to sagittal, coronal, axial) of
    the fixed image in grey with the edges (Canny) of the registered moving image
    overlaid in red.  A second image on another grid is first resampled onto the fixed
    grid in world coordinates (so the same figure also shows the misalignment before
    registration).  Written atomically; returns ``out_png``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from skimage.feature import canny

    fixed = load_volume(fixed_path, allow_constant=True)
    moving = load_volume(registered_path, allow_constant=True)
    if not same_grid(fixed, moving):
        moving = resample_like(moving, fixed)
    f_data, zooms = _ras_view(fixed)
    m_data, _ = _ras_view(moving)
    f_lo, f_hi = _display_range(f_data)
    m_lo, m_hi = _display_range(m_data)
    m_norm = np.clip((m_data - m_lo) / (m_hi - m_lo), 0, 1)

    centre = [s // 2 for s in f_data.shape]
    views = [  # (name, slicer, (horizontal zoom, vertical zoom))
        ("sagittal", (centre[0], slice(None), slice(None)), (zooms[1], zooms[2])),
        ("coronal", (slice(None), centre[1], slice(None)), (zooms[0], zooms[2])),
        ("axial", (slice(None), slice(None), centre[2]), (zooms[0], zooms[1])),
    ]
    fig = Figure(figsize=(12, 4.6), dpi=100, facecolor="black")
    FigureCanvasAgg(fig)
    edge_cmap = ListedColormap(["#ff3030"])
    for n, (name, sl, (zx, zy)) in enumerate(views):
        ax = fig.add_subplot(1, 3, n + 1)
        f2 = f_data[sl].T
        edges = canny(m_norm[sl].T.astype(np.float64), sigma=1.5)
        ax.imshow(f2, cmap="gray", vmin=f_lo, vmax=f_hi, origin="lower", aspect=zy / zx,
                  interpolation="nearest")
        ax.imshow(np.ma.masked_where(~edges, edges), cmap=edge_cmap, origin="lower",
                  aspect=zy / zx, interpolation="nearest", alpha=0.9)
        ax.set_title(name, color="white", fontsize=10)
        label_edges(ax, name)
        ax.set_axis_off()
    fig.suptitle(title or f"{Path(registered_path).name} (edges) on {Path(fixed_path).name}",
                 color="white", fontsize=11)
    fig.tight_layout()
    dest = Path(out_png)
    with atomic_output(dest) as tmp:
        fig.savefig(tmp, format="png", facecolor=fig.get_facecolor())
    return dest
