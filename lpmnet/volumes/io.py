"""NIfTI input/output shared by every step of the pipeline.

* :func:`load_volume` reads one 3D volume as float32 and refuses bad input with an
  :class:`~lpmnet.errors.InputError` that names the file (missing, not NIfTI, not 3D,
  NaN/inf values, constant volume).
* :func:`save_volume` writes a NIfTI atomically: the data go to a hidden temporary file
  in the destination folder (``.<name>.tmp-XXXXXXXX.nii.gz``, same extension) that is
  renamed over the destination with :func:`os.replace` only once it is complete.  A
  failed write leaves neither a temporary file nor a (partial) destination file.
  ``.nii.gz`` files are gzip-compressed without time stamp, so the same data and
  header always give byte-identical files.
* :func:`atomic_output`, :func:`atomic_write_text`, :func:`atomic_write_json` and
  :func:`atomic_write_bytes` give the same guarantee to any other output (PNG,
  JSON sidecars, TSV tables, transform files).
* :func:`same_grid` / :func:`require_same_grid` compare voxel grids (shape + affine).
* :func:`dhw` turns a volume's voxel array into the original code's (D, H, W) layout and back.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import math
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import nibabel as nib
import numpy as np

from lpmnet.errors import InputError

__all__ = [
    "Volume",
    "load_volume",
    "save_volume",
    "save_rgb_volume",
    "load_rgb_volume",
    "rgb24_array",
    "RGB24",
    "same_grid",
    "require_same_grid",
    "voxel_sizes",
    "nifti_suffix",
    "atomic_output",
    "atomic_write_text",
    "atomic_write_bytes",
    "atomic_write_json",
    "to_jsonable",
    "file_digest",
    "sidecar_path",
    "dhw",
    "read_tsv_rows",
    "XFORM_CODES",
]

#: NIfTI qform/sform codes by name.
XFORM_CODES = {"unknown": 0, "scanner": 1, "aligned": 2, "talairach": 3, "mni": 4}

_NIFTI_SUFFIXES = (".nii.gz", ".nii")

#: gzip level of ``.nii.gz`` outputs (nibabel's default; higher levels are much slower).
GZIP_LEVEL = 1


@dataclass(frozen=True)
class Volume:
    """One 3D volume in memory.

    ``data`` is a C-contiguous float32 array indexed like the file's voxels (i, j, k),
    ``affine`` the 4x4 voxel-to-world (RAS+ mm) matrix nibabel gives for the file,
    ``header`` a copy of the file's NIfTI header (use it as a template when saving
    a derived volume), ``path`` the file it came from.
    """

    data: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header
    path: Path

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.data.shape)  # type: ignore[return-value]

    @property
    def zooms(self) -> tuple[float, float, float]:
        """Voxel sizes in mm (column norms of the affine)."""
        return voxel_sizes(self.affine)

    def to_nifti(self) -> nib.Nifti1Image:
        """A nibabel image of the data (float32) with this volume's affine."""
        img = nib.Nifti1Image(self.data, self.affine, self.header.copy())
        img.set_data_dtype(np.float32)
        return img


def dhw(data) -> np.ndarray:
    """A NIfTI voxel array (i, j, k) in the original code's layout (D, H, W) = (k, j, i), and back.

    The original reads volumes with SimpleITK, whose arrays run (k, j, i): D is the file's slice axis.
    The model's three views (H x W, D x W and D x H slices, each with its own weights), the paper's
    target shapes and the slice-wise metrics all refer to that order, so the model, training and
    metrics see volumes in it. Reversing the axes is its own inverse: ``dhw(dhw(x))`` is ``x``.
    """
    return np.ascontiguousarray(np.asarray(data).transpose(2, 1, 0))


