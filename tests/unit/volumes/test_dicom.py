import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from lpmnet.volumes.dicom import dicom_series_to_nifti, read_dicom_series, write_dicom_series
from lpmnet.errors import InputError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


# ----------------------------------------------------------------------------- helpers
def find_dcm2niix():
    try:
        import dcm2niix

        candidate = Path(getattr(dcm2niix, "bin", ""))
        if candidate.is_file():
            return str(candidate)
    except ImportError:
        pass
    here = Path(sys.executable).parent / "dcm2niix"
    if here.is_file():
        return str(here)
    return shutil.which("dcm2niix")


def run_dcm2niix(folder, out_dir):
    exe = find_dcm2niix()
    if exe is None:
        pytest.skip("dcm2niix is not installed")
    out_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run([exe, "-z", "y", "-b", "n", "-f", "out", "-o", str(out_dir), str(folder)],
                   check=True, capture_output=True)
    outputs = sorted(out_dir.glob("out*.nii.gz"))
    assert len(outputs) == 1, outputs
    return outputs[0]


def assert_same_world_geometry(mine_path, other_path, atol_mm=1e-3, n_sample=None, intensity_atol=0.0):
    """Every (or a sample of) voxel centre of ``mine`` lands on a voxel centre of ``other``
    with the same intensity, the two world positions agreeing to ``atol_mm``."""
    a, b = nib.load(mine_path), nib.load(other_path)
    da, db = np.asarray(a.dataobj, dtype=np.float64), np.asarray(b.dataobj, dtype=np.float64)
    assert sorted(da.shape) == sorted(db.shape)
    idx = np.indices(da.shape).reshape(3, -1).T
    if n_sample is not None:
        idx = idx[np.random.default_rng(0).choice(len(idx), n_sample, replace=False)]
    world = nib.affines.apply_affine(a.affine, idx)
    other_idx = nib.affines.apply_affine(np.linalg.inv(b.affine), world)
    rounded = np.rint(other_idx).astype(int)
    assert (rounded >= 0).all() and (rounded < np.asarray(db.shape)).all()
    other_world = nib.affines.apply_affine(b.affine, rounded)
    assert np.abs(other_world - world).max() < atol_mm
    va = da[tuple(idx.T)]
    vb = db[tuple(rounded.T)]
    if intensity_atol == 0:
        np.testing.assert_array_equal(va, vb)
    else:
        np.testing.assert_allclose(va, vb, rtol=0, atol=intensity_atol)


