import json
import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread
from scipy.stats import wilcoxon
from statsmodels.stats.multitest import multipletests

from lpmnet.evaluation.comparison import COMPARISON_COLUMNS, METRIC_DIRECTIONS, compare, cost_from_runs, holm
from lpmnet.evaluation.comparison_report import render_comparison_html, write_comparison
from lpmnet.errors import InputError
from lpmnet.metrics import ARTEFACT_NAMES, METRIC_NAMES
from lpmnet.evaluation.tables import LONG_COLUMNS

SPREAD = np.array([-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0])  # 7 subjects, mean 0


def long_table(values: dict, convention: str = "lpmnet", notes: dict | None = None) -> pd.DataFrame:
    """Long metrics table from {(method, metric): per-subject values} (subjects sub-01, sub-02, ...)."""
    notes = notes or {}
    rows = []
    for (method, metric), vals in values.items():
        for i, v in enumerate(vals):
            rows.append({"subject": f"sub-{i + 1:02d}", "method": method, "convention": convention,
                         "metric": metric, "value": float(v), "slices_used": None,
                         "note": notes.get((method, metric), "") if math.isnan(v) else ""})
    return pd.DataFrame(rows, columns=list(LONG_COLUMNS))


def row(table, method, metric, convention="lpmnet"):
    sel = table[(table["method"] == method) & (table["metric"] == metric) & (table["convention"] == convention)]
    assert len(sel) == 1
    return sel.iloc[0]


def test_directions_cover_every_metric():
    assert set(METRIC_DIRECTIONS) == set(METRIC_NAMES) | set(ARTEFACT_NAMES)
    assert METRIC_DIRECTIONS["background"] == METRIC_DIRECTIONS["lattice"] == "lower"
    assert METRIC_DIRECTIONS["Nabf"] == "lower" and METRIC_DIRECTIONS["rSFe"] == "closer_to_zero"


def test_clear_winner_ranks_best_and_mean_rank():
    df = long_table({
        ("mean", "SSIM"): 0.6 + 0.01 * SPREAD, ("lpmnet", "SSIM"): 0.8 + 0.01 * SPREAD,
        ("max", "SSIM"): 0.7 + 0.01 * SPREAD,
        ("mean", "Qabf"): 0.3 + 0.01 * SPREAD, ("lpmnet", "Qabf"): 0.5 + 0.01 * SPREAD,
        ("max", "Qabf"): 0.4 + 0.01 * SPREAD,
    })
    t = compare(df)
    assert list(t.columns) == list(COMPARISON_COLUMNS)
    assert list(t["method"].unique()) == ["lpmnet", "max", "mean"]
    assert list(t["metric"].unique()) == ["SSIM", "Qabf"]  # METRIC_NAMES order, not input order
    for metric in ("SSIM", "Qabf"):
        assert [row(t, m, metric)["rank"] for m in ("lpmnet", "max", "mean")] == [1.0, 2.0, 3.0]
        assert [bool(row(t, m, metric)["best"]) for m in ("lpmnet", "max", "mean")] == [True, False, False]
    r = row(t, "lpmnet", "SSIM")
    assert r["n"] == 7 and r["mean"] == pytest.approx(0.8) and r["std"] == pytest.approx(0.01 * np.std(SPREAD, ddof=1))
    assert r["test_note"] == "reference" and math.isnan(r["p_value"]) and pd.isna(r["n_paired"])
    means = t.groupby("method")["mean_rank"].first()
    assert means.to_dict() == {"lpmnet": 1.0, "max": 2.0, "mean": 3.0}


