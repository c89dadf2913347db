"""DICOM series -> NIfTI with pydicom (classic single-frame images only).

Geometry
--------
DICOM gives, per slice, ImagePositionPatient (IPP: centre of the first transmitted
pixel, patient LPS mm), ImageOrientationPatient (IOP: direction cosines of a row, i.e.
of increasing column index, then of a column, i.e. of increasing row index) and
PixelSpacing ``[spacing between rows, spacing between columns]``.  A pixel at row
``r``, column ``c`` of the slice lies at ``IPP + c*PixelSpacing[1]*row_cos +
r*PixelSpacing[0]*col_cos``.

The NIfTI written here stores voxel ``[i, j, k]`` = column ``i``, row ``j`` of slice
``k``, slices sorted by increasing position along the slice normal ``row_cos x
col_cos``; its affine is that LPS mapping with the x and y rows negated (LPS -> RAS).
The voxel axis order may differ from dcm2niix (which flips rows) but every voxel maps
to the same world point, which is what matters.

Refused with :class:`~lpmnet.errors.InputError` naming the folder: no DICOM image,
several series (unless ``series_uid=`` picks one), enhanced/multi-frame objects, mixed
orientations or matrix sizes, duplicated slice positions (multi-echo/time series),
missing slices (a gap of a whole number of slice steps; the missing positions are
listed), otherwise non-uniform slice spacing, and slices not stacked along the normal
(gantry tilt).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from lpmnet.errors import InputError
from lpmnet.volumes.io import atomic_output, atomic_write_json, save_volume

__all__ = [
    "DicomSeries",
    "find_dicom_series",
    "read_dicom_series",
    "dicom_series_to_nifti",
    "write_dicom_series",
    "LPS_TO_RAS",
]

#: Diagonal matrix converting DICOM patient LPS coordinates to NIfTI RAS (its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

_ENHANCED_SOP_CLASSES = {
    str(getattr(pydicom.uid, name))
    for name in dir(pydicom.uid)
    if name.endswith("Storage")
    and ("Enhanced" in name or "MultiFrame" in name or "LegacyConverted" in name)
}


@dataclass
class DicomSeries:
    """One series found in a folder: its UID and the (header-only) datasets per file."""

    uid: str
    files: list[Path] = field(default_factory=list)
    headers: list[Any] = field(default_factory=list)

    @property
    def description(self) -> str:
        return str(self.headers[0].get("SeriesDescription", "")) if self.headers else ""


def _read_header(path: Path):
    """Header-only dataset of a DICOM file, or None if the file is not DICOM."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        pass  # maybe a DICOM without the 128-byte preamble: try forcing, accept if plausible
    except Exception:
        return None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        if "SOPClassUID" in ds and "SeriesInstanceUID" in ds:
            return ds
    except Exception:
        pass
    return None


def find_dicom_series(folder) -> tuple[dict[str, DicomSeries], list[Path]]:
    """Scan ``folder`` recursively; return ({SeriesInstanceUID: DicomSeries}, skipped files).

    Files that are not DICOM, and DICOM objects that are not images (no Rows/Columns,
    e.g. DICOMDIR, structured reports), are skipped.
    """
    root = Path(folder)
    if not root.exists():
        raise InputError(root, "folder not found")
    if not root.is_dir():
        raise InputError(root, "is not a folder (expected a folder of DICOM files)")
    series: dict[str, DicomSeries] = {}
    skipped: list[Path] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        ds = _read_header(path)
        if ds is None or "SeriesInstanceUID" not in ds or "Rows" not in ds or "Columns" not in ds:
            skipped.append(path)
            continue
        uid = str(ds.SeriesInstanceUID)
        entry = series.setdefault(uid, DicomSeries(uid=uid))
        entry.files.append(path)
        entry.headers.append(ds)
    return series, skipped


def _select_series(root: Path, series: dict[str, DicomSeries], series_uid: str | None) -> DicomSeries:
    if not series:
        raise InputError(root, "contains no DICOM image file")
    if series_uid is not None:
        if series_uid not in series:
            raise InputError(
                root, f"has no series with SeriesInstanceUID {series_uid}; found: {', '.join(sorted(series))}"
            )
        return series[series_uid]
    if len(series) > 1:
        listing = "; ".join(
            f"{uid} ({len(s.files)} files{', ' + repr(s.description) if s.description else ''})"
            for uid, s in sorted(series.items())
        )
        raise InputError(
            root,
            f"contains {len(series)} DICOM series (SeriesInstanceUID {listing}); "
            "pass series_uid= to choose one",
        )
    return next(iter(series.values()))


