"""Headline comparison of the fusion methods of one dataset and modality pair: which one is best.

Input is the long metrics table of :func:`lpmnet.evaluation.tables.aggregate` (``metrics_long.tsv``: columns
``subject, method, convention, metric, value, slices_used, note``).  For every convention and
metric, :func:`compare` gives each method

* the mean and sample standard deviation over subjects (undefined values, NaN, are skipped; an
  infinite value, the PSNR of a fusion equal to both sources, makes the mean infinite);
* its rank among the methods (1 = best, ties share the average rank) in the direction of
  :data:`METRIC_DIRECTIONS`, and whether it is the best (every method tied at the best rank is);
* a two-sided Wilcoxon signed-rank test against the reference method over the subjects both
  have a value for, with Holm's correction across the metrics of the convention (one family per
  method and convention); with fewer than :data:`MIN_PAIRED` pairs no test is made;
* its mean rank over the metrics of the convention, the "best overall" figure;
* optional cost figures (parameters, mean fusion seconds per volume, training seconds), e.g. from the
  fused volumes' sidecars and the training logs via :func:`cost_from_runs`.

:func:`write_comparison` writes the result as a tidy TSV (:data:`COMPARISON_COLUMNS`; the cost
figures are repeated on every row of a method so that the file stays one table), a standalone
HTML page and optionally a PNG of box plots (:func:`comparison_figure`).

Values of different conventions are never compared with each other (see
:data:`lpmnet.evaluation.tables.CONVENTION_NOTE`).
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.stats import rankdata, wilcoxon

from lpmnet.errors import InputError
from lpmnet.volumes.io import atomic_output, atomic_write_text, read_json_object
from lpmnet.metrics import METRIC_NAMES, TABLE_CONVENTIONS
from lpmnet.evaluation.tables import CONVENTION_NOTE, FLOAT_FORMAT, NA_REP, format_number, method_order

__all__ = [
    "HIGHER",
    "LOWER",
    "CLOSER_TO_ZERO",
    "METRIC_DIRECTIONS",
    "MIN_PAIRED",
    "COST_KEYS",
    "COMPARISON_COLUMNS",
    "compare",
    "holm",
    "cost_from_runs",
    "render_comparison_html",
    "comparison_figure",
    "write_comparison",
]

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

#: Fewest paired subjects for a Wilcoxon test.  With 5 pairs the smallest possible exact
#: two-sided p-value is 2 / 2**5 = 0.0625, so a test of fewer pairs can never reach p < 0.05.
MIN_PAIRED = 6

#: Keys of a method's cost entry (each value may be None: unknown or not applicable).
COST_KEYS = ("parameters", "fusion_seconds", "training_seconds")

#: Columns of the comparison table: one row per convention x metric x method.
#:
#: ``direction``: the entry of :data:`METRIC_DIRECTIONS` ("" for unranked metrics); ``n``: defined
#: values; ``mean``/``std``: over those (std ddof=1, NaN below 2 values); ``score``: what the rank
#: is based on (the mean, or the mean absolute value for ``closer_to_zero``); ``rank``: 1 = best,
#: average rank for ties, NaN without a value or direction; ``best``: rank is the best rank;
#: ``n_paired``: subjects with a value for both this method and the reference; ``p_value``:
#: two-sided Wilcoxon signed-rank vs the reference; ``p_holm``: Holm-adjusted across the tested
#: metrics of the convention; ``test_note``: "reference", "n too small" or ""; ``note``: why
#: values are undefined ("; "-joined, "" if none); ``mean_rank``: the method's mean rank over the
#: ranked metrics of the convention; then the cost figures of :data:`COST_KEYS`.
COMPARISON_COLUMNS = ("convention", "metric", "method", "direction", "n", "mean", "std", "score",
                      "rank", "best", "n_paired", "p_value", "p_holm", "test_note", "note",
                      "mean_rank") + COST_KEYS

_ARROWS = {HIGHER: "\u2191", LOWER: "\u2193", CLOSER_TO_ZERO: "\u21920"}
_REFERENCE_COLOUR, _OTHER_COLOUR = "#1f4e9c", "#8a8f98"


# --------------------------------------------------------------------------- ordering
def _ordered(names, known) -> list[str]:
    """``names`` in the order of ``known``, the others after them alphabetically."""
    unique = set(names)
    return [n for n in known if n in unique] + sorted(unique - set(known))


# --------------------------------------------------------------------------- statistics
def holm(p_values) -> np.ndarray:
    """Holm step-down adjusted p-values of one family of tests (NaN entries are not tests).

    The i-th smallest of the m p-values is multiplied by m - i + 1, the running maximum keeps the
    adjusted values in the order of the raw ones, and values are capped at 1.
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    m = order.size
    scaled = p[order] * (m - np.arange(m))
    out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return out