def voxel_sizes(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel sizes in mm of a 4x4 affine (norms of its first three columns)."""
    a = np.asarray(affine, dtype=float)
    return tuple(float(v) for v in np.sqrt((a[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]


def nifti_suffix(path) -> str:
    """The NIfTI extension a path ends in, as written (".nii.gz", ".nii", any case), or "" for another file."""
    path = Path(path)
    name = path.name.lower()
    for suffix in _NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return path.name[-len(suffix):]
    return ""


def _open_nifti(p: Path):
    """The NIfTI image at ``p`` (header read, data not yet); InputError naming it when it is missing, a folder,
    or not a NIfTI file."""
    if not p.exists():
        raise InputError(p, "file not found")
    if p.is_dir():
        raise InputError(p, "is a folder, expected a NIfTI file (.nii or .nii.gz)")
    try:
        img = nib.load(str(p))
    except Exception as exc:  # nibabel raises several types for foreign files
        raise InputError(p, f"not readable as NIfTI ({type(exc).__name__}: {exc})") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(p, f"not a NIfTI image (nibabel read it as {type(img).__name__})")
    return img


def load_volume(path, *, allow_constant: bool = False) -> Volume:
    """Read a 3D NIfTI volume as float32 (scaling applied) and validate it.

    A 4D (or higher) file whose extra dimensions are all 1 is squeezed to 3D; a real
    4D series is refused.  Raises :class:`InputError` naming ``path`` when the file is
    missing, is not a readable NIfTI-1/NIfTI-2 image, is not 3D, contains NaN/inf
    values, or (unless ``allow_constant``) holds the same value in every voxel.
    """
    p = Path(path)
    img = _open_nifti(p)
    shape = tuple(int(n) for n in img.shape)
    if len(shape) < 3:
        raise InputError(p, f"is {len(shape)}D with shape {shape}; expected a 3D volume")
    if len(shape) > 3 and any(n != 1 for n in shape[3:]):
        raise InputError(
            p,
            f"is {len(shape)}D with shape {shape} ({int(np.prod(shape[3:]))} volumes); "
            "expected one 3D volume",
        )
    if min(shape[:3]) < 1:
        raise InputError(p, f"has an empty shape {shape}")
    try:
        data = np.asanyarray(img.dataobj)
        data = np.asarray(data, dtype=np.float32).reshape(shape[:3])
    except Exception as exc:  # truncated/corrupt compressed data and the like
        raise InputError(p, f"image data could not be read ({type(exc).__name__}: {exc})") from exc
    data = np.ascontiguousarray(data)  # native byte order, C order

    finite = np.isfinite(data)
    if not finite.all():
        n_nan = int(np.isnan(data).sum())
        n_inf = int(data.size - finite.sum() - n_nan)
        raise InputError(p, f"contains non-finite values ({n_nan} NaN, {n_inf} inf voxels)")
    if not allow_constant and data.size and float(data.min()) == float(data.max()):
        raise InputError(p, f"is constant (every voxel is {float(data.min())!r})")

    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(p, "has an invalid (singular or non-finite) voxel-to-world affine")
    header = nib.Nifti1Header.from_header(img.header)
    return Volume(data=data, affine=affine, header=header, path=p)


# --------------------------------------------------------------------------- atomic
def _temp_name(path: Path) -> Path:
    """Hidden sibling temp path that keeps the destination's (possibly double) suffix."""
    name = path.name
    suffix = nifti_suffix(path) or "".join(path.suffixes[-1:])
    stem = name[: len(name) - len(suffix)] if suffix else name
    return path.with_name(f".{stem}.tmp-{secrets.token_hex(4)}{suffix}")


@contextlib.contextmanager
def atomic_output(path, *, fsync: bool = True) -> Iterator[Path]:
    """Context manager yielding a temporary path to write; renamed to ``path`` on success.

    The temporary file lives in the destination folder (created if needed) so the final
    :func:`os.replace` is atomic; its name is hidden and keeps the destination's
    extension (``.nii.gz``, ``.png``...) so writers that dispatch on it behave the same.
    If the body raises, the temporary file is removed and the destination is untouched.
    ``fsync`` flushes the data to disk before the rename (survives a power cut).
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(dest)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{tmp}: nothing was written to the temporary file")
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    dest = Path(path)
    with atomic_output(dest) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
    return dest


def atomic_write_text(path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (newlines written as given); returns the path."""
    return atomic_write_bytes(path, text.encode(encoding))


def to_jsonable(obj: Any, *, nan_as_null: bool = False) -> Any:
    """Convert numpy scalars/arrays, paths, tuples and sets to plain JSON types.

    Non-finite floats stay floats (written ``NaN``/``Infinity`` like :func:`json.dumps`
    does) unless ``nan_as_null``, which turns them into ``None`` (strict JSON).
    """
    def conv(o):
        if isinstance(o, dict):
            return {str(k): conv(v) for k, v in o.items()}
        if isinstance(o, (list, tuple, set, frozenset)):
            items = sorted(o, key=str) if isinstance(o, (set, frozenset)) else o
            return [conv(v) for v in items]
        if isinstance(o, np.ndarray):
            return conv(o.tolist())
        if isinstance(o, (bool, np.bool_)):
            return bool(o)
        if isinstance(o, (int, np.integer)):
            return int(o)
        if isinstance(o, (float, np.floating)):
            value = float(o)
            return None if (nan_as_null and not math.isfinite(value)) else value
        if isinstance(o, os.PathLike):
            return os.fspath(o)
        return o

    return conv(obj)


def atomic_write_json(
    path, obj: Any, *, indent: int = 2, sort_keys: bool = False, nan_as_null: bool = False
) -> Path:
    """Write ``obj`` as JSON (UTF-8, trailing newline) atomically; returns the path.

    numpy types and paths are converted (see :func:`to_jsonable`).  NaN/inf are
    written as ``NaN``/``Infinity`` (what :func:`json.dumps` and :func:`json.loads`
    do) unless ``nan_as_null=True``, which writes ``null`` (strict JSON).
    """
    text = json.dumps(to_jsonable(obj, nan_as_null=nan_as_null), indent=indent,
                      sort_keys=sort_keys, allow_nan=not nan_as_null)
    return atomic_write_text(path, text + "\n")


# --------------------------------------------------------------------------- saving
def _xform_code(code, header: nib.Nifti1Header | None, which: str) -> int:
    if code is None:
        if header is not None:
            inherited = int(header[f"{which}_code"])
            if inherited > 0:
                return inherited
        return XFORM_CODES["scanner"]
    if isinstance(code, str):
        try:
            return XFORM_CODES[code.lower()]
        except KeyError:
            raise ValueError(f"unknown xform code {code!r}; use one of {sorted(XFORM_CODES)}") from None
    return int(code)


def save_volume(
    path,
    data,
    affine,
    header: nib.Nifti1Header | None = None,
    dtype=np.float32,
    *,
    xform_code: str | int | None = None,
    description: str | None = None,
) -> Path:
    """Write ``data`` with ``affine`` to a NIfTI file atomically; returns the path.

    ``path`` must end in ``.nii`` or ``.nii.gz`` (gzip-compressed).  ``header`` (e.g.
    ``Volume.header`` of the source image) is used as a template.  Both the qform and
    the sform are set to ``affine``; their codes come from ``xform_code`` (a name of
    :data:`XFORM_CODES` or an int), else from the template header when it has one
    above 0, else ``scanner`` (1).  An affine the qform cannot hold (shears) gets
    qform code 0 so readers use the sform.  Data are stored as ``dtype`` (float32 by
    default) with scl_slope 1 / scl_inter 0; integer dtypes require data that are
    integral and within the type's range (no silent rounding or wrap-around).
    """
    dest = Path(path)
    if not nifti_suffix(dest):
        raise ValueError(f"{dest}: NIfTI output must end in .nii or .nii.gz")
    out_dtype = np.dtype(dtype)
    arr = np.asarray(data)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{dest}: cannot store data of dtype {arr.dtype} in NIfTI")
    if arr.ndim not in (3, 4):
        raise ValueError(f"{dest}: expected 3D (or 4D) data, got shape {arr.shape}")
    if out_dtype.kind in "iu":
        info = np.iinfo(out_dtype)
        if arr.size and (
            not np.all(np.isfinite(arr))
            or arr.min() < info.min
            or arr.max() > info.max
            or (arr.dtype.kind == "f" and not np.all(np.round(arr) == arr))
        ):
            raise ValueError(f"{dest}: data do not fit {out_dtype} exactly")
    elif out_dtype.kind != "f":
        raise TypeError(f"{dest}: unsupported output dtype {out_dtype}")
    arr = np.ascontiguousarray(arr, dtype=out_dtype.newbyteorder("="))
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4) or not np.isfinite(aff).all():
        raise ValueError(f"{dest}: affine must be a finite 4x4 matrix")

    hdr = nib.Nifti1Header() if header is None else nib.Nifti1Header.from_header(header)
    img = nib.Nifti1Image(arr, aff, hdr)
    img.set_data_dtype(out_dtype)
    img.header.set_slope_inter(1.0, 0.0)
    return _write_image(dest, img, aff, header, xform_code, description)


