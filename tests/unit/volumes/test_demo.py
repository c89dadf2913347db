import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lpmnet.volumes.demo import MODALITIES, make_demo_dataset, synthesize_subject
from lpmnet.volumes.dicom import dicom_series_to_nifti, read_dicom_series
from lpmnet.volumes.io import load_volume, save_volume

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _read_tsv(path):
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        return reader.fieldnames, list(reader)


def _sidecar(root: Path, rel: str) -> dict:
    p = root / rel
    name = p.name[: -len(".nii.gz")] if p.name.endswith(".nii.gz") else p.name
    return json.loads(p.with_name(name + ".json").read_text())


def _dcm2niix():
    try:
        import dcm2niix

        if Path(getattr(dcm2niix, "bin", "")).is_file():
            return str(dcm2niix.bin)
    except ImportError:
        pass
    exe = Path(sys.executable).parent / "dcm2niix"
    return str(exe) if exe.is_file() else shutil.which("dcm2niix")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    t0 = time.perf_counter()
    rows = make_demo_dataset(root)  # the defaults: 6 subjects, T1 as DICOM
    elapsed = time.perf_counter() - t0
    print(f"demo generation: {elapsed:.1f} s")
    return root, rows


def test_subjects_tsv_lists_every_file(demo):
    root, rows = demo
    fields, tsv_rows = _read_tsv(root / "subjects.tsv")
    assert fields == ["dataset", "subject", "modality", "path"]
    assert tsv_rows == rows
    assert len(rows) == 6 * 4
    assert {r["subject"] for r in rows} == {f"sub-synth{n:02d}" for n in range(1, 7)}
    assert {r["dataset"] for r in rows} == {"demo"}
    for r in rows:
        p = root / r["path"]
        assert not Path(r["path"]).is_absolute() and p.exists()
        if r["modality"] == "T1":
            assert p.is_dir() and len(list(p.glob("*.dcm"))) == 95
        else:
            assert r["path"].endswith(".nii.gz") and p.is_file()
    # nothing image-like is left out of the table
    listed = {r["path"] for r in rows}
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*.nii.gz")}
    on_disk |= {p.parent.relative_to(root).as_posix() for p in root.rglob("*.dcm")}
    assert on_disk == listed
    assert not [p for p in root.rglob("*") if ".tmp-" in p.name]


def test_sidecars_say_synthetic(demo):
    root, rows = demo
    desc = json.loads((root / "dataset_description.json").read_text())
    assert desc["synthetic"] is True and desc["seed"] == 0
    for r in rows:
        meta = _sidecar(root, r["path"])
        assert meta["synthetic"] is True
        assert meta["subject"] == r["subject"] and meta["modality"] == r["modality"]
        assert meta["seed"] == 0 and meta["generator"]["name"] == "lpmnet.volumes.demo.make_demo_dataset"
        assert "ICBM152" in meta["source_template"]["name"] and "Copyright" in meta["source_template"]["licence"]
        if r["modality"] == "T1":
            assert meta["rigid"] is None and meta["format"].startswith("DICOM")
        else:
            rigid = meta["rigid"]
            assert 0 < max(abs(v) for v in rigid["rotation_deg_xyz"]) <= 5
            assert 0 < max(abs(v) for v in rigid["translation_mm_xyz"]) <= 5
            assert np.asarray(rigid["matrix_ras"]).shape == (4, 4)


def test_generation_is_deterministic(demo, tmp_path):
    root, _ = demo
    rows = make_demo_dataset(tmp_path / "again", n_subjects=2)
    assert len(rows) == 8
    first = _files(root)
    second = _files(tmp_path / "again")
    for rel, data in second.items():
        if rel.startswith("sub-"):
            assert first[rel] == data, rel  # byte-identical files
    for r in rows:
        if r["path"].endswith(".nii.gz"):
            a = load_volume(root / r["path"]).data
            b = load_volume(tmp_path / "again" / r["path"]).data
            assert np.array_equal(a, b)