def test_ties_share_the_average_rank():
    base = 0.1 + 0.1 * np.arange(7)
    df = long_table({
        # the same numbers for other subjects (summed in another order, the means may differ in the last bit)
        ("lpmnet", "SSIM"): base, ("mean", "SSIM"): base[[3, 6, 0, 5, 1, 4, 2]],
        ("max", "SSIM"): base - 0.05,
        ("lpmnet", "SF"): base, ("mean", "SF"): base, ("max", "SF"): base,
    })
    t = compare(df)
    assert row(t, "lpmnet", "SSIM")["rank"] == 1.5 and row(t, "mean", "SSIM")["rank"] == 1.5
    assert row(t, "max", "SSIM")["rank"] == 3.0
    assert bool(row(t, "lpmnet", "SSIM")["best"]) and bool(row(t, "mean", "SSIM")["best"])
    assert not row(t, "max", "SSIM")["best"]
    assert all(row(t, m, "SF")["rank"] == 2.0 and row(t, m, "SF")["best"] for m in ("lpmnet", "max", "mean"))
    # identical per-subject values: a test without any difference
    assert row(t, "mean", "SF")["p_value"] == 1.0
    assert t.groupby("method")["mean_rank"].first().to_dict() == {"lpmnet": 1.75, "max": 2.5, "mean": 1.75}


def test_lower_is_better_for_nabf_and_closer_to_zero_for_rsfe():
    alternating = 0.3 * np.array([1, -1, 1, -1, 1, -1, 1.0])  # mean near 0, but every subject 0.3 off
    df = long_table({
        ("lpmnet", "Nabf"): 0.01 + 0.001 * SPREAD, ("mean", "Nabf"): 0.05 + 0.001 * SPREAD,
        ("lpmnet", "rSFe"): -0.1 + 0.01 * SPREAD, ("mean", "rSFe"): alternating,
        ("max", "rSFe"): 0.5 + 0.01 * SPREAD, ("max", "Nabf"): 0.03 + 0.001 * SPREAD,
    })
    t = compare(df)
    assert [row(t, m, "Nabf")["rank"] for m in ("lpmnet", "max", "mean")] == [1.0, 2.0, 3.0]
    # mean: its mean rSFe (0.043) is closest to 0, but its mean |rSFe| (0.3) is worse than lpmnet's 0.1
    assert abs(row(t, "mean", "rSFe")["mean"]) < abs(row(t, "lpmnet", "rSFe")["mean"])
    assert row(t, "mean", "rSFe")["score"] == pytest.approx(0.3)
    assert row(t, "lpmnet", "rSFe")["score"] == pytest.approx(np.mean(np.abs(-0.1 + 0.01 * SPREAD)))
    assert [row(t, m, "rSFe")["rank"] for m in ("lpmnet", "mean", "max")] == [1.0, 2.0, 3.0]
    assert bool(row(t, "lpmnet", "rSFe")["best"])
    # the test also uses |rSFe|
    expected = wilcoxon(np.abs(alternating), np.abs(-0.1 + 0.01 * SPREAD)).pvalue
    assert row(t, "mean", "rSFe")["p_value"] == pytest.approx(expected)


def test_wilcoxon_matches_scipy_and_holm_matches_hand_computation():
    ref = {"SSIM": np.array([0.80, 0.82, 0.79, 0.85, 0.81, 0.83, 0.78]),
           "PSNR": np.array([30.0, 31.5, 29.0, 32.0, 30.5, 31.0, 28.5]),
           "Nabf": np.array([0.010, 0.012, 0.011, 0.009, 0.013, 0.010, 0.011])}
    other = {"SSIM": ref["SSIM"] - np.array([0.05, 0.04, 0.06, 0.03, 0.05, 0.07, 0.02]),  # all lower
             "PSNR": ref["PSNR"] + np.array([0.5, -0.8, 0.1, -0.3, 0.9, -0.2, 0.4]),   # mixed
             "Nabf": ref["Nabf"] + np.array([0.002, 0.001, -0.0005, 0.003, 0.004, 0.0025, 0.0015])}
    df = long_table({**{("lpmnet", m): v for m, v in ref.items()}, **{("mean", m): v for m, v in other.items()}})
    t = compare(df)
    p = {m: wilcoxon(other[m], ref[m]).pvalue for m in ref}
    for m in ref:
        r = row(t, "mean", m)
        assert r["p_value"] == pytest.approx(p[m], rel=1e-12) and r["n_paired"] == 7 and r["test_note"] == ""
    # Holm by hand: smallest p x 3, next x 2 (not below the previous), largest x 1 (same), capped at 1
    order = sorted(ref, key=lambda m: p[m])
    expected = {}
    running = 0.0
    for k, m in enumerate(order):
        running = max(running, min(1.0, (3 - k) * p[m]))
        expected[m] = running
    for m in ref:
        assert row(t, "mean", m)["p_holm"] == pytest.approx(expected[m], rel=1e-12)
    assert p["SSIM"] == pytest.approx(2 / 2**7)  # exact test: every subject lower