#: The NIfTI data type of colour volumes: three unsigned bytes (R, G, B) per voxel (NIFTI_TYPE_RGB24).
RGB24 = np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])


def rgb24_array(rgb) -> np.ndarray:
    """Colour data of shape (X, Y, Z, 3) (unsigned bytes) as the (X, Y, Z) array of :data:`RGB24` records that
    nibabel writes as an RGB24 NIfTI."""
    return np.ascontiguousarray(rgb).view(RGB24)[..., 0]


def save_rgb_volume(path, rgb, affine, header: nib.Nifti1Header | None = None, *, xform_code=None,
                    description: str | None = None) -> Path:
    """Write a colour volume (``rgb``: shape (X, Y, Z, 3), unsigned bytes) as an RGB24 NIfTI atomically, with
    the intent "rgb vector" (NIFTI_INTENT_RGB_VECTOR), which ITK-SNAP, 3D Slicer and FSLeyes show in colour;
    the affine, qform and sform as :func:`save_volume` sets them."""
    dest = Path(path)
    if not nifti_suffix(dest):
        raise ValueError(f"{dest}: NIfTI output must end in .nii or .nii.gz")
    arr = np.asarray(rgb)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"{dest}: expected colour data of shape (X, Y, Z, 3) and dtype uint8, got "
                         f"{arr.shape} {arr.dtype}")
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4) or not np.isfinite(aff).all():
        raise ValueError(f"{dest}: affine must be a finite 4x4 matrix")
    packed = rgb24_array(arr)
    hdr = nib.Nifti1Header() if header is None else nib.Nifti1Header.from_header(header)
    img = nib.Nifti1Image(packed, aff, hdr)
    img.set_data_dtype(RGB24)
    img.header.set_slope_inter(1.0, 0.0)
    img.header.set_intent("rgb vector")
    return _write_image(dest, img, aff, header, xform_code, description)