def test_rerun_is_idempotent_and_seed_matters(tmp_path):
    out = tmp_path / "one"
    make_demo_dataset(out, n_subjects=1, modalities=("T1", "PET"))
    before = _files(out)
    (out / "sub-synth01" / "dicom" / "sub-synth01_T1w" / "IM_9999.dcm").write_bytes(b"stale")
    make_demo_dataset(out, n_subjects=1, modalities=("T1", "PET"))
    assert _files(out) == before  # stale slice gone, same bytes
    other = make_demo_dataset(tmp_path / "seed1", n_subjects=1, seed=1, modalities=("T1", "PET"))
    a = load_volume(out / other[1]["path"]).data
    b = load_volume(tmp_path / "seed1" / other[1]["path"]).data
    assert not np.array_equal(a, b)


def test_contrasts_are_plausible():
    s = synthesize_subject(3, seed=0, modalities=("T1", "T2", "FLAIR", "PD", "PET"))
    from lpmnet.volumes.demo import load_template

    tpl = load_template(2.0)
    # T1 is not moved, so template tissue masks apply (up to the small deformation)
    gm, wm, csf = (tpl.gm > 0.9), (tpl.wm > 0.9), (tpl.csf > 0.9)
    med = {m: {t: float(np.median(img[mask])) for t, mask in (("gm", gm), ("wm", wm), ("csf", csf))}
           for m, img in s["images"].items() if m == "T1"}
    assert med["T1"]["wm"] > med["T1"]["gm"] > med["T1"]["csf"]
    assert s["meta"]["PET"]["psf_fwhm_mm"] == 6.0
    assert s["images"]["PET"].min() < 0  # PET noise: negative background values exist
    for m, img in s["images"].items():
        assert img.dtype == np.float32 and img.shape == tpl.shape and np.isfinite(img).all()
    w = {m: s["meta"][m]["tissue_weights_gm_wm_csf"] for m in ("T2", "FLAIR", "PD", "PET")}
    assert w["T2"][2] > w["T2"][0] > w["T2"][1]  # CSF bright, WM dark
    assert w["FLAIR"][0] > w["FLAIR"][1] > w["FLAIR"][2]  # CSF dark, WM < GM
    assert w["PET"][0] > 3 * w["PET"][1]  # grey-matter uptake
    assert set(MODALITIES) == {"T1", "T2", "FLAIR", "PD", "PET"}


def test_dicom_modality_converts_back_to_the_nifti_geometry(demo, tmp_path):
    root, rows = demo
    row = next(r for r in rows if r["subject"] == "sub-synth01" and r["modality"] == "T1")
    converted = dicom_series_to_nifti(root / row["path"], tmp_path / "t1_from_dicom.nii.gz")
    _, _, info = read_dicom_series(root / row["path"])
    slope = max(info["rescale_slope"])
    # the NIfTI the subject's T1 would have had
    synth = synthesize_subject(1, seed=0, modalities=("T1",))
    reference = save_volume(tmp_path / "t1_reference.nii.gz", synth["images"]["T1"], synth["affine"])

    a, b = nib.load(converted), nib.load(reference)
    da, db = a.get_fdata(), b.get_fdata()
    idx = np.indices(da.shape).reshape(3, -1).T
    world = nib.affines.apply_affine(a.affine, idx)
    other = nib.affines.apply_affine(np.linalg.inv(b.affine), world)
    rounded = np.rint(other).astype(int)
    assert np.abs(other - rounded).max() < 1e-3
    np.testing.assert_allclose(nib.affines.apply_affine(b.affine, rounded), world, atol=1e-3)
    np.testing.assert_allclose(da[tuple(idx.T)], db[tuple(rounded.T)], atol=0.51 * slope + 1e-4)
    # conventional axial DICOM: rows towards L, columns towards P, normal towards S
    ds_orient = np.asarray(info["slice_normal_lps"])
    np.testing.assert_allclose(ds_orient, [0, 0, 1], atol=1e-6)

    exe = _dcm2niix()
    if exe is None:
        pytest.skip("dcm2niix is not installed")
    subprocess.run([exe, "-z", "y", "-b", "n", "-f", "out", "-o", str(tmp_path), str(root / row["path"])],
                   check=True, capture_output=True)
    c = nib.load(tmp_path / "out.nii.gz")
    dc = np.asarray(c.dataobj, dtype=np.float64)
    other = nib.affines.apply_affine(np.linalg.inv(c.affine), world)
    rounded = np.rint(other).astype(int)
    np.testing.assert_allclose(nib.affines.apply_affine(c.affine, rounded), world, atol=1e-3)
    np.testing.assert_allclose(da[tuple(idx.T)], dc[tuple(rounded.T)], atol=0.51 * slope + 1e-3)


