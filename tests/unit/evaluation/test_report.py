import math
import re
from pathlib import Path
from urllib.parse import unquote

import pandas as pd

from lpmnet.evaluation.comparison import compare, write_comparison_tsv
from lpmnet.evaluation.report import PairResults, SubjectResults, write_report
from lpmnet.evaluation.tables import LONG_COLUMNS


def comparison_tsv(path, values):
    """A comparison TSV of {(method, metric): per-subject values} in the lpmnet and standard conventions."""
    rows = [{"subject": f"sub-{i:02d}", "method": method, "convention": convention, "metric": metric,
             "value": v + (10 if convention == "standard" else 0), "slices_used": None,
             "note": "not defined here" if math.isnan(v) else ""}
            for convention in ("lpmnet", "standard") for (method, metric), vs in values.items()
            for i, v in enumerate(vs)]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_comparison_tsv(compare(pd.DataFrame(rows, columns=list(LONG_COLUMNS)), reference="lpmnet"), path)
    return path


def pair_results(root, dataset, pair, subjects, colour=False):
    folder = root / dataset / pair
    tsv = comparison_tsv(folder / "comparison.tsv", {
        ("lpmnet", "SSIM"): [0.9, 0.8], ("mean", "SSIM"): [0.7, 0.6],
        ("lpmnet", "AG"): [5.0, 6.0], ("mean", "AG"): [7.0, float("nan")]})
    pages = {}
    for text, name in (("full comparison", "comparison.html"), ("metric tables", "metrics.html")):
        pages[text] = folder / name
        pages[text].write_text("x")
    entries = []
    for s in subjects:
        (folder / "viewer").mkdir(exist_ok=True)
        (folder / "qc").mkdir(exist_ok=True)
        viewer, montage = folder / "viewer" / f"sub-{s}_viewer.html", folder / "qc" / f"sub-{s}_montage.png"
        viewer.write_text("x")
        montage.write_bytes(b"x")
        entries.append(SubjectResults(s, viewer, montage))
    return PairResults(dataset, pair, tsv, pages, entries, colour=colour)


def test_the_report_opens_with_each_pairs_headline_table_and_links_its_pages(tmp_path):
    results = tmp_path / "results"
    pairs = [pair_results(results, "demo", "T1-FLAIR", ["synth03", "synth04"]),
             pair_results(results, "demo", "T1-PET", ["synth03"], colour=True)]
    out = write_report(results / "report.html", pairs)
    page = out.read_text()
    sections = re.findall(r'<section class="pair" id="([^"]+)">(.*?)</section>', page, re.S)
    assert [anchor for anchor, _ in sections] == ["demo-T1-FLAIR", "demo-T1-PET"]
    assert "href='#demo-T1-PET'" in page
    for _, body in sections:
        assert "Convention lpmnet" in body and "Convention standard" not in body  # the headline only
        assert "vs lpmnet" not in body  # the tests are on the full comparison page
        assert re.search(r"<td class='lbl'>lpmnet</td><td><b>0\.85 ± 0\.0707", body)  # best SSIM in bold
        assert "(n=1)" in body and "not defined here" in body  # a missing value is explained
    assert "functional pair" not in sections[0][1] and "functional pair" in sections[1][1]
    links = re.findall(r"href='([^'#]+)'", page)
    assert len(links) == 2 * 2 + (2 + 1) * 2  # per pair its two pages, per subject its viewer and montage
    for link in links:  # relative, and they resolve from the report's folder
        assert not Path(link).is_absolute() and (out.parent / unquote(link)).is_file()
    assert "sub-synth04: viewer" in page


def test_a_pair_with_no_test_subject_says_so(tmp_path):
    out = write_report(tmp_path / "report.html", [pair_results(tmp_path, "d", "A-B", [])])
    assert "No test subject could be fused" in out.read_text()
