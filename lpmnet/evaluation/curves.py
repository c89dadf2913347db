"""Curves of the workflow report (PNG): a training log's loss terms, validation metrics and learning rate
(:func:`training_curves`, of a ``training_log.csv`` written by :mod:`lpmnet.engine.train`) and the
learning curve of metric against training size (:func:`learning_curve`)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from lpmnet.errors import InputError
from lpmnet.evaluation.figures import DPI, WIDTH_IN, save_figure

__all__ = ["training_curves", "learning_curve", "NON_LOSS_COLUMNS"]

#: Columns of the training log that are not loss terms (the terms depend on the method's loss).
NON_LOSS_COLUMNS = ("iteration", "epoch", "lr", "total", "lambda", "seconds")


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
    return save_figure(fig, out_png)


def learning_curve(table_tsv, out_png, title: str) -> Path:
    """Metrics against training iterations (``lpmnet.engine.train.learning_curve``'s rows as a TSV): one panel per
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
    return save_figure(fig, out_png)