def load_rgb_volume(path) -> tuple[np.ndarray, np.ndarray]:
    """(colour data of shape (X, Y, Z, 3), uint8; affine) of an RGB24 NIfTI; InputError naming the file
    when it is missing, unreadable or not an RGB24 volume."""
    p = Path(path)
    img = _open_nifti(p)
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # truncated/corrupt compressed data and the like
        raise InputError(p, f"image data could not be read ({type(exc).__name__}: {exc})") from exc
    if data.dtype != RGB24 or data.ndim != 3:
        raise InputError(p, f"not an RGB24 colour volume (data type {data.dtype}, shape {data.shape})")
    return np.stack([data[c] for c in RGB24.names], axis=-1), np.asarray(img.affine, dtype=float)


def _write_image(dest, img, aff, header, xform_code, description) -> Path:
    """Set units, qform/sform (see :func:`save_volume`) and description, then write ``img`` atomically."""
    img.header.set_xyzt_units(xyz="mm", t=img.header.get_xyzt_units()[1] or "sec")
    qcode = _xform_code(xform_code, header, "qform")
    scode = _xform_code(xform_code, header, "sform")
    img.set_sform(aff, code=scode)
    img.set_qform(aff, code=qcode)
    if not np.allclose(img.header.get_qform(), aff, atol=1e-4):
        img.header.set_qform(aff, code=0, strip_shears=True)
    if description is not None:
        img.header["descrip"] = description.encode("ascii", "replace")[:79]
    payload = img.to_bytes()
    if nifti_suffix(dest).lower() == ".nii.gz":
        # gzip header without time stamp or file name: same data -> same bytes
        payload = gzip.compress(payload, compresslevel=GZIP_LEVEL, mtime=0)
    atomic_write_bytes(dest, payload)
    return dest


