"""Figures of the workflow report: fusion montages and training curves (PNG).

Rendering uses :class:`matplotlib.figure.Figure` with the Agg canvas directly, so importing
this module neither selects a backend nor touches pyplot's global state.  PNGs are written
atomically (:func:`lpmnet.io.atomic_output`).

* :func:`fusion_montage`: one row per volume (the sources, then each fused result), three
  orthogonal slices through the centre of the voxel grid.  Volumes are shown in their closest
  canonical (RAS+) orientation (:func:`nibabel.as_closest_canonical`: voxel axes permuted and
  flipped, no resampling), in the neurological convention: patient's left on the image's
  left, anterior up in axial slices, superior up in coronal and sagittal slices, anterior on
  the right in sagittal slices.  Each row is scaled to its own 1st-99th percentile.
* :func:`training_curves`: the loss terms, validation metrics and learning rate of a
  ``training_log.csv`` written by :mod:`lpmnet.train`.
"""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lpmnet.errors import InputError
from lpmnet.io import atomic_output, load_volume, require_same_grid

__all__ = ["fusion_montage", "training_curves", "orthogonal_slices", "label_edges", "ORIENTATION_NOTE",
           "EDGE_LETTERS"]

#: Columns of the training log that are not loss terms (the terms depend on the method's loss).
NON_LOSS_COLUMNS = ("iteration", "epoch", "lr", "total", "lambda", "seconds")

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


def _save(fig: Figure, out_png) -> Path:
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


