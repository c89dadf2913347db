"""Rendering of the comparison of the fusion methods (:mod:`lpmnet.evaluation.comparison`, which computes
it): a standalone HTML page of the comparison table (:func:`render_comparison_html`), a PNG of box plots
of the per-subject values (:func:`comparison_figure`), and :func:`write_comparison`, which computes the
table and writes the TSV, the page and the PNG.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lpmnet.volumes.io import atomic_output, atomic_write_text
from lpmnet.metrics import METRIC_NAMES, TABLE_CONVENTIONS
from lpmnet.evaluation.comparison import (COST_KEYS, METRIC_ARROWS, METRIC_DIRECTIONS, MIN_PAIRED, check_long_table,
                                          is_missing, ordered_names, compare, write_comparison_tsv)
from lpmnet.evaluation.tables import CONVENTION_NOTE, format_number, html_page, method_order

__all__ = [
    "render_comparison_html",
    "convention_section",
    "read_comparison_tsv",
    "TABLE_STYLE",
    "comparison_figure",
    "write_comparison",
]

_REFERENCE_COLOUR, _OTHER_COLOUR = "#1f4e9c", "#8a8f98"
#: The style sheet of the comparison tables (also the report's, which shows them).
TABLE_STYLE = """\
  body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 1.5em; color: #222; }
  table { border-collapse: collapse; font-size: 0.9em; margin-bottom: 0.5em; }
  th, td { padding: 0.3em 0.7em; border-bottom: 1px solid #ddd; text-align: right; white-space: nowrap; }
  th { background: #f0f3f7; border-bottom: 2px solid #99a; }
  td.lbl { text-align: left; font-weight: 600; }
  td.mr { background: #f6f8fb; }
  tr.prow td { font-size: 0.8em; color: #666; border-bottom: 1px solid #bbb; }
  tr.prow td.lbl { font-weight: normal; padding-left: 1.5em; }
  sup.rank { color: #1f4e9c; padding-left: 0.15em; }
  sup.fn, .n { color: #888; }
  .n { font-size: 0.85em; }
  .note, ol { font-size: 0.85em; color: #555; max-width: 60em; }
  h2 { font-size: 1.1em; margin-top: 1.6em; }
"""


# --------------------------------------------------------------------------- HTML
def _p(value) -> str:
    return f"{value:.2g}" if value >= 1e-3 else f"{value:.1e}"


def _duration(seconds) -> str:
    if is_missing(seconds):
        return "–"
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7200:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:.3g} h"


def _rank_text(rank: float) -> str:
    return f"{rank:g}" if rank == int(rank) else f"{rank:.1f}"


def _cell(row, n_max: int, footnotes: list[str]) -> str:
    """'mean ± std' with the rank as superscript, bold when best, n and footnotes when incomplete."""
    mean, std = format_number(row["mean"]), format_number(row["std"])
    text = mean if is_missing(row["std"]) else f"{mean} ± {std}"
    if not is_missing(row["rank"]):
        text += f"<sup class='rank'>{_rank_text(row['rank'])}</sup>"
    if row["best"]:
        text = f"<b>{text}</b>"
    if 0 < row["n"] < n_max:
        text += f" <span class='n'>(n={row['n']})</span>"
    for note in filter(None, row["note"].split("; ")):
        if note not in footnotes:
            footnotes.append(note)
        text += f"<sup class='fn'>[{footnotes.index(note) + 1}]</sup>"
    return f"<td>{text}</td>"


def _p_cell(row) -> str:
    if row["test_note"]:
        return f"<td class='p'>{html.escape(row['test_note'])} (n={row['n_paired']})</td>"
    text = f"p={_p(row['p_value'])}, Holm {_p(row['p_holm'])}"
    if row["p_holm"] < 0.05:
        text = f"<b>{text}</b>"
    return f"<td class='p'>{text}</td>"


def convention_section(table: pd.DataFrame, convention: str, reference: str, footnotes: list[str], *,
                       tests: bool = True, heading: str = "h2") -> str:
    """The section of one convention: its verdict and its table (rows: methods, columns: metrics and the mean
    rank) under a ``heading`` element; with ``tests``, a row of p-values against ``reference`` below each other method.  Footnote texts
    are appended to ``footnotes`` (cells point to them by number)."""
    part = table[table["convention"] == convention]
    metrics = list(dict.fromkeys(part["metric"]))
    methods = list(dict.fromkeys(part["method"]))
    n_max = int(part["n"].max())
    n_ranked = sum(1 for m in metrics if METRIC_DIRECTIONS.get(m))
    head = "".join(f"<th>{html.escape(m)} {METRIC_ARROWS.get(METRIC_DIRECTIONS.get(m, ''), '')}</th>" for m in metrics)
    mean_ranks = part.groupby("method")["mean_rank"].first()
    best_mean = mean_ranks.min()
    body = []
    for method in methods:
        rows = part[part["method"] == method].set_index("metric")
        cells = [f"<td class='lbl'>{html.escape(method)}</td>"]
        cells += [_cell(rows.loc[m], n_max, footnotes) for m in metrics]
        mean_rank = mean_ranks[method]
        rank_text = format_number(mean_rank) if is_missing(mean_rank) else f"{mean_rank:.2f}"
        covered = int(rows["rank"].notna().sum())
        if not is_missing(mean_rank) and covered < n_ranked:
            rank_text += f" <span class='n'>({covered} of {n_ranked})</span>"
        if not is_missing(mean_rank) and mean_rank == best_mean:
            rank_text = f"<b>{rank_text}</b>"
        cells.append(f"<td class='mr'>{rank_text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
        if tests and method != reference:
            p_cells = "".join(_p_cell(rows.loc[m]) for m in metrics)
            body.append(f"<tr class='prow'><td class='lbl p'>vs {html.escape(reference)}</td>{p_cells}<td></td></tr>")
    best = [m for m in methods if mean_ranks[m] == best_mean]
    verdict = (f"Best overall (lowest mean rank): <b>{html.escape(', '.join(best))}</b>" if best
               else "No metric could be ranked.")
    return f"""<{heading}>Convention {html.escape(convention)}</{heading}>
<p>{verdict}</p>
<table>
<thead><tr><th style="text-align:left">method</th>{head}<th>mean rank</th></tr></thead>
<tbody>
{chr(10).join(body)}
</tbody>
</table>"""


def _cost_section(table: pd.DataFrame) -> str:
    costs = table.groupby("method", sort=False)[list(COST_KEYS)].first()
    rows = []
    for method, c in costs.iterrows():
        params = "–" if is_missing(c["parameters"]) else f"{int(c['parameters']):,}"
        fusion = "–" if is_missing(c["fusion_seconds"]) else f"{c['fusion_seconds']:.3g} s"
        rows.append(f"<tr><td class='lbl'>{html.escape(method)}</td><td>{params}</td><td>{fusion}</td>"
                    f"<td>{_duration(c['training_seconds'])}</td></tr>")
    return f"""<h2>Cost</h2>
<table>
<thead><tr><th style="text-align:left">method</th><th>parameters</th><th>fusion s/volume</th>
<th>training time</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody>
</table>
<p class='note'>Fusion: mean wall time per fused volume; training: total wall time of the method's
training jobs (Snakemake benchmarks); –: unknown or not applicable.</p>"""


def render_comparison_html(table: pd.DataFrame, reference: str = "lpmnet",
                           title: str = "Fusion method comparison") -> str:
    """A standalone HTML page of a :func:`compare` table.

    One table per convention (rows: methods; columns: metrics and the mean rank).  A cell shows
    ``mean ± std`` with the rank as a superscript, bold for the best method; below each other
    method a row gives its Wilcoxon p-value against ``reference`` and the Holm-adjusted one
    ("n too small" where untested).  Cells over fewer subjects than the most complete one show
    ``(n=k)``; undefined values point to numbered footnotes giving the reason.  A cost table
    (parameters, fusion seconds per volume, training time) closes the page.
    """
    footnotes: list[str] = []
    sections = [convention_section(table, c, reference, footnotes) for c in dict.fromkeys(table["convention"])]
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in footnotes)
    page = f"""<h1>{html.escape(title)}</h1>
<p class='note'>Cells: mean ± sample SD over subjects, superscript = rank among the methods (1 = best, ties share
the average rank), bold = best. Direction: ↑ higher is better, ↓ lower is better, →0 closer to 0 is better
(ranked and tested on the absolute value). Mean rank: over the ranked metrics of the convention.
Rows "vs {html.escape(reference)}": two-sided Wilcoxon signed-rank test over the subjects both methods have,
Holm-adjusted across the metrics of the convention (bold: adjusted p &lt; 0.05); not tested below
{MIN_PAIRED} paired subjects. Undefined values are skipped (–: no value). Conventions:
{html.escape(CONVENTION_NOTE)}; values of different conventions are not comparable.</p>
{chr(10).join(sections)}
{"<ol>" + notes + "</ol>" if notes else ""}
{_cost_section(table)}
"""
    return html_page(title, TABLE_STYLE, page)


def read_comparison_tsv(path) -> pd.DataFrame:
    """A comparison table written by :func:`lpmnet.evaluation.comparison.write_comparison_tsv`, with empty
    notes as empty strings (as :func:`compare` gives them) and ``NaN`` as missing."""
    table = pd.read_csv(path, sep="\t", keep_default_na=False, na_values=["NaN"])
    for column in ("test_note", "note"):
        table[column] = table[column].astype(str)
    return table


# --------------------------------------------------------------------------- figure
def comparison_figure(long_df: pd.DataFrame, out_png, reference: str = "lpmnet",
                      title: str = "Fusion method comparison", per_row: int = 4) -> Path:
    """Box plots of every metric, methods side by side, one block of panels per convention.

    Each panel shows the per-subject values (box: quartiles, whiskers 1.5 IQR, dots: subjects,
    reference method in blue).  Non-finite values (undefined ones, an infinite PSNR) cannot be
    drawn; a panel says how many it left out.  Writes ``out_png`` atomically, returns its path.
    """
    df = check_long_table(long_df)
    methods = method_order(df["method"], first=reference)
    conventions = ordered_names(df["convention"], TABLE_CONVENTIONS)
    blocks = [(c, ordered_names(df.loc[df["convention"] == c, "metric"], METRIC_NAMES)) for c in conventions]
    heights = [math.ceil(len(metrics) / per_row) for _, metrics in blocks]
    fig = Figure(figsize=(11.0, 0.9 + sum(0.5 + 2.4 * h for h in heights)), dpi=100, facecolor="white",
                 layout="constrained")
    subfigs = fig.subfigures(len(blocks), 1, height_ratios=[0.5 + 2.4 * h for h in heights], squeeze=False)[:, 0]
    rng = np.random.default_rng(0)  # fixed jitter: the same data give the same PNG
    for subfig, (convention, metrics), n_rows in zip(subfigs, blocks, heights):
        axes = subfig.subplots(n_rows, per_row, squeeze=False).ravel()
        for ax, metric in zip(axes, metrics):
            part = df[(df["convention"] == convention) & (df["metric"] == metric)]
            _box_panel(ax, part, metric, methods, reference, rng)
        for ax in axes[len(metrics):]:
            ax.set_visible(False)
        subfig.suptitle(f"convention {convention}", fontsize=11, fontweight="bold")
    fig.suptitle(f"{title}\n\u2191 higher is better, \u2193 lower is better, \u21920 closer to 0 is better",
                 fontsize=12)
    FigureCanvasAgg(fig)
    out = Path(out_png)
    with atomic_output(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100, facecolor="white")
    return out


def _box_panel(ax, part: pd.DataFrame, metric: str, methods: list[str], reference: str, rng) -> None:
    positions, data, colours = [], [], []
    left_out = 0
    for i, method in enumerate(methods, start=1):
        values = part.loc[part["method"] == method, "value"].to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        left_out += values.size - finite.size
        if finite.size:
            positions.append(i)
            data.append(finite)
            colours.append(_REFERENCE_COLOUR if method == reference else _OTHER_COLOUR)
    if data:
        boxes = ax.boxplot(data, positions=positions, widths=0.55, patch_artist=True, showfliers=False,
                           medianprops={"color": "black"})
        for patch, colour in zip(boxes["boxes"], colours):
            patch.set(facecolor=colour, alpha=0.35, edgecolor=colour)
        for pos, values, colour in zip(positions, data, colours):
            ax.scatter(pos + rng.uniform(-0.12, 0.12, values.size), values, s=10, color=colour, zorder=3)
    else:
        ax.text(0.5, 0.5, "no values", transform=ax.transAxes, ha="center", va="center", color="#888")
    ax.set_xticks(range(1, len(methods) + 1), methods, rotation=30 if len(methods) > 3 else 0,
                  ha="right" if len(methods) > 3 else "center", fontsize=8)
    ax.set_xlim(0.4, len(methods) + 0.6)
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(True, axis="y", color="#e3e3e3", linewidth=0.7)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    arrow = METRIC_ARROWS.get(METRIC_DIRECTIONS.get(metric, ""), "")
    ax.set_title(f"{metric} {arrow}", fontsize=10)
    if left_out:
        ax.text(0.98, 0.98, f"{left_out} undefined or infinite not shown", transform=ax.transAxes, ha="right",
                va="top", fontsize=7, color="#888")


# --------------------------------------------------------------------------- writing
def write_comparison(long_df: pd.DataFrame, out_tsv, out_html, out_png=None, reference: str = "lpmnet",
                     costs: dict | None = None, title: str = "Fusion method comparison") -> pd.DataFrame:
    """:func:`~lpmnet.evaluation.comparison.compare` ``long_df`` and write the TSV
    (:func:`~lpmnet.evaluation.comparison.write_comparison_tsv`), the HTML page and optionally the PNG, atomically.

    The TSV has the columns :data:`~lpmnet.evaluation.comparison.COMPARISON_COLUMNS` (floats as ``%.6g``, missing values as
    ``NaN``, ``best`` as True/False); the cost figures are repeated on every row of a method.
    ``pandas.read_csv(out_tsv, sep="\\t")`` reads it back.  Returns the table.
    """
    table = compare(long_df, reference=reference, costs=costs)
    write_comparison_tsv(table, out_tsv)
    atomic_write_text(out_html, render_comparison_html(table, reference=reference, title=title))
    if out_png is not None:
        comparison_figure(long_df, out_png, reference=reference, title=title)
    return table
