import json
import math

import numpy as np
import pandas as pd
import pytest

from lpmnet.errors import InputError
from lpmnet.metrics import METRIC_NAMES, MetricSet, compute_all
from lpmnet.metrics.records import metrics_record, read_metrics_json, write_metrics_json
from lpmnet.evaluation.tables import aggregate, summary_columns, write_tables


def result(ssim, psnr, slices=5):
    return {
        "lpmnet": MetricSet("lpmnet", {"SSIM": ssim, "PSNR": psnr}, {"SSIM": None, "PSNR": None}),
        "standard": MetricSet("standard", {"SSIM": ssim / 2, "PSNR": psnr + 1},
                              {"SSIM": slices, "PSNR": slices}),
    }


@pytest.fixture
def jsons(tmp_path):
    paths = []
    for method, subject, ssim, psnr in [
        ("mean", "sub-01", 0.5, 20.0), ("mean", "sub-02", 0.7, 22.0),
        ("lpmnet", "sub-02", 0.9, float("nan")), ("lpmnet", "sub-01", 0.8, 30.0),
        ("lpmnet", "sub-03", 0.6, 26.0), ("laplacian", "sub-01", 0.75, 24.0),
    ]:
        p = tmp_path / "metrics" / f"{subject}_{method}.json"
        write_metrics_json(p, subject, method, result(ssim, psnr))
        paths.append(p)
    return paths


def test_record_from_compute_all():
    rng = np.random.default_rng(0)
    a, b = rng.random((2, 8, 8, 8))
    res = compute_all(a, b, (a + b) / 2, metrics=["SSIM", "SF"])
    rows = metrics_record("sub-01", "mean", res)
    assert [(r["convention"], r["metric"]) for r in rows] == [
        ("lpmnet", "SSIM"), ("lpmnet", "SF"), ("standard", "SSIM"), ("standard", "SF")]
    assert set(rows[0]) == {"subject", "method", "convention", "metric", "value", "slices_used", "note"}
    assert rows[0]["subject"] == "sub-01" and isinstance(rows[0]["value"], float)


def test_json_round_trip_with_nan_and_inf(tmp_path):
    res = result(float("nan"), float("inf"))
    path = write_metrics_json(tmp_path / "m.json", "sub-01", "lpmnet", res)
    text = path.read_text()
    doc = json.loads(text)  # strict JSON: no NaN / Infinity tokens
    assert "NaN" not in text and "Infinity" not in text
    assert doc["conventions"]["lpmnet"]["values"] == {"SSIM": None, "PSNR": "inf"}
    assert doc["conventions"]["standard"]["slices_used"] == {"SSIM": 5, "PSNR": 5}
    back = read_metrics_json(path)
    assert back["subject"] == "sub-01" and back["method"] == "lpmnet"
    assert math.isnan(back["conventions"]["lpmnet"]["values"]["SSIM"])
    assert back["conventions"]["lpmnet"]["values"]["PSNR"] == float("inf")
    assert back["conventions"]["lpmnet"]["slices_used"]["SSIM"] is None


def test_aggregate_means_stds_and_order(jsons):
    long_df, summary = aggregate(jsons)
    assert list(long_df.columns) == ["subject", "method", "convention", "metric", "value", "slices_used", "note"]
    assert len(long_df) == 6 * 2 * 2
    assert list(long_df["method"].drop_duplicates()) == ["lpmnet", "laplacian", "mean"]
    first = long_df[long_df["method"] == "lpmnet"].head(6)
    assert list(first["subject"]) == ["sub-01", "sub-01", "sub-02", "sub-02", "sub-03", "sub-03"]
    assert list(first["metric"]) == ["SSIM", "PSNR"] * 3
    assert list(summary.columns) == summary_columns()
    assert list(summary.columns[:5]) == ["method", "convention", "n_subjects", "SSIM_mean", "SSIM_std"]
    assert list(zip(summary["method"], summary["convention"])) == [
        ("lpmnet", "lpmnet"), ("lpmnet", "standard"), ("laplacian", "lpmnet"),
        ("laplacian", "standard"), ("mean", "lpmnet"), ("mean", "standard")]
    row = summary.iloc[0]
    assert row["n_subjects"] == 3
    assert row["SSIM_mean"] == pytest.approx(0.7667, abs=1e-4)
    assert row["SSIM_std"] == pytest.approx(np.std([0.8, 0.9, 0.6], ddof=1))
    # NaN is skipped: PSNR over sub-01 and sub-03 only
    assert row["PSNR_mean"] == pytest.approx(28.0) and row["PSNR_std"] == pytest.approx(np.std([30, 26], ddof=1))
    mean_std = summary.iloc[5]
    assert mean_std["SSIM_mean"] == pytest.approx(0.3) and mean_std["PSNR_mean"] == pytest.approx(22.0)
    single = summary.iloc[2]  # laplacian: one subject -> std NaN
    assert single["n_subjects"] == 1 and math.isnan(single["SSIM_std"])
    assert math.isnan(row["Qabf_mean"]) and math.isnan(row["Qabf_std"])  # not computed
    std_slices = long_df[(long_df["convention"] == "standard")]["slices_used"]
    assert str(long_df["slices_used"].dtype) == "Int64" and (std_slices == 5).all()