def fusion_montage(sources: dict, fused: dict, out_png, title: str) -> Path:
    """Montage of source and fused volumes; writes ``out_png`` and returns its path.

    ``sources`` / ``fused``: label -> NIfTI path (rows in this order: sources first, then
    fusions).  All volumes must be on one voxel grid (shape and affine), otherwise an
    :class:`InputError` names the first file that differs.  Columns: axial, coronal and
    sagittal slices through the grid centre (see the module docstring for the orientation).
    """
    rows = [(str(k), Path(v), "source") for k, v in sources.items()]
    rows += [(str(k), Path(v), "fused") for k, v in fused.items()]
    if not rows:
        raise ValueError("fusion_montage needs at least one volume")
    volumes = [load_volume(path, allow_constant=True) for _, path, _ in rows]
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
        lo, hi = _window(vol.data)
        slices = orthogonal_slices(vol.data, vol.affine)
        for c, (view, w_mm, h_mm, col_title) in enumerate(views):
            ax = fig.add_subplot(grid[r, c])
            ax.imshow(slices[view], cmap="gray", vmin=lo, vmax=hi, origin="lower",
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
    return _save(fig, out_png)


# --------------------------------------------------------------------------- curves
def _read_log(log_csv) -> pd.DataFrame:
    p = Path(log_csv)
    if not p.is_file():
        raise InputError(p, "training log not found")
    try:
        df = pd.read_csv(p)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(p, f"not a readable CSV training log ({exc})") from exc
    missing = [c for c in ("iteration", "total") if c not in df.columns]
    if missing:
        raise InputError(p, f"missing column(s) {missing}; columns are {list(df.columns)}")
    df = df.apply(pd.to_numeric, errors="coerce")
    df = df[df["iteration"].notna()].sort_values("iteration", kind="stable")
    df = df.drop_duplicates("iteration", keep="last").reset_index(drop=True)
    if df.empty:
        raise InputError(p, "training log has no rows")
    return df


def _smooth(values: pd.Series, window: int) -> pd.Series:
    return values.rolling(window, center=True, min_periods=1).mean()


def _tidy(ax, title: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.grid(True, color="#e3e3e3", linewidth=0.7)
    ax.tick_params(labelsize=8)
    # no offset/exponent text above the axis: it would collide with the panel title
    ax.ticklabel_format(axis="y", style="plain", useOffset=False)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def training_curves(log_csv, out_png, title: str) -> Path:
    """Plot a training log; writes ``out_png`` and returns its path.

    Loss section: one small panel per series, ``total`` first, then each loss term of the log (every
    column but :data:`NON_LOSS_COLUMNS` and ``val_*``) with a non-zero value (light raw line plus a centred moving
    average; the terms differ in scale and sign, hence separate y axes).  Validation section
    (when ``val_*`` columns hold values): one small panel per metric.  Bottom panel: the
    learning rate (and the SF weight ``lambda`` on a second axis when it varies).
    """
    df = _read_log(log_csv)
    it = df["iteration"]
    n = len(df)
    window = max(1, min(round(n / 50), 500))

    losses = ["total"] + [c for c in df.columns if c not in NON_LOSS_COLUMNS and not c.startswith("val_")
                          and (df[c].fillna(0) != 0).any()]
    vals = [c for c in df.columns if c.startswith("val_") and df[c].notna().any()]
    per_row = min(5, max(3, len(losses), len(vals)))
    loss_rows = math.ceil(len(losses) / per_row)
    val_rows = math.ceil(len(vals) / per_row)
    has_lr = "lr" in df.columns and df["lr"].notna().any()

    heights = [1.0] * loss_rows + [1.0] * val_rows + ([0.55] if has_lr else [])
    row_in = 2.3
    fig_h = 0.8 + row_in * sum(heights) + 0.25 * len(heights)
    fig = Figure(figsize=(WIDTH_IN, fig_h), dpi=DPI, facecolor="white", layout="constrained")
    outer = fig.add_gridspec(len(heights), per_row, height_ratios=heights)
    colours = ["#1f4e9c", "#d9721c", "#2e8b3e", "#b8322f", "#7b52ab", "#8c5a3c", "#c2419b"]

    for k, name in enumerate(losses):
        ax = fig.add_subplot(outer[k // per_row, k % per_row])
        colour = "black" if name == "total" else colours[(k - 1) % len(colours)]
        y = df[name]
        ax.plot(it, y, color=colour, alpha=0.25 if window > 1 else 0.9, linewidth=0.8,
                marker="o" if n <= 30 else None, markersize=3)
        if window > 1:
            ax.plot(it, _smooth(y, window), color=colour, linewidth=1.6)
        _tidy(ax, "loss: total" if name == "total" else f"loss term: {name}")
        if k // per_row == loss_rows - 1 or k + per_row >= len(losses):
            ax.set_xlabel("iteration", fontsize=8.5)

    for k, name in enumerate(vals):
        ax = fig.add_subplot(outer[loss_rows + k // per_row, k % per_row])
        sel = df[name].notna()
        ax.plot(it[sel], df.loc[sel, name], marker="o", markersize=3.5, linewidth=1.3,
                color=colours[k % len(colours)])
        _tidy(ax, f"validation: {name.removeprefix('val_')}")
        ax.set_xlabel("iteration", fontsize=8.5)
        if it[sel].size and float(it.max()) > float(it.min()):
            ax.set_xlim(float(it.min()), float(it.max()))

    if has_lr:
        ax = fig.add_subplot(outer[len(heights) - 1, :])
        ax.plot(it, df["lr"], color="#444", linewidth=1.3, label="learning rate")
        _tidy(ax, "learning rate")
        ax.set_xlabel("iteration", fontsize=8.5)
        ax.set_ylabel("lr", fontsize=8.5)
        if "lambda" in df.columns and df["lambda"].notna().any() and df["lambda"].nunique() > 1:
            ax2 = ax.twinx()
            ax2.plot(it, df["lambda"], color="#c2419b", linewidth=0.9, alpha=0.7, linestyle="--")
            ax2.set_ylabel("SF weight \u03bb (dashed)", fontsize=8.5, color="#c2419b")
            ax2.tick_params(labelsize=8, colors="#c2419b")
            ax2.spines["top"].set_visible(False)
            ax.set_title("learning rate (solid) and SF weight \u03bb (dashed)", fontsize=10)

    last = df.iloc[-1]
    fig.suptitle(title, fontsize=13)
    summary = f"{n} logged iterations (last {int(last['iteration'])})"
    if "epoch" in df.columns and pd.notna(last.get("epoch")):
        summary += f", epoch {int(last['epoch'])}"
    if "seconds" in df.columns and df["seconds"].notna().any():
        summary += f", {float(df['seconds'].sum()):.0f} s of training steps logged"
    if window > 1:
        summary += f"; losses: light = raw, dark = centred moving average over {window} iterations"
    fig.supxlabel(summary, fontsize=8.5, color="#444")
    return _save(fig, out_png)


def learning_curve(table_tsv, out_png, title: str) -> Path:
    """Metrics against training iterations (``lpmnet.train.learning_curve``'s rows as a TSV): one panel per
    metric, the mean over the pairs with their range shaded; writes ``out_png`` and returns its path."""
    p = Path(table_tsv)
    try:
        df = pd.read_csv(p, sep="\t")
    except (OSError, pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        raise InputError(p, f"not a readable learning-curve table ({exc})") from exc
    if "iteration" not in df.columns or df.empty:
        raise InputError(p, "a learning-curve table needs rows and an iteration column")
    metrics = [c for c in df.columns if c not in ("iteration", "x1", "x2")]
    stats = df.groupby("iteration")[metrics].agg(["mean", "min", "max"])
    it = stats.index.to_numpy(dtype=float)
    fig = Figure(figsize=(WIDTH_IN, 2.9), dpi=DPI, facecolor="white", layout="constrained")
    colours = ["#1f4e9c", "#d9721c", "#2e8b3e", "#b8322f", "#7b52ab"]
    for k, name in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), k + 1)
        colour = colours[k % len(colours)]
        ax.fill_between(it, stats[(name, "min")], stats[(name, "max")], color=colour, alpha=0.15, linewidth=0)
        ax.plot(it, stats[(name, "mean")], color=colour, marker="o", markersize=3.5, linewidth=1.4)
        _tidy(ax, name)
        ax.set_xlabel("iteration", fontsize=8.5)
    pairs = df.groupby(["x1", "x2"]).ngroups if {"x1", "x2"} <= set(df.columns) else 0
    fig.suptitle(title, fontsize=12)
    fig.supxlabel(f"lpmnet convention; mean over {pairs} test pair(s), range shaded; one point per kept checkpoint",
                  fontsize=8.5, color="#444")
    return _save(fig, out_png)