def _scores(values: np.ndarray, direction: str) -> np.ndarray:
    """The per-subject numbers that ranks and tests use."""
    return np.abs(values) if direction == CLOSER_TO_ZERO else values


def _rank_keys(score: float, direction: str) -> float:
    """Smaller is better; rounded so that equal results count as ties.

    The means of the same values taken in another order can differ in the last bit, which
    must not break a tie.
    """
    key = -score if direction == HIGHER else score
    return float(f"{key:.12g}")


def _wilcoxon(diff: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (scipy's defaults)."""
    if not np.any(diff):
        # Identical pairs: no evidence of a difference.  scipy returns the same p = 1 but
        # warns about a 0/0 in its normal approximation.
        return 1.0
    return float(wilcoxon(diff, alternative="two-sided").pvalue)


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    # errstate: the std of values containing inf (PSNR of a perfect fusion) is a NaN by design.
    with np.errstate(invalid="ignore"):
        mean = float(np.mean(values)) if values.size else math.nan
        std = float(np.std(values, ddof=1)) if values.size > 1 else math.nan
    return mean, std


# --------------------------------------------------------------------------- input checks
def _check_long(long_df: pd.DataFrame) -> pd.DataFrame:
    """A checked copy of a long metrics table: float values, string labels, notes "" where none."""
    required = ("subject", "method", "convention", "metric", "value")
    missing = [c for c in required if c not in long_df.columns]
    if missing:
        raise ValueError(f"long metrics table lacks column(s) {missing}; columns are {list(long_df.columns)}")
    df = long_df.copy()
    df["value"] = df["value"].astype(float)
    df["note"] = df["note"].fillna("").astype(str) if "note" in df.columns else ""
    for col in ("subject", "method", "convention", "metric"):
        df[col] = df[col].astype(str)
    dup = df.duplicated(["subject", "method", "convention", "metric"], keep=False)
    if dup.any():
        first = df[dup].iloc[0]
        raise ValueError(f"long metrics table has several rows for subject {first['subject']}, method "
                         f"{first['method']}, convention {first['convention']}, metric {first['metric']}")
    return df


def _check_costs(costs, methods) -> dict:
    """method -> {cost key: value or None} for every method (None where not given)."""
    costs = dict(costs or {})
    out = {}
    for method in methods:
        entry = dict(costs.get(method) or {})
        unknown = sorted(set(entry) - set(COST_KEYS))
        if unknown:
            raise ValueError(f"cost entry of method {method!r} has unknown key(s) {unknown}; "
                             f"allowed: {list(COST_KEYS)}")
        out[method] = {k: entry.get(k) for k in COST_KEYS}
    return out


# --------------------------------------------------------------------------- table
def compare(long_df: pd.DataFrame, reference: str = "lpmnet", costs: dict | None = None) -> pd.DataFrame:
    """The comparison table (columns :data:`COMPARISON_COLUMNS`) of a long metrics table.

    Rows are ordered by convention (:data:`lpmnet.metrics.TABLE_CONVENTIONS` first), metric
    (:data:`lpmnet.metrics.METRIC_NAMES` order, others alphabetically) and method (``reference``
    first, then alphabetically).  Every method of the table gets a row for every convention and
    metric (``n`` = 0 and NaN figures where it has no value).  ``costs``: optional method ->
    ``{"parameters", "fusion_seconds", "training_seconds"}`` (values may be None); methods
    that are not in the table are ignored.  Raises :class:`ValueError` when the reference
    method is not in the table or a (subject, method, convention, metric) occurs twice.
    """
    df = _check_long(long_df)
    if reference not in set(df["method"]):
        raise ValueError(f"reference method {reference!r} is not in the metrics table; "
                         f"methods are {sorted(set(df['method']))}")
    methods = method_order(df["method"], first=reference)
    cost = _check_costs(costs, methods)
    rows = []
    for convention in _ordered(df["convention"], TABLE_CONVENTIONS):
        conv = df[df["convention"] == convention]
        conv_rows = []
        for metric in _ordered(conv["metric"], METRIC_NAMES):
            conv_rows += _metric_rows(conv[conv["metric"] == metric], convention, metric, methods, reference)
        _add_holm(conv_rows, methods, reference)
        _add_mean_rank(conv_rows, methods)
        rows += conv_rows
    for row in rows:
        row.update(cost[row["method"]])
    table = pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))
    for col in ("n", "n_paired", "parameters"):
        table[col] = pd.array([None if _missing(v) else int(v) for v in table[col]], dtype="Int64")
    for col in ("fusion_seconds", "training_seconds"):
        table[col] = pd.to_numeric(table[col], errors="raise").astype(float)
    table["best"] = table["best"].astype(bool)
    return table


