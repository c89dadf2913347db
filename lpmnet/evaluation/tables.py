"""Metric tables: one JSON per (subject, method), aggregated into long and summary tables.

* :func:`aggregate` reads many files of :func:`lpmnet.metrics.records.write_metrics_json` (one per
  subject and method) into a long table (one row per subject / method / convention / metric) and a
  summary table (one row per method and convention: number of subjects, then mean and sample standard
  deviation over subjects of each metric).
* :func:`write_tables` writes both as TSV (and optionally the summary as a small HTML page).

Convention meanings: ``lpmnet`` = 3D definitions of the LPM-Net code; ``standard`` = 2D
slice-wise community toolbox definitions (see :mod:`lpmnet.metrics`).
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np
import pandas as pd

from lpmnet.errors import InputError
from lpmnet.volumes.io import atomic_output, atomic_write_text
from lpmnet.metrics import METRIC_NAMES, TABLE_CONVENTIONS
from lpmnet.metrics.records import metric_order, metrics_record, read_metrics_json

__all__ = [
    "LONG_COLUMNS",
    "CONVENTION_NOTE",
    "method_order",
    "aggregate",
    "summary_columns",
    "write_tables",
    "render_summary_html",
    "html_page",
]

#: Columns of the long table (and keys of :func:`metrics_record` rows).
LONG_COLUMNS = ("subject", "method", "convention", "metric", "value", "slices_used", "note")
#: Columns of a pair's ``failed_subjects.tsv``: the subjects left out of its tables, and why.
FAILED_COLUMNS = ("subject", "split", "modality", "problem")

CONVENTION_NOTE = ("lpmnet = 3D definitions of the LPM-Net code; "
                   "standard = 2D slice-wise community toolbox definitions; "
                   "artefacts = the project's checks (background: fused level where both sources are 0; "
                   "lattice: 16-voxel period over the mean fusion's)")

FLOAT_FORMAT = "%.6g"
NA_REP = "NaN"


def method_order(methods, first: str = "lpmnet") -> list[str]:
    """Each method once: ``first`` (the table's reference) when it is there, then the others alphabetically."""
    unique = set(methods)
    return ([first] if first in unique else []) + sorted(unique - {first})


def _convention_order(conventions) -> list[str]:
    unique = set(conventions)
    return [c for c in TABLE_CONVENTIONS if c in unique] + sorted(unique - set(TABLE_CONVENTIONS))


def summary_columns(metrics=METRIC_NAMES) -> list[str]:
    """Columns of the summary table: method, convention, n_subjects, then <metric>_mean, <metric>_std."""
    cols = ["method", "convention", "n_subjects"]
    for m in metrics:
        cols += [f"{m}_mean", f"{m}_std"]
    return cols


def aggregate(json_paths) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read metric JSONs into ``(long_df, summary_df)``.

    ``long_df``: columns :data:`LONG_COLUMNS`, one row per subject / method / convention /
    metric, sorted by method (``lpmnet`` first, then alphabetical), convention (``lpmnet``,
    ``standard``, then others), subject, metric (:data:`METRIC_NAMES` order); ``slices_used`` is a
    nullable integer column.

    ``summary_df``: one row per (method, convention) in the same order, columns
    ``method, convention, n_subjects`` then ``<metric>_mean, <metric>_std`` for every metric of
    :data:`METRIC_NAMES` (always all of them, NaN when a metric was not computed) followed by
    any other metric names found, alphabetically.  Means and sample standard deviations
    (ddof=1, NaN for a single value) are over subjects, skipping NaN (undefined) values;
    ``n_subjects`` counts the subjects of that method and convention.

    Two files for the same subject and method raise :class:`InputError`; an empty list raises
    :class:`ValueError`.
    """
    paths = [Path(p) for p in json_paths]
    if not paths:
        raise ValueError("no metric files to aggregate")
    rows, seen = [], {}
    for p in paths:
        doc = read_metrics_json(p)
        key = (doc["subject"], doc["method"])
        if key in seen:
            raise InputError(p, f"subject {key[0]} / method {key[1]} is also in {seen[key]}")
        seen[key] = p
        rows += metrics_record(doc["subject"], doc["method"], doc["conventions"])

    long_df = pd.DataFrame(rows, columns=list(LONG_COLUMNS))
    methods = method_order(long_df["method"])
    conventions = _convention_order(long_df["convention"])
    metrics = metric_order(set(long_df["metric"]))
    long_df["slices_used"] = pd.array(
        [None if s is None or (isinstance(s, float) and math.isnan(s)) else int(s)
         for s in long_df["slices_used"]], dtype="Int64")
    long_df["value"] = long_df["value"].astype(float)
    sort_keys = {
        "method": {m: i for i, m in enumerate(methods)},
        "convention": {c: i for i, c in enumerate(conventions)},
        "metric": {m: i for i, m in enumerate(metrics)},
    }
    long_df = long_df.sort_values(
        ["method", "convention", "subject", "metric"],
        key=lambda col: col.map(sort_keys[col.name]) if col.name in sort_keys else col,
        kind="stable",
    ).reset_index(drop=True)

    summary_metrics = list(METRIC_NAMES) + [m for m in metrics if m not in METRIC_NAMES]
    summary_rows = []
    for method in methods:
        for convention in conventions:
            part = long_df[(long_df["method"] == method) & (long_df["convention"] == convention)]
            if part.empty:
                continue
            row = {"method": method, "convention": convention,
                   "n_subjects": int(part["subject"].nunique())}
            for m in summary_metrics:
                vals = part.loc[part["metric"] == m, "value"].to_numpy(dtype=float)
                vals = vals[~np.isnan(vals)]
                with np.errstate(invalid="ignore"):
                    row[f"{m}_mean"] = float(np.mean(vals)) if vals.size else float("nan")
                    row[f"{m}_std"] = float(np.std(vals, ddof=1)) if vals.size > 1 else float("nan")
            summary_rows.append(row)
    summary_df = pd.DataFrame(summary_rows, columns=summary_columns(summary_metrics))
    summary_df["n_subjects"] = summary_df["n_subjects"].astype(int)
    return long_df, summary_df


def _counts(long_df: pd.DataFrame) -> dict:
    """(method, convention, metric) -> number of defined (non-NaN) values."""
    defined = long_df[~long_df["value"].isna()]
    return defined.groupby(["method", "convention", "metric"]).size().to_dict()


def format_number(v) -> str:
    """A table cell's number to 4 significant digits; "–" for a missing one (None, NA, NaN)."""
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.4g}"