# --------------------------------------------------------------------------- grids
def _grid_of(obj) -> tuple[tuple[int, ...], np.ndarray]:
    if isinstance(obj, Volume):
        return obj.shape, obj.affine
    if isinstance(obj, (str, os.PathLike)):
        img = nib.load(os.fspath(obj))
        return tuple(int(n) for n in img.shape[:3]), np.asarray(img.affine, dtype=float)
    if isinstance(obj, tuple) and len(obj) == 2:  # (shape, affine)
        return tuple(int(n) for n in obj[0][:3]), np.asarray(obj[1], dtype=float)
    if hasattr(obj, "shape") and hasattr(obj, "affine"):  # nibabel image
        return tuple(int(n) for n in obj.shape[:3]), np.asarray(obj.affine, dtype=float)
    raise TypeError(f"cannot get a voxel grid from {type(obj).__name__}")


def same_grid(img_a, img_b, atol: float = 1e-4) -> bool:
    """True when both have the same 3D shape and affines equal within ``atol`` (mm).

    Each argument may be a :class:`Volume`, a nibabel image, a file path or a
    ``(shape, affine)`` tuple.
    """
    shape_a, aff_a = _grid_of(img_a)
    shape_b, aff_b = _grid_of(img_b)
    return shape_a == shape_b and bool(np.allclose(aff_a, aff_b, rtol=0.0, atol=atol))


def require_same_grid(reference, other, atol: float = 1e-4, *, name=None) -> None:
    """Raise :class:`InputError` (naming ``other``) unless both share one voxel grid."""
    if same_grid(reference, other, atol=atol):
        return
    shape_a, aff_a = _grid_of(reference)
    shape_b, aff_b = _grid_of(other)
    label = name if name is not None else getattr(other, "path", other)
    raise InputError(
        label,
        f"not on the reference voxel grid (shape {shape_b} vs {shape_a}, "
        f"max affine difference {float(np.abs(aff_a - aff_b).max()):.6g} mm; atol {atol})",
    )


# --------------------------------------------------------------------------- provenance
def file_digest(path, algo: str = "sha256") -> str:
    """Hex digest of a file's bytes (read in 1 MiB blocks)."""
    h = hashlib.new(algo)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sidecar_path(nifti_path) -> Path:
    """The JSON sidecar next to a NIfTI: same name with ``.json`` instead of ``.nii.gz`` / ``.nii``."""
    p = Path(nifti_path)
    return p.with_name(p.name.removesuffix(".gz").removesuffix(".nii") + ".json")


def read_tsv_rows(path, columns) -> list[dict]:
    """Rows of a tab-separated table as dicts; a missing column is an error naming the file."""
    import csv

    with open(path, newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(path, f"missing column(s) {', '.join(missing)}")
        return list(reader)


def write_tsv_rows(path, rows, columns=None) -> Path:
    """Write dict rows as a tab-separated table, atomically (columns: ``columns`` or the first row's keys)."""
    import csv
    import io

    columns = list(columns or (rows[0] if rows else []))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, delimiter="\t", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, text.getvalue())


def read_json_object(path, what: str) -> dict:
    """The JSON object in ``path`` (``what`` it is, for the messages); InputError naming the file when it is
    missing, not JSON or not an object."""
    p = Path(path)
    if not p.is_file():
        raise InputError(p, f"{what} not found")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(p, f"not valid JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise InputError(p, "expected a JSON object")
    return doc