def _floats(ds, tag: str, n: int, root: Path, path: Path) -> np.ndarray:
    value = ds.get(tag)
    if value is None:
        raise InputError(root, f"{path.name}: missing {tag}; cannot place the slice in space")
    arr = np.asarray([float(v) for v in value], dtype=np.float64)
    if arr.shape != (n,) or not np.isfinite(arr).all():
        raise InputError(root, f"{path.name}: invalid {tag} {list(value)}")
    return arr


def _check_classic(root: Path, s: DicomSeries) -> None:
    for path, ds in zip(s.files, s.headers):
        sop = str(ds.get("SOPClassUID", ""))
        frames = ds.get("NumberOfFrames")
        try:
            n_frames = int(frames) if frames not in (None, "") else 1
        except (TypeError, ValueError):
            n_frames = 1
        if sop in _ENHANCED_SOP_CLASSES or n_frames > 1 or "PerFrameFunctionalGroupsSequence" in ds:
            name = getattr(pydicom.uid.UID(sop), "name", sop) if sop else "unknown SOP class"
            raise InputError(
                root,
                f"{path.name}: multi-frame/enhanced DICOM ({name}, {n_frames} frame(s)) is not "
                "supported; export the series as classic single-frame images",
            )
        if int(ds.get("SamplesPerPixel", 1)) != 1:
            raise InputError(root, f"{path.name}: colour DICOM (SamplesPerPixel > 1) is not supported")