def _missing(value) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _metric_rows(part: pd.DataFrame, convention: str, metric: str, methods: list[str],
                 reference: str) -> list[dict]:
    """Rows of one convention and metric: figures, ranks and unadjusted tests."""
    direction = METRIC_DIRECTIONS.get(metric, "")
    defined = part[~part["value"].isna()]
    per_method = {m: defined.loc[defined["method"] == m].set_index("subject")["value"] for m in methods}
    ref = per_method[reference]
    rows = []
    for method in methods:
        values = per_method[method]
        mean, std = _mean_std(values.to_numpy())
        score = _mean_std(_scores(values.to_numpy(), direction))[0]
        notes = sorted(set(part.loc[(part["method"] == method) & (part["note"] != ""), "note"]))
        row = {"convention": convention, "metric": metric, "method": method, "direction": direction,
               "n": int(values.size), "mean": mean, "std": std, "score": score, "rank": math.nan,
               "best": False, "n_paired": None, "p_value": math.nan, "p_holm": math.nan,
               "test_note": "", "note": "; ".join(notes)}
        if method == reference:
            row["test_note"] = "reference"
        else:
            common = values.index.intersection(ref.index)
            row["n_paired"] = int(common.size)
            if common.size < MIN_PAIRED:
                row["test_note"] = "n too small"
            else:
                a = _scores(values.loc[common].to_numpy(), direction)
                b = _scores(ref.loc[common].to_numpy(), direction)
                with np.errstate(invalid="ignore"):
                    diff = a - b
                # inf - inf (two perfect PSNRs) is NaN but no difference.
                diff[a == b] = 0.0
                row["p_value"] = _wilcoxon(diff)
        rows.append(row)
    # A NaN score (values of +inf and -inf together) has no place in an order.
    ranked = [r for r in rows if direction and not math.isnan(r["score"])]
    if ranked:
        ranks = rankdata([_rank_keys(r["score"], direction) for r in ranked], method="average")
        for r, rank in zip(ranked, ranks):
            r["rank"] = float(rank)
            r["best"] = bool(rank == ranks.min())
    return rows


def _add_holm(rows: list[dict], methods: list[str], reference: str) -> None:
    """Holm-adjust each method's tests across the metrics of one convention, in place."""
    for method in methods:
        if method == reference:
            continue
        mine = [r for r in rows if r["method"] == method]
        for r, adjusted in zip(mine, holm([r["p_value"] for r in mine])):
            r["p_holm"] = float(adjusted)


def _add_mean_rank(rows: list[dict], methods: list[str]) -> None:
    """Each method's mean rank over the ranked metrics of one convention, in place.

    A metric where a method has no value is skipped for that method, so its mean rank covers
    fewer metrics (the HTML page says how many).
    """
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        ranks = [r["rank"] for r in mine if not math.isnan(r["rank"])]
        mean_rank = float(np.mean(ranks)) if ranks else math.nan
        for r in mine:
            r["mean_rank"] = mean_rank