def test_holm_function():
    p = [0.01, 0.04, 0.03, float("nan"), 0.5]
    got = holm(p)
    np.testing.assert_allclose(got, [0.04, 0.09, 0.09, np.nan, 0.5])  # x4, x3, x2 (raised to 0.09), x1
    tested = [0, 1, 2, 4]
    np.testing.assert_allclose(got[tested], multipletests(np.array(p)[tested], method="holm")[1])
    assert holm([0.6, 0.7]).tolist() == [1.0, 1.0]
    assert holm([]).size == 0


def test_fewer_than_six_pairs_is_not_tested():
    four = long_table({("lpmnet", "SSIM"): [0.9, 0.8, 0.85, 0.95], ("mean", "SSIM"): [0.5, 0.4, 0.45, 0.55]})
    r = row(compare(four), "mean", "SSIM")
    assert r["test_note"] == "n too small" and r["n_paired"] == 4
    assert math.isnan(r["p_value"]) and math.isnan(r["p_holm"])
    assert r["rank"] == 2.0  # ranks do not need the test
    # six subjects, but one undefined for the reference: five pairs
    six = long_table({("lpmnet", "SSIM"): [0.9, 0.8, np.nan, 0.95, 0.9, 0.9],
                      ("mean", "SSIM"): [0.5, 0.4, 0.45, 0.55, 0.5, 0.5]})
    r = row(compare(six), "mean", "SSIM")
    assert r["test_note"] == "n too small" and r["n_paired"] == 5
    html = render_comparison_html(compare(four))
    assert "n too small (n=4)" in html


def test_nan_values_are_skipped_and_explained():
    note = "undefined: constant sources"
    df = long_table({
        ("lpmnet", "VIF"): [0.5, np.nan, 0.7, 0.6, 0.5, 0.6, 0.7, 0.4],
        ("mean", "VIF"): [0.3, 0.2, 0.4, 0.3, 0.2, 0.3, 0.4, 0.3],
        ("lpmnet", "SSIM"): [0.9] * 8,
        ("mean", "SSIM"): [np.nan] * 8,
        # a perfect PSNR (inf) for both on one subject is no difference
        ("lpmnet", "PSNR"): [np.inf, 30, 31, 32, 33, 34, 35, 36],
        ("mean", "PSNR"): [np.inf, 20, 21, 22, 23, 24, 25, 26],
    }, notes={("lpmnet", "VIF"): note, ("mean", "SSIM"): note})
    t = compare(df)
    vif = row(t, "lpmnet", "VIF")
    vals = np.array([0.5, 0.7, 0.6, 0.5, 0.6, 0.7, 0.4])
    assert vif["n"] == 7 and vif["mean"] == pytest.approx(vals.mean()) and vif["std"] == pytest.approx(vals.std(ddof=1))
    assert vif["note"] == note
    assert row(t, "mean", "VIF")["n_paired"] == 7
    assert row(t, "mean", "VIF")["p_value"] == pytest.approx(
        wilcoxon(np.array([0.3, 0.4, 0.3, 0.2, 0.3, 0.4, 0.3]), vals).pvalue)
    ssim = row(t, "mean", "SSIM")
    assert ssim["n"] == 0 and math.isnan(ssim["mean"]) and math.isnan(ssim["rank"]) and not ssim["best"]
    assert ssim["n_paired"] == 0 and ssim["test_note"] == "n too small"
    assert row(t, "lpmnet", "SSIM")["rank"] == 1.0 and row(t, "lpmnet", "SSIM")["best"]
    psnr = row(t, "mean", "PSNR")
    # both means are infinite: a tie, although the paired test sees the difference
    assert math.isinf(row(t, "lpmnet", "PSNR")["mean"]) and math.isnan(row(t, "lpmnet", "PSNR")["std"])
    assert row(t, "lpmnet", "PSNR")["rank"] == 1.5 and psnr["rank"] == 1.5
    assert psnr["p_value"] == pytest.approx(wilcoxon(np.full(7, -10.0)).pvalue)  # the inf pair counts as 0
    # mean rank of "mean" covers the two metrics it has (VIF, PSNR), lpmnet all three
    means = t.groupby("method")["mean_rank"].first().to_dict()
    assert means == {"lpmnet": pytest.approx((1 + 1 + 1.5) / 3), "mean": pytest.approx((2 + 1.5) / 2)}
    page = render_comparison_html(t)
    assert "<td>–<sup class='fn'>[" in page and f"<li>{note}</li>" in page
    assert "(n=7)" in page  # VIF of lpmnet over 7 of the 8 subjects
    assert "(2 of 3)" in page