def read_dicom_series(
    folder,
    *,
    series_uid: str | None = None,
    spacing_rtol: float = 0.01,
    spacing_atol: float = 0.01,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read one classic DICOM series from ``folder`` into ``(data, affine, info)``.

    ``data`` is float32 (RescaleSlope/Intercept applied per slice), ``affine`` the 4x4
    NIfTI (RAS) voxel-to-world matrix, ``info`` a JSON-able summary.  Two slices are
    one step apart when their distance along the normal differs from the median step
    by at most ``max(spacing_atol mm, spacing_rtol * step)``.
    """
    root = Path(folder)
    series, skipped = find_dicom_series(root)
    s = _select_series(root, series, series_uid)
    _check_classic(root, s)

    ref = s.headers[0]
    rows, cols = int(ref.Rows), int(ref.Columns)
    iop = _floats(ref, "ImageOrientationPatient", 6, root, s.files[0])
    spacing = _floats(ref, "PixelSpacing", 2, root, s.files[0])
    row_cos, col_cos = iop[:3], iop[3:]
    if abs(np.linalg.norm(row_cos) - 1) > 1e-3 or abs(np.linalg.norm(col_cos) - 1) > 1e-3 or abs(
        row_cos @ col_cos
    ) > 1e-3:
        raise InputError(root, f"{s.files[0].name}: ImageOrientationPatient {list(iop)} is not orthonormal")
    row_cos = row_cos / np.linalg.norm(row_cos)
    col_cos = col_cos / np.linalg.norm(col_cos)
    normal = np.cross(row_cos, col_cos)
    normal /= np.linalg.norm(normal)

    positions = []
    for path, ds in zip(s.files, s.headers):
        if int(ds.Rows) != rows or int(ds.Columns) != cols:
            raise InputError(root, f"{path.name}: matrix {ds.Rows}x{ds.Columns} differs from {rows}x{cols}")
        if not np.allclose(_floats(ds, "ImageOrientationPatient", 6, root, path), iop, atol=1e-4):
            raise InputError(root, f"{path.name}: ImageOrientationPatient differs within the series "
                                   "(localizer or mixed orientations are not supported)")
        if not np.allclose(_floats(ds, "PixelSpacing", 2, root, path), spacing, rtol=1e-4, atol=1e-6):
            raise InputError(root, f"{path.name}: PixelSpacing differs within the series")
        positions.append(_floats(ds, "ImagePositionPatient", 3, root, path))
    positions_arr = np.asarray(positions)
    dist = positions_arr @ normal
    instance = [int(ds.get("InstanceNumber", 0) or 0) for ds in s.headers]
    order = sorted(range(len(dist)), key=lambda n: (dist[n], instance[n], str(s.files[n])))
    dist = dist[order]
    positions_arr = positions_arr[order]
    files = [s.files[n] for n in order]

    n = len(files)
    if n > 1:
        diffs = np.diff(dist)
        dup = np.flatnonzero(diffs < max(spacing_atol, 1e-3))
        if dup.size:
            where = ", ".join(f"{dist[d]:.3f} mm ({files[d].name}, {files[d + 1].name})" for d in dup[:5])
            raise InputError(
                root,
                f"{dup.size} pair(s) of slices share a position along the slice normal: {where}"
                f"{' ...' if dup.size > 5 else ''}; multi-echo, multi-phase or duplicated files "
                "are not supported",
            )
        step = float(np.median(diffs))
        tol = max(spacing_atol, spacing_rtol * step)
        k_steps = np.rint(diffs / step).astype(int)
        off_grid = np.abs(diffs - k_steps * step) > np.maximum(tol, spacing_rtol * k_steps * step)
        if off_grid.any() or (k_steps < 1).any():
            bad = np.flatnonzero(off_grid | (k_steps < 1))
            listing = ", ".join(
                f"{diffs[b]:.4f} mm between {dist[b]:.3f} and {dist[b + 1]:.3f} mm" for b in bad[:5]
            )
            raise InputError(
                root,
                f"non-uniform slice spacing (median step {step:.4f} mm, tolerance {tol:.4f} mm): {listing}"
                f"{' ...' if bad.size > 5 else ''}",
            )
        gaps = np.flatnonzero(k_steps > 1)
        if gaps.size:
            missing = []
            for g in gaps:
                for m in range(1, int(k_steps[g])):
                    d = dist[g] + m * step
                    lps = positions_arr[g] + m * step * normal
                    missing.append(
                        f"{d:.3f} mm along the normal (LPS {lps[0]:.2f}, {lps[1]:.2f}, {lps[2]:.2f}) "
                        f"between {files[g].name} and {files[g + 1].name}"
                    )
            raise InputError(
                root,
                f"missing slice(s): {len(missing)} expected slice(s) absent (step {step:.4f} mm) at "
                + "; ".join(missing[:10])
                + (" ..." if len(missing) > 10 else ""),
            )
        # least-squares step of an evenly filled stack (no rounding drift over many slices)
        step = float((dist[-1] - dist[0]) / (n - 1))
        # the in-plane position must not drift (gantry tilt / sheared stacks)
        rel = positions_arr - positions_arr[0]
        inplane = rel - np.outer(rel @ normal, normal)
        drift = float(np.linalg.norm(inplane, axis=1).max())
        if drift > max(tol, spacing_atol):
            raise InputError(
                root,
                f"slices are not stacked along the slice normal (in-plane drift {drift:.3f} mm; "
                "gantry tilt?) - not supported",
            )
    else:
        ds = s.headers[order[0]]
        step = float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0)

    # pixel data, in the sorted order
    slices = []
    slopes, intercepts = [], []
    for path in files:
        try:
            ds = pydicom.dcmread(path, force=True)
            pix = ds.pixel_array
        except Exception as exc:
            raise InputError(root, f"{path.name}: pixel data could not be decoded ({type(exc).__name__}: {exc})") from exc
        if pix.shape != (rows, cols):
            raise InputError(root, f"{path.name}: pixel array shape {pix.shape} is not {rows}x{cols}")
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        inter = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        slopes.append(slope)
        intercepts.append(inter)
        slices.append((pix.astype(np.float64) * slope + inter).astype(np.float32).T)  # [col, row]
    data = np.ascontiguousarray(np.stack(slices, axis=-1), dtype=np.float32)

    lps = np.eye(4)
    lps[:3, 0] = row_cos * spacing[1]  # i: column index, along a row
    lps[:3, 1] = col_cos * spacing[0]  # j: row index, along a column
    lps[:3, 2] = normal * step
    lps[:3, 3] = positions_arr[0]
    affine = LPS_TO_RAS @ lps

    info = {
        "folder": str(root),
        "series_instance_uid": s.uid,
        "series_description": s.description,
        "modality": str(ref.get("Modality", "")),
        "sop_class_uid": str(ref.get("SOPClassUID", "")),
        "n_slices": n,
        "shape": list(data.shape),
        "voxel_mm": [float(spacing[1]), float(spacing[0]), step],
        "slice_normal_lps": normal.tolist(),
        "rescale_slope": sorted(set(slopes)),
        "rescale_intercept": sorted(set(intercepts)),
        "skipped_files": len(skipped),
    }
    return data, affine, info


def dicom_series_to_nifti(
    folder,
    out_path,
    *,
    series_uid: str | None = None,
    spacing_rtol: float = 0.01,
    spacing_atol: float = 0.01,
    sidecar_path=None,
) -> Path:
    """Convert the DICOM series in ``folder`` to a float32 NIfTI written atomically.

    qform/sform codes are ``scanner``.  With ``sidecar_path`` a JSON summary of the
    series (see :func:`read_dicom_series`) is written there too.  Returns ``out_path``.
    """
    data, affine, info = read_dicom_series(
        folder, series_uid=series_uid, spacing_rtol=spacing_rtol, spacing_atol=spacing_atol
    )
    out = save_volume(out_path, data, affine, xform_code="scanner", description="lpmnet.dicom")
    if sidecar_path is not None:
        atomic_write_json(sidecar_path, info)
    return out


# --------------------------------------------------------------------------- writing
def _uid(entropy: Sequence[Any] | None) -> str:
    """A ``2.25.<UUID>`` UID: random, or a name-based UUID (v5) of ``entropy``."""
    if entropy is None:
        return pydicom.uid.generate_uid(prefix=None)
    name = "|".join(str(e) for e in entropy)
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, 'lpmnet:' + name).int}"


def write_dicom_series(
    data,
    affine,
    out_dir,
    *,
    modality: str = "MR",
    patient_id: str = "anonymous",
    patient_name: str | None = None,
    series_description: str = "",
    series_number: int = 1,
    uid_seed: Sequence[Any] | None = None,
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    study_date: str = "20000101",
) -> list[Path]:
    """Write a 3D array as a classic single-frame DICOM series (one file per k-slice).

    Slice ``k`` holds ``data[:, :, k]`` with columns along voxel axis i and rows along
    axis j, placed with ``affine`` (NIfTI RAS; converted to DICOM LPS).  The affine's
    third column must be perpendicular to the first two (no shear).  Float data are
    stored as uint16 with RescaleSlope/RescaleIntercept (integral data that fit are
    stored unscaled).  ``uid_seed`` makes every UID deterministic (derived from it);
    without it fresh random UIDs are used.  Files are written atomically as
    ``IM_0001.dcm``, ``IM_0002.dcm``... in ``out_dir``; returns their paths.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    arr = np.asarray(data, dtype=np.float64)
    if arr.ndim != 3:
        raise ValueError(f"expected 3D data, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("data contain NaN/inf")
    lps = LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)
    cols_vec, rows_vec, slice_vec = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    dc, dr, dz = (float(np.linalg.norm(v)) for v in (cols_vec, rows_vec, slice_vec))
    row_cos, col_cos = cols_vec / dc, rows_vec / dr
    if abs(row_cos @ col_cos) > 1e-6 or abs(row_cos @ slice_vec) / dz > 1e-6 or abs(col_cos @ slice_vec) / dz > 1e-6:
        raise ValueError("affine is not orthogonal; cannot be written as a DICOM stack")

    vmin, vmax = float(arr.min()), float(arr.max())
    integral = np.all(np.rint(arr) == arr)
    if integral and vmin >= 0 and vmax <= 65535:
        stored, slope, intercept = arr.astype(np.uint16), 1.0, 0.0
    else:
        intercept = vmin
        slope = (vmax - vmin) / 65535.0 if vmax > vmin else 1.0
        # DICOM DS values hold at most 16 characters: round the slope/intercept to
        # what will be stored, then quantise with exactly those values
        slope = float(_ds_str(slope))
        intercept = float(_ds_str(intercept))
        stored = np.clip(np.rint((arr - intercept) / slope), 0, 65535).astype(np.uint16)

    seed = list(uid_seed) if uid_seed is not None else None
    study_uid = study_uid or _uid(None if seed is None else seed + ["study"])
    series_uid = _uid(None if seed is None else seed + ["series", series_number])
    for_uid = frame_of_reference_uid or _uid(None if seed is None else seed + ["frame"])
    sop_class = {"PT": pydicom.uid.PositronEmissionTomographyImageStorage,
                 "CT": pydicom.uid.CTImageStorage}.get(modality, pydicom.uid.MRImageStorage)
    normal = np.cross(row_cos, col_cos)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    nk = arr.shape[2]
    for k in range(nk):
        sop_uid = _uid(None if seed is None else seed + ["instance", series_number, k])
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "000000"
        ds.Modality = modality
        ds.Manufacturer = "lpmnet synthetic"
        ds.PatientName = patient_name or patient_id
        ds.PatientID = patient_id
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = for_uid
        ds.StudyID = "1"
        ds.SeriesNumber = int(series_number)
        ds.InstanceNumber = k + 1
        ds.SeriesDescription = series_description
        ipp = lps[:3, 3] + k * slice_vec
        ds.ImagePositionPatient = [_ds_str(v) for v in ipp]
        ds.ImageOrientationPatient = [_ds_str(v) for v in np.concatenate([row_cos, col_cos])]
        ds.SliceLocation = _ds_str(float(ipp @ normal))
        ds.PixelSpacing = [_ds_str(dr), _ds_str(dc)]
        ds.SliceThickness = _ds_str(dz)
        ds.SpacingBetweenSlices = _ds_str(dz)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = arr.shape[1]
        ds.Columns = arr.shape[0]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleSlope = _ds_str(slope)
        ds.RescaleIntercept = _ds_str(intercept)
        ds.RescaleType = "US"
        ds.BurnedInAnnotation = "NO"
        pixels = np.ascontiguousarray(stored[:, :, k].T).astype("<u2")  # [row, col]
        ds.PixelData = pixels.tobytes()
        ds["PixelData"].VR = "OW"
        dest = out / f"IM_{k + 1:04d}.dcm"
        with atomic_output(dest, fsync=False) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        paths.append(dest)
    return paths


def _ds_str(value: float) -> str:
    """A DICOM DS (decimal string, at most 16 characters) for ``value``."""
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(value))