def write_series(folder, pixels, ipps, iop, spacing, *, series_uid=None, slope=1.0, intercept=0.0,
                 names=None, instance_numbers=None):
    """Write slices (pixels[k] is rows x columns, uint16) with pydicom, independently of lpmnet."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid, frame_uid = generate_uid(), generate_uid()
    for k, (pix, ipp) in enumerate(zip(pixels, ipps)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "MR"
        ds.PatientID = "test"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.InstanceNumber = (instance_numbers or list(range(1, len(pixels) + 1)))[k]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in ipp]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in iop]
        ds.PixelSpacing = [f"{v:.6f}" for v in spacing]
        ds.SliceThickness = "3"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = pix.shape
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleSlope = f"{slope}"
        ds.RescaleIntercept = f"{intercept}"
        ds.PixelData = np.ascontiguousarray(pix, dtype="<u2").tobytes()
        name = names[k] if names else f"slice{k:03d}.dcm"
        ds.save_as(folder / name, enforce_file_format=True)
    return series_uid


def rotation(axis, deg):
    t = np.deg2rad(deg)
    c, s = np.cos(t), np.sin(t)
    i, j = [(1, 2), (0, 2), (0, 1)][axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def oblique_series(folder, n_slices=6, rows=5, cols=7, step=3.0, skip=(), **kw):
    rot = rotation(0, 20) @ rotation(2, -15)
    row_cos, col_cos = rot[:, 0], rot[:, 1]
    normal = np.cross(row_cos, col_cos)
    origin = np.array([-40.0, 25.5, 10.0])
    spacing = (0.8, 1.1)  # (between rows, between columns)
    rng = np.random.default_rng(3)
    pixels, ipps = [], []
    for k in range(n_slices):
        if k in skip:
            continue
        pixels.append(rng.integers(0, 4000, size=(rows, cols)))
        ipps.append(origin + k * step * normal)
    # shuffled file order: the reader must sort by position, not by name
    order = list(rng.permutation(len(pixels)))
    uid = write_series(folder, [pixels[o] for o in order], [ipps[o] for o in order],
                       np.concatenate([row_cos, col_cos]), spacing,
                       names=[f"f{n:02d}.dcm" for n in range(len(order))], **kw)
    return dict(pixels=pixels, ipps=ipps, row_cos=row_cos, col_cos=col_cos, normal=normal,
                spacing=spacing, step=step, origin=origin, uid=uid)


# ----------------------------------------------------------------------------- real data
def test_real_series_matches_dcm2niix(shared_data, tmp_path):
    folder = shared_data / "dcmqa_decubitus_HFS_t1_fl2d_sag" / "dicom"
    mine = dicom_series_to_nifti(folder, tmp_path / "mine.nii.gz")
    img = nib.load(mine)
    assert sorted(img.shape) == [35, 256, 256]
    zooms = np.sqrt((img.affine[:3, :3] ** 2).sum(axis=0))
    np.testing.assert_allclose(sorted(zooms), [1.016, 1.016, 4.8], atol=1e-3)
    assert img.get_data_dtype() == np.float32
    theirs = run_dcm2niix(folder, tmp_path / "dcm2niix")
    assert_same_world_geometry(mine, theirs, atol_mm=1e-3)  # all 2.3 M voxels


# ----------------------------------------------------------------------------- synthetic
def test_oblique_series_round_trips_to_known_affine(tmp_path):
    folder = tmp_path / "oblique"
    g = oblique_series(folder, slope=0.5, intercept=-100.0)
    data, affine, info = read_dicom_series(folder)
    assert data.shape == (7, 5, 6) and data.dtype == np.float32
    lps = np.eye(4)
    lps[:3, 0] = g["row_cos"] * g["spacing"][1]
    lps[:3, 1] = g["col_cos"] * g["spacing"][0]
    lps[:3, 2] = g["normal"] * g["step"]
    lps[:3, 3] = g["origin"]
    np.testing.assert_allclose(affine, LPS_TO_RAS @ lps, atol=1e-4)
    for k, pix in enumerate(g["pixels"]):
        np.testing.assert_allclose(data[:, :, k], pix.T * 0.5 - 100.0)
    # world position of pixel (row 2, column 4) of slice 3, from the DICOM definition
    p_lps = g["ipps"][3] + 4 * g["spacing"][1] * g["row_cos"] + 2 * g["spacing"][0] * g["col_cos"]
    p_ras = p_lps * np.array([-1, -1, 1])
    np.testing.assert_allclose(nib.affines.apply_affine(affine, [4, 2, 3]), p_ras, atol=1e-4)
    assert info["series_instance_uid"] == g["uid"] and info["n_slices"] == 6

    out = dicom_series_to_nifti(folder, tmp_path / "oblique.nii.gz")
    img = nib.load(out)
    np.testing.assert_allclose(img.affine, affine, atol=1e-4)
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    assert_same_world_geometry(out, run_dcm2niix(folder, tmp_path / "d2n"), atol_mm=1e-3)


def test_non_dicom_files_are_ignored(tmp_path):
    folder = tmp_path / "series"
    oblique_series(folder / "sub")
    (folder / "README.txt").write_text("not dicom\n")
    (folder / "sub" / "notes.dcm").write_bytes(b"\x00\x01garbage" * 50)
    (folder / ".DS_Store").write_bytes(bytes(range(256)))
    data, _, info = read_dicom_series(folder)
    assert data.shape == (7, 5, 6) and info["skipped_files"] == 3


def test_missing_slice_is_refused(tmp_path):
    folder = tmp_path / "gap"
    g = oblique_series(folder, skip=(3,))
    with pytest.raises(InputError, match="missing slice") as err:
        dicom_series_to_nifti(folder, tmp_path / "gap.nii.gz")
    msg = str(err.value)
    assert str(folder) in msg
    # the absent position is named (3 steps along the normal from the first slice)
    expected = float(g["origin"] @ g["normal"] + 3 * g["step"])
    assert f"{expected:.3f} mm" in msg
    assert not (tmp_path / "gap.nii.gz").exists()


def test_non_uniform_spacing_is_refused(tmp_path):
    folder = tmp_path / "uneven"
    rng = np.random.default_rng(0)
    offsets = [0.0, 3.0, 6.0, 9.6, 12.6]
    write_series(folder, [rng.integers(0, 100, (4, 4)) for _ in offsets],
                 [np.array([0.0, 0.0, z]) for z in offsets], [1, 0, 0, 0, 1, 0], (1.0, 1.0))
    with pytest.raises(InputError, match="non-uniform slice spacing") as err:
        read_dicom_series(folder)
    assert str(folder) in str(err.value)
    # a generous tolerance accepts it
    data, _, _ = read_dicom_series(folder, spacing_rtol=0.25)
    assert data.shape == (4, 4, 5)


def test_two_series_in_one_folder(tmp_path):
    folder = tmp_path / "two"
    rng = np.random.default_rng(0)
    ipps = [np.array([0.0, 0.0, 2.0 * k]) for k in range(4)]
    uid_a = write_series(folder, [rng.integers(0, 100, (4, 4)) for _ in ipps], ipps,
                         [1, 0, 0, 0, 1, 0], (1.0, 1.0), names=[f"a{k}.dcm" for k in range(4)])
    uid_b = write_series(folder, [rng.integers(0, 100, (4, 4)) for _ in ipps[:3]], ipps[:3],
                         [1, 0, 0, 0, 1, 0], (1.0, 1.0), names=[f"b{k}.dcm" for k in range(3)])
    with pytest.raises(InputError, match="2 DICOM series") as err:
        dicom_series_to_nifti(folder, tmp_path / "two.nii.gz")
    msg = str(err.value)
    assert str(folder) in msg and uid_a in msg and uid_b in msg
    data, _, info = read_dicom_series(folder, series_uid=uid_b)
    assert data.shape == (4, 4, 3) and info["series_instance_uid"] == uid_b
    with pytest.raises(InputError, match="no series"):
        read_dicom_series(folder, series_uid="1.2.3")


def test_duplicate_positions_multiframe_and_empty(tmp_path):
    folder = tmp_path / "dup"
    rng = np.random.default_rng(0)
    ipps = [np.array([0.0, 0.0, 0.0])] * 2 + [np.array([0.0, 0.0, 2.0])]
    write_series(folder, [rng.integers(0, 100, (4, 4)) for _ in ipps], ipps, [1, 0, 0, 0, 1, 0], (1.0, 1.0))
    with pytest.raises(InputError, match="share a position"):
        read_dicom_series(folder)

    enhanced = tmp_path / "enhanced"
    write_series(enhanced, [rng.integers(0, 100, (4, 4))], [np.zeros(3)], [1, 0, 0, 0, 1, 0], (1.0, 1.0))
    f = next(enhanced.glob("*.dcm"))
    ds = pydicom.dcmread(f)
    ds.SOPClassUID = pydicom.uid.EnhancedMRImageStorage
    ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.EnhancedMRImageStorage
    ds.NumberOfFrames = 2
    ds.save_as(f, enforce_file_format=True)
    with pytest.raises(InputError, match="not supported") as err:
        read_dicom_series(enhanced)
    assert str(enhanced) in str(err.value)

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "x.txt").write_text("hello")
    with pytest.raises(InputError, match="no DICOM"):
        read_dicom_series(empty)
    with pytest.raises(InputError, match="not found"):
        read_dicom_series(tmp_path / "nowhere")


def test_writer_round_trip_oblique(tmp_path):
    rng = np.random.default_rng(5)
    data = rng.normal(100.0, 30.0, size=(6, 5, 4))
    aff = np.eye(4)
    aff[:3, :3] = rotation(1, 12) @ rotation(0, -8) @ np.diag([1.5, 1.25, 2.5])
    aff[:3, 3] = [10.0, -20.0, 30.0]
    files = write_dicom_series(data, aff, tmp_path / "w", uid_seed=["t", 1])
    assert [f.name for f in files] == ["IM_0001.dcm", "IM_0002.dcm", "IM_0003.dcm", "IM_0004.dcm"]
    back, back_aff, info = read_dicom_series(tmp_path / "w")
    slope = max(info["rescale_slope"])
    assert slope < 1e-2
    # the writer's k axis runs along the normal here, so arrays and affines match directly
    np.testing.assert_allclose(back_aff, aff, atol=1e-4)
    np.testing.assert_allclose(back, data, atol=slope)
    # deterministic UIDs
    again = write_dicom_series(data, aff, tmp_path / "w2", uid_seed=["t", 1])
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(files, again))
