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

:func:`write_comparison_tsv` writes the result as a tidy TSV (:data:`COMPARISON_COLUMNS`; the cost
figures are repeated on every row of a method so that the file stays one table). The statistics
live here, without matplotlib; the HTML page and the PNG of box plots are rendered by
:mod:`lpmnet.evaluation.comparison_report` (:func:`~lpmnet.evaluation.comparison_report.write_comparison`
writes all three).

Values of different conventions are never compared with each other (see
:data:`lpmnet.evaluation.tables.CONVENTION_NOTE`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata, wilcoxon

from lpmnet.errors import InputError
from lpmnet.volumes.io import atomic_output, read_json_object
from lpmnet.metrics import METRIC_NAMES, TABLE_CONVENTIONS
from lpmnet.metrics.ranking import (CLOSER_TO_ZERO, HIGHER, LOWER, METRIC_ARROWS, METRIC_DIRECTIONS, rank_key,
                                    ranked_values, score_key)
from lpmnet.evaluation.tables import FLOAT_FORMAT, NA_REP, method_order

__all__ = [
    "HIGHER",
    "LOWER",
    "CLOSER_TO_ZERO",
    "METRIC_DIRECTIONS",
    "METRIC_ARROWS",
    "MIN_PAIRED",
    "COST_KEYS",
    "COMPARISON_COLUMNS",
    "compare",
    "rank_key",
    "holm",
    "cost_from_runs",
    "write_comparison_tsv",
]

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


# --------------------------------------------------------------------------- ordering
def ordered_names(names, known) -> list[str]:
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
def check_long_table(long_df: pd.DataFrame) -> pd.DataFrame:
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
    df = check_long_table(long_df)
    if reference not in set(df["method"]):
        raise ValueError(f"reference method {reference!r} is not in the metrics table; "
                         f"methods are {sorted(set(df['method']))}")
    methods = method_order(df["method"], first=reference)
    cost = _check_costs(costs, methods)
    rows = []
    for convention in ordered_names(df["convention"], TABLE_CONVENTIONS):
        conv = df[df["convention"] == convention]
        conv_rows = []
        for metric in ordered_names(conv["metric"], METRIC_NAMES):
            conv_rows += _metric_rows(conv[conv["metric"] == metric], convention, metric, methods, reference)
        _add_holm(conv_rows, methods, reference)
        _add_mean_rank(conv_rows, methods)
        rows += conv_rows
    for row in rows:
        row.update(cost[row["method"]])
    table = pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))
    for col in ("n", "n_paired", "parameters"):
        table[col] = pd.array([None if is_missing(v) else int(v) for v in table[col]], dtype="Int64")
    for col in ("fusion_seconds", "training_seconds"):
        table[col] = pd.to_numeric(table[col], errors="raise").astype(float)
    table["best"] = table["best"].astype(bool)
    return table


def is_missing(value) -> bool:
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
        score = _mean_std(ranked_values(values.to_numpy(), direction))[0]
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
                a = ranked_values(values.loc[common].to_numpy(), direction)
                b = ranked_values(ref.loc[common].to_numpy(), direction)
                with np.errstate(invalid="ignore"):
                    diff = a - b
                # inf - inf (two perfect PSNRs) is NaN but no difference.
                diff[a == b] = 0.0
                row["p_value"] = _wilcoxon(diff)
        rows.append(row)
    # A NaN score (values of +inf and -inf together) has no place in an order.
    ranked = [r for r in rows if direction and not math.isnan(r["score"])]
    if ranked:
        ranks = rankdata([score_key(r["score"], direction) for r in ranked], method="average")
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


# --------------------------------------------------------------------------- writing
def write_comparison_tsv(table: pd.DataFrame, out_tsv) -> None:
    """Write a :func:`compare` table atomically as a TSV: the columns :data:`COMPARISON_COLUMNS` (floats as
    ``%.6g``, missing values as ``NaN``, ``best`` as True/False). ``pandas.read_csv(out_tsv, sep="\\t")``
    reads it back."""
    with atomic_output(out_tsv) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format=FLOAT_FORMAT, na_rep=NA_REP, lineterminator="\n")