# --------------------------------------------------------------------------- costs
def _sidecar_figures(path) -> tuple[float, int]:
    """(fusion seconds, parameter count) that a fused volume's JSON sidecar records."""
    p = Path(path)
    sidecar = read_json_object(p, "fusion sidecar")
    seconds, parameters = sidecar.get("Seconds"), sidecar.get("ParameterCount")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        raise InputError(p, f"no fusion seconds (key 'Seconds'), found {seconds!r}")
    if isinstance(parameters, bool) or not isinstance(parameters, int):
        raise InputError(p, f"no parameter count (key 'ParameterCount'), found {parameters!r}")
    return float(seconds), parameters


def _training_seconds(path) -> float:
    """The summed per-iteration ``seconds`` of a training log (every iteration once, resumes included)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "training log not found")
    try:
        df = pd.read_csv(p)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(p, f"not a readable training log ({exc})") from exc
    seconds = pd.to_numeric(df.get("seconds", pd.Series(dtype=object)), errors="coerce")
    if df.empty or "seconds" not in df.columns or seconds.isna().any():
        raise InputError(p, "a training log needs rows and a numeric 'seconds' column")
    return float(seconds.sum())


def cost_from_runs(sidecars: dict, training_logs: dict) -> dict:
    """Cost figures of each method from what its jobs recorded.

    ``sidecars``: method -> the JSON sidecars of its fused volumes, which record the seconds of the fusion
    itself (reading the inputs, loading the network, fusing, writing the output: no interpreter start-up,
    imports or kernel build) and the network's parameter count; ``training_logs``: method -> its training
    log (``training_log.csv``, whose per-iteration seconds are summed). Returns method ->
    ``{"parameters", "fusion_seconds", "training_seconds"}`` for every method named in either dict:
    ``fusion_seconds`` is the mean over the volumes, None where a method has no files (a shipped model
    has no training). A missing or malformed file raises :class:`InputError` naming it.
    """
    out = {}
    for method in sorted(set(sidecars) | set(training_logs)):
        figures = [_sidecar_figures(p) for p in sidecars.get(method, ())]
        for path, (_, count) in zip(sidecars.get(method, ()), figures):
            if count != figures[0][1]:
                raise InputError(path, f"{method} fused with {count} parameters here and {figures[0][1]} in "
                                       f"{sidecars[method][0]}: one method, one network")
        logs = [_training_seconds(p) for p in training_logs.get(method, ())]
        out[method] = {
            "parameters": figures[0][1] if figures else None,
            "fusion_seconds": float(np.mean([seconds for seconds, _ in figures])) if figures else None,
            "training_seconds": float(np.sum(logs)) if logs else None,
        }
    return out


# --------------------------------------------------------------------------- HTML
def _p(value) -> str:
    return f"{value:.2g}" if value >= 1e-3 else f"{value:.1e}"


def _duration(seconds) -> str:
    if _missing(seconds):
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
    text = mean if _missing(row["std"]) else f"{mean} ± {std}"
    if not _missing(row["rank"]):
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


def _convention_section(table: pd.DataFrame, convention: str, reference: str, footnotes: list[str]) -> str:
    part = table[table["convention"] == convention]
    metrics = list(dict.fromkeys(part["metric"]))
    methods = list(dict.fromkeys(part["method"]))
    n_max = int(part["n"].max())
    n_ranked = sum(1 for m in metrics if METRIC_DIRECTIONS.get(m))
    head = "".join(f"<th>{html.escape(m)} {_ARROWS.get(METRIC_DIRECTIONS.get(m, ''), '')}</th>" for m in metrics)
    mean_ranks = part.groupby("method")["mean_rank"].first()
    best_mean = mean_ranks.min()
    body = []
    for method in methods:
        rows = part[part["method"] == method].set_index("metric")
        cells = [f"<td class='lbl'>{html.escape(method)}</td>"]
        cells += [_cell(rows.loc[m], n_max, footnotes) for m in metrics]
        mean_rank = mean_ranks[method]
        rank_text = format_number(mean_rank) if _missing(mean_rank) else f"{mean_rank:.2f}"
        covered = int(rows["rank"].notna().sum())
        if not _missing(mean_rank) and covered < n_ranked:
            rank_text += f" <span class='n'>({covered} of {n_ranked})</span>"
        if not _missing(mean_rank) and mean_rank == best_mean:
            rank_text = f"<b>{rank_text}</b>"
        cells.append(f"<td class='mr'>{rank_text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
        if method != reference:
            p_cells = "".join(_p_cell(rows.loc[m]) for m in metrics)
            body.append(f"<tr class='prow'><td class='lbl p'>vs {html.escape(reference)}</td>{p_cells}<td></td></tr>")
    best = [m for m in methods if mean_ranks[m] == best_mean]
    verdict = (f"Best overall (lowest mean rank): <b>{html.escape(', '.join(best))}</b>" if best
               else "No metric could be ranked.")
    return f"""<h2>Convention {html.escape(convention)}</h2>
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
        params = "–" if _missing(c["parameters"]) else f"{int(c['parameters']):,}"
        fusion = "–" if _missing(c["fusion_seconds"]) else f"{c['fusion_seconds']:.3g} s"
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
    sections = [_convention_section(table, c, reference, footnotes) for c in dict.fromkeys(table["convention"])]
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in footnotes)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>
  body {{ font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 1.5em; color: #222; }}
  table {{ border-collapse: collapse; font-size: 0.9em; margin-bottom: 0.5em; }}
  th, td {{ padding: 0.3em 0.7em; border-bottom: 1px solid #ddd; text-align: right; white-space: nowrap; }}
  th {{ background: #f0f3f7; border-bottom: 2px solid #99a; }}
  td.lbl {{ text-align: left; font-weight: 600; }}
  td.mr {{ background: #f6f8fb; }}
  tr.prow td {{ font-size: 0.8em; color: #666; border-bottom: 1px solid #bbb; }}
  tr.prow td.lbl {{ font-weight: normal; padding-left: 1.5em; }}
  sup.rank {{ color: #1f4e9c; padding-left: 0.15em; }}
  sup.fn, .n {{ color: #888; }}
  .n {{ font-size: 0.85em; }}
  .note, ol {{ font-size: 0.85em; color: #555; max-width: 60em; }}
  h2 {{ font-size: 1.1em; margin-top: 1.6em; }}
</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
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
</body>
</html>
"""


# --------------------------------------------------------------------------- figure
def comparison_figure(long_df: pd.DataFrame, out_png, reference: str = "lpmnet",
                      title: str = "Fusion method comparison", per_row: int = 4) -> Path:
    """Box plots of every metric, methods side by side, one block of panels per convention.

    Each panel shows the per-subject values (box: quartiles, whiskers 1.5 IQR, dots: subjects,
    reference method in blue).  Non-finite values (undefined ones, an infinite PSNR) cannot be
    drawn; a panel says how many it left out.  Writes ``out_png`` atomically, returns its path.
    """
    df = _check_long(long_df)
    methods = method_order(df["method"], first=reference)
    conventions = _ordered(df["convention"], TABLE_CONVENTIONS)
    blocks = [(c, _ordered(df.loc[df["convention"] == c, "metric"], METRIC_NAMES)) for c in conventions]
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
    arrow = _ARROWS.get(METRIC_DIRECTIONS.get(metric, ""), "")
    ax.set_title(f"{metric} {arrow}", fontsize=10)
    if left_out:
        ax.text(0.98, 0.98, f"{left_out} undefined or infinite not shown", transform=ax.transAxes, ha="right",
                va="top", fontsize=7, color="#888")


# --------------------------------------------------------------------------- writing
def write_comparison(long_df: pd.DataFrame, out_tsv, out_html, out_png=None, reference: str = "lpmnet",
                     costs: dict | None = None, title: str = "Fusion method comparison") -> pd.DataFrame:
    """:func:`compare` ``long_df`` and write the TSV, the HTML page and optionally the PNG, atomically.

    The TSV has the columns :data:`COMPARISON_COLUMNS` (floats as ``%.6g``, missing values as
    ``NaN``, ``best`` as True/False); the cost figures are repeated on every row of a method.
    ``pandas.read_csv(out_tsv, sep="\\t")`` reads it back.  Returns the table.
    """
    table = compare(long_df, reference=reference, costs=costs)
    with atomic_output(out_tsv) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format=FLOAT_FORMAT, na_rep=NA_REP, lineterminator="\n")
    atomic_write_text(out_html, render_comparison_html(table, reference=reference, title=title))
    if out_png is not None:
        comparison_figure(long_df, out_png, reference=reference, title=title)
    return table