def html_page(title: str, style: str, body: str) -> str:
    """A standalone HTML page titled ``title``, with the style sheet ``style`` and the markup ``body``."""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>
{style}</style>
</head>
<body>
{body}
</body>
</html>
"""


def _undefined_notes(long_df: pd.DataFrame | None) -> dict:
    """(method, convention, metric) -> the distinct reasons why some of its values are undefined."""
    if long_df is None or "note" not in long_df:
        return {}
    noted = long_df[long_df["note"].fillna("") != ""]
    return {key: sorted(set(part["note"])) for key, part in noted.groupby(["method", "convention", "metric"])}


def _failed_section(failed) -> str:
    if not failed:
        return ""
    rows = "".join(
        "<tr>" + "".join(f"<td class='lbl'>{html.escape(str(r[c]))}</td>" for c in FAILED_COLUMNS) + "</tr>"
        for r in failed)
    head = "".join(f"<th style='text-align:left'>{c}</th>" for c in FAILED_COLUMNS)
    return (f"<h3>Subjects not in this table ({len({r['subject'] for r in failed})})</h3>"
            "<p class='note'>Their inputs failed the check before processing (also in failed_subjects.tsv); "
            "training subjects among them were left out of the training set.</p>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")


_SUMMARY_STYLE = """\
  body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 1.5em; color: #222; }
  table { border-collapse: collapse; font-size: 0.9em; }
  caption { caption-side: top; text-align: left; font-weight: 600; font-size: 1.05em; padding-bottom: 0.5em; }
  caption .note { font-weight: normal; font-size: 0.85em; color: #555; }
  th, td { padding: 0.3em 0.7em; border-bottom: 1px solid #ddd; text-align: right; white-space: nowrap; }
  th { background: #f0f3f7; border-bottom: 2px solid #99a; }
  td.lbl { text-align: left; font-weight: 600; }
  tr:nth-child(even) td { background: #fafbfc; }
  .n { color: #888; font-size: 0.85em; }
  .note, ol { font-size: 0.85em; color: #555; }
  h3 { font-size: 1em; margin-top: 1.5em; }
  .warning { background: #fff3cd; border-left: 4px solid #d39e00; padding: 0.5em 0.8em; }
"""


def render_summary_html(summary_df: pd.DataFrame, long_df: pd.DataFrame | None = None,
                 title: str = "Fusion metrics", failed=(), warnings=()) -> str:
    """A small standalone HTML page of the summary table (mean ± SD per metric).

    With ``long_df`` a cell whose number of defined values differs from ``n_subjects`` shows
    that count (``n=k``), and a cell with undefined values points to a footnote saying why.
    ``failed``: rows (:data:`FAILED_COLUMNS`) of the subjects left out, listed below the table;
    ``warnings``: sentences shown above it (e.g. that test subjects were also trained on).
    """
    counts = _counts(long_df) if long_df is not None else {}
    notes = _undefined_notes(long_df)
    footnotes = []
    metrics = [c[: -len("_mean")] for c in summary_df.columns if c.endswith("_mean")]
    if long_df is not None:  # only the metrics that were computed (even if undefined everywhere)
        present = set(long_df["metric"])
        metrics = [m for m in metrics if m in present] or metrics
    else:
        metrics = [m for m in metrics if not summary_df[f"{m}_mean"].isna().all()] or metrics
    head = "".join(f"<th>{html.escape(m)}</th>" for m in metrics)
    body = []
    for _, row in summary_df.iterrows():
        cells = [f"<td class='lbl'>{html.escape(str(row['method']))}</td>",
                 f"<td class='lbl'>{html.escape(str(row['convention']))}</td>",
                 f"<td>{int(row['n_subjects'])}</td>"]
        for m in metrics:
            mean, std = row[f"{m}_mean"], row[f"{m}_std"]
            text = (format_number(mean) if (isinstance(std, float) and math.isnan(std))
                    else f"{format_number(mean)} ± {format_number(std)}")
            n = counts.get((row["method"], row["convention"], m))
            if long_df is not None and n is not None and n != int(row["n_subjects"]):
                text += f" <span class='n'>(n={n})</span>"
            for note in notes.get((row["method"], row["convention"], m), []):
                if note not in footnotes:
                    footnotes.append(note)
                text += f"<sup>{footnotes.index(note) + 1}</sup>"
            cells.append(f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    caption = (f"{html.escape(title)}<br><span class='note'>Mean ± sample SD over subjects; "
               "undefined values are skipped (–: no value). Conventions: "
               f"{html.escape(CONVENTION_NOTE)}.</span>")
    page = f"""{"".join(f"<p class='warning'>{html.escape(w)}</p>" for w in warnings)}
<table>
<caption>{caption}</caption>
<thead><tr><th style="text-align:left">method</th><th style="text-align:left">convention</th><th>n</th>{head}</tr></thead>
<tbody>
{chr(10).join(body)}
</tbody>
</table>
{"<ol>" + "".join(f"<li>{html.escape(n)}</li>" for n in footnotes) + "</ol>" if footnotes else ""}
{_failed_section(failed)}
"""
    return html_page(title, _SUMMARY_STYLE, page)


def _write_tsv(df: pd.DataFrame, path) -> Path:
    with atomic_output(path) as tmp:
        df.to_csv(tmp, sep="\t", index=False, float_format=FLOAT_FORMAT, na_rep=NA_REP,
                  lineterminator="\n")
    return Path(path)


def write_tables(json_paths, long_tsv, summary_tsv, summary_html=None,
                 title: str = "Fusion metrics", failed=(), failed_tsv=None,
                 warnings=()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`aggregate` the JSONs and write the long and summary tables atomically.

    TSVs are tab-separated with a header, floats as ``%.6g``, missing values as ``NaN``
    (``pandas.read_csv(path, sep="\\t")`` reads them back).  ``summary_html`` (optional path)
    gets a standalone HTML page of the summary (:func:`render_summary_html`).  ``failed``: rows
    (:data:`FAILED_COLUMNS`) of subjects that could not be processed, listed in the HTML and in
    ``failed_tsv``; ``warnings`` are shown above the HTML table. With no JSON at all (every subject failed) the tables have their header only.
    Returns ``(long_df, summary_df)``.
    """
    if json_paths:
        long_df, summary_df = aggregate(json_paths)
    else:
        long_df, summary_df = pd.DataFrame(columns=list(LONG_COLUMNS)), pd.DataFrame(columns=summary_columns())
    _write_tsv(long_df, long_tsv)
    _write_tsv(summary_df, summary_tsv)
    if failed_tsv is not None:
        _write_tsv(pd.DataFrame(list(failed), columns=list(FAILED_COLUMNS)), failed_tsv)
    if summary_html is not None:
        atomic_write_text(summary_html, render_summary_html(summary_df, long_df, title=title, failed=failed,
                                                                warnings=warnings))
    return long_df, summary_df