def test_bad_inputs():
    df = long_table({("lpmnet", "SSIM"): [0.9, 0.8], ("mean", "SSIM"): [0.5, 0.4]})
    with pytest.raises(ValueError, match="reference method 'dc2fusion'"):
        compare(df, reference="dc2fusion")
    with pytest.raises(ValueError, match="several rows for subject sub-01"):
        compare(pd.concat([df, df.iloc[:1]]))
    with pytest.raises(ValueError, match="lacks column"):
        compare(df.drop(columns="value"))
    with pytest.raises(ValueError, match="unknown key"):
        compare(df, costs={"mean": {"params": 3}})


def test_other_reference_goes_first():
    df = long_table({("lpmnet", "SSIM"): 0.8 + 0.01 * SPREAD, ("mean", "SSIM"): 0.6 + 0.01 * SPREAD,
                     ("asfe", "SSIM"): 0.7 + 0.01 * SPREAD})
    t = compare(df, reference="mean")
    assert list(t["method"]) == ["mean", "asfe", "lpmnet"]
    assert row(t, "mean", "SSIM")["test_note"] == "reference"
    assert row(t, "lpmnet", "SSIM")["p_value"] == pytest.approx(2 / 2**7)


def sidecar(path, seconds, parameters):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"Method": "x", "Seconds": seconds, "ParameterCount": parameters}))
    return path


def training_log(path, *seconds):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("iteration,total,seconds\n" + "".join(f"{i},0.5,{s}\n" for i, s in enumerate(seconds, 1)))
    return path


def test_costs_come_from_the_fusion_sidecars_and_the_training_logs(tmp_path):
    fused = tmp_path / "fused"
    sidecars = {"lpmnet": [sidecar(fused / f"sub-0{i}_lpmnet.json", s, 26051) for i, s in enumerate((2.0, 4.0, 6.0))],
                "mean": [sidecar(fused / "sub-01_mean.json", 0.25, 0)]}
    logs = {"lpmnet": [training_log(tmp_path / "lpmnet.csv", 100.0, 50.5)]}
    costs = cost_from_runs(sidecars, logs)
    assert costs == {
        "lpmnet": {"parameters": 26051, "fusion_seconds": pytest.approx(4.0), "training_seconds": pytest.approx(150.5)},
        "mean": {"parameters": 0, "fusion_seconds": pytest.approx(0.25), "training_seconds": None},
    }
    assert cost_from_runs({}, logs) == {
        "lpmnet": {"parameters": None, "fusion_seconds": None, "training_seconds": pytest.approx(150.5)}}
    with pytest.raises(InputError, match="missing.json"):
        cost_from_runs({"lpmnet": [fused / "missing.json"]}, {})
    (tmp_path / "old.json").write_text(json.dumps({"Seconds": 1.0}))  # a sidecar without the count
    with pytest.raises(InputError, match="no parameter count"):
        cost_from_runs({"lpmnet": [tmp_path / "old.json"]}, {})
    other = sidecar(fused / "sub-04_lpmnet.json", 2.0, 999)
    with pytest.raises(InputError, match="sub-04_lpmnet.json: lpmnet fused with 999 parameters here"):
        cost_from_runs({"lpmnet": [*sidecars["lpmnet"], other]}, {})
    (tmp_path / "bad.csv").write_text("iteration,total\n1,0.5\n")
    with pytest.raises(InputError, match="numeric 'seconds'"):
        cost_from_runs({}, {"lpmnet": [tmp_path / "bad.csv"]})