def test_partner_is_misaligned_and_rigid_recovers_it(demo, tmp_path):
    from lpmnet.volumes.registration import register

    root, rows = demo
    t1_row = next(r for r in rows if r["subject"] == "sub-synth02" and r["modality"] == "T1")
    flair_row = next(r for r in rows if r["subject"] == "sub-synth02" and r["modality"] == "FLAIR")
    fixed = dicom_series_to_nifti(root / t1_row["path"], tmp_path / "t1.nii.gz")
    result = register(fixed, root / flair_row["path"], tmp_path / "flair_in_t1.nii.gz",
                      tmp_path / "sub-synth02_from-FLAIR_to-T1w", transform="Rigid", seed=42, threads=1,
                      aff_iterations=(1000, 500, 250, 0))
    assert result["improved"] and result["mattes_mi_after"] < result["mattes_mi_before"]
    assert result["ncc_improved"]

    import ants  # after register(), which sets ITK's thread count before the first import

    # the recovered fixed->moving mapping matches the recorded motion (LPS for ITK)
    motion = np.asarray(_sidecar(root, flair_row["path"])["rigid"]["matrix_ras"])
    tx = ants.read_transform(result["transforms"]["affine"])
    rng = np.random.default_rng(0)
    errors = []
    for p_ras in rng.uniform([-50, -70, -20], [50, 40, 50], size=(20, 3)):
        q_lps = np.asarray(tx.apply_to_point(tuple(LPS[:3, :3] @ p_ras)))
        expected = (motion @ np.append(p_ras, 1))[:3]
        errors.append(np.linalg.norm(LPS[:3, :3] @ q_lps - expected))
    print(f"rigid recovery error: max {max(errors):.2f} mm, mean {np.mean(errors):.2f} mm")
    assert max(errors) < 1.0, errors  # mm, at 2 mm voxels with noise, bias and deformation


def test_without_rigid_motion_the_modalities_are_generated_co_registered():
    moved = synthesize_subject(2, seed=1, modalities=("T1", "FLAIR"))
    aligned = synthesize_subject(2, seed=1, modalities=("T1", "FLAIR"), rigid_motion=False)
    assert moved["meta"]["FLAIR"]["rigid"] is not None and aligned["meta"]["FLAIR"]["rigid"] is None
    np.testing.assert_array_equal(moved["images"]["T1"], aligned["images"]["T1"])  # the reference never moves
    # the same anatomy in the same place: the aligned pair shares far more information (0.68 vs 0.47 nats)
    def mutual_information(a, b):
        joint, _, _ = np.histogram2d(a.ravel(), b.ravel(), bins=32)
        p = joint / joint.sum()
        independent = p.sum(1, keepdims=True) @ p.sum(0, keepdims=True)
        return float((p[p > 0] * np.log(p[p > 0] / independent[p > 0])).sum())

    shared = {k: mutual_information(v["images"]["T1"], v["images"]["FLAIR"]) for k, v in
              (("moved", moved), ("aligned", aligned))}
    assert shared["aligned"] > shared["moved"] + 0.1, shared
