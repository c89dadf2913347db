"""The page a run ends with (``results/report.html``): for every dataset and modality pair, the headline
comparison of the methods, then links to the full comparison, the metric tables and the box plots, and per test
subject to its viewer page (:mod:`lpmnet.evaluation.viewer`) and its montage.

The headline table is the comparison's section of the lpmnet convention (the LPM-Net paper's metrics in its
code's 3D definitions; the other conventions are on the comparison page): mean ± SD over the test subjects,
the rank as a superscript, the best in bold, the mean rank.  Links are relative, so the results folder can be
moved, copied or zipped whole and the report still opens its pages.
"""

from __future__ import annotations

import html
import os
from urllib.parse import quote
from dataclasses import dataclass, field
from pathlib import Path

from lpmnet import __version__
from lpmnet.evaluation.comparison_report import TABLE_STYLE, convention_section, read_comparison_tsv
from lpmnet.evaluation.tables import CONVENTION_NOTE, html_page
from lpmnet.volumes.io import atomic_write_text

__all__ = ["PairResults", "SubjectResults", "render_report_html", "write_report", "HEADLINE_CONVENTION"]

_REPORT_STYLE = """\
  section.pair { border-top: 1px solid #ccd; margin-top: 1.5em; }
  h3 { font-size: 1em; margin: 1em 0 0.4em; }
  ul.subjects { columns: 3 16em; font-size: 0.95em; }
  a.viewer { font-weight: 600; }
"""

#: The convention of the headline tables.
HEADLINE_CONVENTION = "lpmnet"


@dataclass(frozen=True)
class SubjectResults:
    """One test subject of a pair: its viewer page and montage."""

    subject: str
    viewer: Path
    montage: Path | None = None


@dataclass(frozen=True)
class PairResults:
    """One modality pair of one dataset: its comparison table (TSV), the pages linked beside it (link text ->
    file) and its test subjects; ``colour``: a functional pair, scored on the luminance."""

    dataset: str
    pair: str
    comparison: Path
    pages: dict[str, Path] = field(default_factory=dict)
    subjects: list[SubjectResults] = field(default_factory=list)
    colour: bool = False

    @property
    def anchor(self) -> str:
        return f"{self.dataset}-{self.pair}"


def _href(path, base: Path) -> str:
    """A link from the folder ``base`` to ``path``: relative (abspath, not resolve: a symbolic link to a
    dataset folder stays a folder of the results), URL-encoded."""
    relative = Path(os.path.relpath(os.path.abspath(path), os.path.abspath(base))).as_posix()
    return html.escape(quote(relative), quote=True)


def _pair_section(pair: PairResults, base: Path, reference: str) -> str:
    table = read_comparison_tsv(pair.comparison)
    conventions = list(dict.fromkeys(table["convention"]))
    convention = HEADLINE_CONVENTION if HEADLINE_CONVENTION in conventions else conventions[0]
    footnotes: list[str] = []
    headline = convention_section(table, convention, reference, footnotes, tests=False, heading="h3")
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in footnotes)
    links = " \u00b7 ".join(f"<a href='{_href(path, base)}'>{html.escape(text)}</a>" for text, path in pair.pages.items())
    colour = ("<p class='note'>A functional pair: every method fused the anatomical volume with the functional "
              "volume's luminance through the colour map, and is scored on that luminance; its colour fusions "
              "are on the viewer pages and montages.</p>") if pair.colour else ""
    rows = []
    for s in pair.subjects:
        montage = f" \u00b7 <a href='{_href(s.montage, base)}'>montage</a>" if s.montage else ""
        rows.append(f"<li><a class='viewer' href='{_href(s.viewer, base)}'>sub-{html.escape(s.subject)}: "
                    f"viewer</a>{montage}</li>")
    subjects = (f"<h3>Test subjects</h3>\n<ul class='subjects'>{''.join(rows)}</ul>" if rows
                else "<p class='note'>No test subject could be fused.</p>")
    return f"""<section class="pair" id="{html.escape(pair.anchor, quote=True)}">
<h2>{html.escape(pair.dataset)}: {html.escape(pair.pair)}</h2>
{colour}
{headline}
{"<ol>" + notes + "</ol>" if notes else ""}
<p>{links}</p>
{subjects}
</section>"""


def render_report_html(pairs: list[PairResults], base, *, reference: str = "lpmnet",
                       title: str = "Multimodal fusion results") -> str:
    """The report page for a file in the folder ``base`` (links are relative to it)."""
    base = Path(base)
    contents = "".join(f"<li><a href='#{html.escape(p.anchor, quote=True)}'>{html.escape(p.dataset)}: "
                       f"{html.escape(p.pair)}</a></li>" for p in pairs)
    sections = "\n".join(_pair_section(p, base, reference) for p in pairs)
    body = sections or "<p>No pair has results yet.</p>"
    page = f"""<h1>{html.escape(title)}</h1>
<p class='note'>lpmnet {html.escape(__version__)}. For each modality pair: the methods' headline comparison over the
test subjects in the {HEADLINE_CONVENTION} convention, or the first one the run computed (each table names its
own; mean ± SD, superscript = rank, bold = best; mean rank over the ranked metrics; ↑ higher is better, ↓ lower
is better, →0 closer to 0 is better), then the full comparison
(every convention, Wilcoxon tests against {html.escape(reference)}, costs), the metric tables, the box plots, and
each test subject's viewer page (every fused volume beside the sources, all on one voxel) and montage.
Conventions: {html.escape(CONVENTION_NOTE)}.</p>
<ul>{contents}</ul>
{body}
"""
    return html_page(title, TABLE_STYLE + _REPORT_STYLE, page)


def write_report(out_html, pairs: list[PairResults], *, reference: str = "lpmnet") -> Path:
    """Write :func:`render_report_html` to ``out_html`` atomically and return its path."""
    out = Path(out_html)
    atomic_write_text(out, render_report_html(pairs, out.parent, reference=reference))
    return out