def test_write_tables(tmp_path, jsons):
    long_tsv, summary_tsv, html = tmp_path / "t" / "long.tsv", tmp_path / "t" / "summary.tsv", tmp_path / "t" / "s.html"
    write_tables(jsons, long_tsv, summary_tsv, summary_html=html)
    summary = pd.read_csv(summary_tsv, sep="\t")
    assert list(summary.columns) == ["method", "convention", "n_subjects"] + [
        f"{m}_{s}" for m in METRIC_NAMES for s in ("mean", "std")]
    assert summary["SSIM_mean"].iloc[0] == pytest.approx(0.766667, abs=1e-6)
    header = summary_tsv.read_text().splitlines()[1].split("\t")
    assert header[:4] == ["lpmnet", "lpmnet", "3", "0.766667"]  # %.6g
    long_df = pd.read_csv(long_tsv, sep="\t")
    assert long_df["value"].isna().sum() == 2  # the NaN PSNR in both conventions
    text = html.read_text()
    assert text.startswith("<!DOCTYPE html>") and "<style>" in text
    assert "lpmnet = 3D definitions of the LPM-Net code" in text
    assert "standard = 2D slice-wise community toolbox definitions" in text
    assert "(n=2)" in text and "Qabf" not in text
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["long.tsv", "s.html", "summary.tsv"]


def test_errors(tmp_path, jsons):
    with pytest.raises(ValueError, match="no metric"):
        aggregate([])
    dup = tmp_path / "dup.json"
    dup.write_text(jsons[0].read_text())
    with pytest.raises(InputError, match="dup.json.*also in"):
        aggregate([jsons[0], dup])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="bad.json"):
        read_metrics_json(bad)
    bad.write_text(json.dumps({"subject": "s", "method": "m", "conventions": {"lpmnet": {"values": {"SSIM": [1]}}}}))
    with pytest.raises(InputError, match="SSIM"):
        read_metrics_json(bad)
    with pytest.raises(InputError, match="not found"):
        aggregate([tmp_path / "missing.json"])


def test_undefined_values_say_why_and_failed_subjects_are_listed(tmp_path):
    """A NaN carries its reason into the long table and a footnote of the HTML; left-out subjects are listed."""
    from lpmnet.metrics import MetricSet

    why = "undefined: the 3D VIF needs at least 41 voxels along every axis, this volume has 28 along D"
    paths = []
    for i, subject in enumerate(("sub-01", "sub-02")):
        result = {"lpmnet": MetricSet("lpmnet", {"SSIM": 0.5 + i / 10, "VIF": float("nan")},
                                      {"SSIM": None, "VIF": None}, {"VIF": why})}
        paths.append(write_metrics_json(tmp_path / f"{subject}.json", subject, "lpmnet", result))
    failed = [{"subject": "03", "split": "test", "modality": "FLAIR", "problem": "x.nii.gz: NaN values"}]
    long_df, _ = write_tables(paths, tmp_path / "long.tsv", tmp_path / "summary.tsv", tmp_path / "s.html",
                              failed=failed, failed_tsv=tmp_path / "failed.tsv", warnings=["trained on"])
    assert list(long_df.loc[long_df.metric == "VIF", "note"]) == [why, why]
    page = (tmp_path / "s.html").read_text()
    assert "–<sup>1</sup>" in page and f"<li>{why}</li>" in page
    assert "Subjects not in this table (1)" in page and "x.nii.gz: NaN values" in page and "trained on" in page
    assert pd.read_csv(tmp_path / "failed.tsv", sep="\t").to_dict("records") == [
        {"subject": 3, "split": "test", "modality": "FLAIR", "problem": "x.nii.gz: NaN values"}]
    # Every subject failed: tables with their header only, and the list.
    write_tables([], tmp_path / "l2.tsv", tmp_path / "s2.tsv", tmp_path / "s2.html", failed=failed)
    assert pd.read_csv(tmp_path / "s2.tsv", sep="\t").empty and "x.nii.gz" in (tmp_path / "s2.html").read_text()