def test_write_comparison_outputs(tmp_path):
    values = {}
    for convention, shift in (("lpmnet", 0.0), ("standard", 0.1)):
        part = {("lpmnet", "SSIM"): 0.8 + shift + 0.01 * SPREAD, ("mean", "SSIM"): 0.6 + shift + 0.01 * SPREAD,
                ("max", "SSIM"): 0.7 + shift + 0.02 * SPREAD,
                ("lpmnet", "Nabf"): 0.02 + 0.001 * SPREAD, ("mean", "Nabf"): 0.01 + 0.001 * SPREAD,
                ("max", "Nabf"): 0.03 + 0.001 * SPREAD,
                ("lpmnet", "PSNR"): 30 + SPREAD, ("mean", "PSNR"): 25 + SPREAD, ("max", "PSNR"): 28 + SPREAD}
        values[convention] = long_table(part, convention=convention)
    df = pd.concat([values["standard"], values["lpmnet"]], ignore_index=True)
    costs = {"lpmnet": {"parameters": 26051, "fusion_seconds": 4.2, "training_seconds": 5400.0},
             "mean": {"parameters": 0, "fusion_seconds": 0.31, "training_seconds": None}}
    out = tmp_path / "cmp"
    t = write_comparison(df, out / "comparison.tsv", out / "comparison.html", out / "comparison.png", costs=costs,
                         title="demo T1+FLAIR")
    assert sorted(p.name for p in out.iterdir()) == ["comparison.html", "comparison.png", "comparison.tsv"]

    back = pd.read_csv(out / "comparison.tsv", sep="\t")
    assert list(back.columns) == list(COMPARISON_COLUMNS) and len(back) == 2 * 3 * 3
    assert list(back["convention"].unique()) == ["lpmnet", "standard"]
    assert back["best"].dtype == bool and back["best"].tolist() == t["best"].tolist()
    lp = back[back["method"] == "lpmnet"]
    assert lp["parameters"].eq(26051).all() and lp["training_seconds"].eq(5400).all()
    assert back.loc[back["method"] == "max", "parameters"].isna().all()
    assert back.loc[back["method"] == "lpmnet", "test_note"].eq("reference").all()
    assert back.loc[back["method"] == "mean", "test_note"].isna().all()  # "" reads back as missing
    np.testing.assert_allclose(back["p_value"].dropna(), t["p_value"].dropna(), rtol=1e-5)

    page = (out / "comparison.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.count("<h2>Convention ") == 2
    assert "<b>0.8 ± 0.0216<sup class='rank'>1</sup></b>" in page   # lpmnet SSIM, best
    assert "0.6 ± 0.0216<sup class='rank'>3</sup>" in page           # mean SSIM, third
    assert "<b>0.01 ± 0.00216<sup class='rank'>1</sup></b>" in page  # mean has the lowest Nabf
    assert "Nabf \u2193" in page and "SSIM \u2191" in page
    p = row(t, "mean", "SSIM")
    assert f"p={p['p_value']:.2g}, Holm {p['p_holm']:.2g}" in page
    assert "vs lpmnet" in page
    assert "Best overall (lowest mean rank): <b>lpmnet</b>" in page  # ranks 1, 2, 1 -> 1.33
    assert "<b>1.33</b>" in page
    assert "26,051" in page and "4.2 s" in page and "90 min" in page and "0.31 s" in page

    img = imread(out / "comparison.png")
    assert img.ndim == 3 and img.shape[1] == 1100 and img.shape[0] > 600
    assert img[..., :3].std() > 0.05


def test_figure_is_optional_and_tsv_without_costs(tmp_path):
    df = long_table({("lpmnet", "SSIM"): 0.8 + 0.01 * SPREAD, ("mean", "SSIM"): 0.6 + 0.01 * SPREAD})
    t = write_comparison(df, tmp_path / "c.tsv", tmp_path / "c.html")
    assert not (tmp_path / "c.png").exists()
    assert t["parameters"].isna().all() and t["fusion_seconds"].isna().all()
    assert "<td class='lbl'>mean</td><td>–</td><td>–</td><td>–</td>" in (tmp_path / "c.html").read_text()


def test_the_statistics_do_not_import_matplotlib():
    import subprocess
    import sys

    code = "import sys, lpmnet.evaluation.comparison; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
