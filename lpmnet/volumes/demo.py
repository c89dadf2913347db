"""The embedded default dataset "demo": synthetic multimodal subjects from real anatomy.

Everything is generated offline from the MNI ICBM152 2009a template files that ship
inside nilearn (T1, grey- and white-matter probability maps, brain mask; CSF = mask -
GM - WM).  Nothing is downloaded.

Per subject (``sub-synth01``, ``sub-synth02``...), deterministically from
``numpy.random.default_rng(SeedSequence([seed, subject_number]))``:

1. one small smooth random deformation (displacement of at most ~2-3 mm, smooth at
   ~40 mm) warps the template anatomy: all modalities of a subject share it;
2. contrasts are synthesised from the tissue maps: ``T1`` is the template T1 itself,
   ``T2`` (CSF bright, WM dark), ``FLAIR`` (CSF dark, WM < GM), ``PD`` (flat, CSF
   slightly brightest) and ``PET`` (FDG-like: GM-weighted uptake blurred with a 6 mm
   FWHM Gaussian), each with a little per-subject tissue-contrast jitter;
3. every modality except the reference (``T1``, or the first one when there is no T1)
   is moved by a random rigid transform (up to 5 degrees about each axis and 5 mm
   along each axis, recorded in its sidecar), so registration has real work to do;
   the reference stays on the template grid;
4. MRI gets a smooth multiplicative bias field, a random global intensity scale and
   Rician noise; PET gets a random scale (SUV-like units) and smoothed Gaussian noise
   (so its background has negative values).

All volumes are written on the template grid (``voxel_mm`` isotropic; 99x117x95 at 2
mm with nilearn 0.13).  Modalities listed in ``dicom_modalities`` are written as a
classic DICOM series (uint16 + RescaleSlope/Intercept, axial, conventional LPS
row/column directions) instead of NIfTI; :mod:`lpmnet.volumes.dicom` converts them back.

Layout of ``out_dir`` (paths in ``subjects.tsv`` are relative to ``out_dir``, POSIX
separators; a path that is a folder is a DICOM series, otherwise a ``.nii.gz``)::

    subjects.tsv                     dataset  subject  modality  path
    dataset_description.json         "synthetic": true, generator, seed, licence note
    sub-synth01/anat/sub-synth01_T2w.nii.gz (+ .json sidecar)
    sub-synth01/anat/sub-synth01_FLAIR.nii.gz (+ .json)
    sub-synth01/pet/sub-synth01_pet.nii.gz (+ .json)
    sub-synth01/dicom/sub-synth01_T1w/IM_0001.dcm ... (+ sub-synth01/dicom/sub-synth01_T1w.json)

The same arguments always give byte-identical files.
"""

from __future__ import annotations

import csv
import io as _io
import os
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from lpmnet.volumes.io import atomic_write_json, atomic_write_text, save_volume

__all__ = [
    "DATASET_NAME",
    "demo_layout",
    "MODALITIES",
    "TEMPLATE_NOTE",
    "Template",
    "load_template",
    "rigid_matrix",
    "synthesize_subject",
    "make_demo_dataset",
    "subject_label",
]

DATASET_NAME = "demo"

#: modality -> (BIDS-like suffix, folder)
MODALITIES = {
    "T1": ("T1w", "anat"),
    "T2": ("T2w", "anat"),
    "FLAIR": ("FLAIR", "anat"),
    "PD": ("PDw", "anat"),
    "PET": ("pet", "pet"),
}

# tissue weights (GM, WM, CSF) of the synthetic contrasts; T1 uses the template image
_TISSUE_WEIGHTS = {
    "T2": (0.55, 0.33, 1.00),
    "FLAIR": (0.78, 0.52, 0.07),
    "PD": (0.82, 0.68, 0.92),
    "PET": (1.00, 0.28, 0.04),
}
_PET_FWHM_MM = 6.0
_MAX_ROTATION_DEG = 5.0
_MAX_TRANSLATION_MM = 5.0

TEMPLATE_NOTE = {
    "name": "MNI ICBM152 2009a nonlinear symmetric template (T1, GM, WM, brain mask), "
    "skull-stripped copy bundled with nilearn",
    "files": [
        "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
        "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
        "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
    ],
    "licence": "Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, "
    "Montreal Neurological Institute, McGill University. Permission to use, copy, modify, "
    "and distribute the data for any purpose and without fee is granted provided that this "
    "copyright notice appears in all copies; provided 'as is' without express or implied "
    "warranty.",
    "references": [
        "Fonov VS, Evans AC, McKinstry RC, Almli CR, Collins DL. Unbiased nonlinear average "
        "age-appropriate brain templates from birth to adulthood. NeuroImage 47 (2009) S102.",
        "Fonov V, Evans AC, Botteron K, Almli CR, McKinstry RC, Collins DL. Unbiased average "
        "age-appropriate atlases for pediatric studies. NeuroImage 54(1) (2011) 313-327.",
    ],
}


@dataclass(frozen=True)
class Template:
    """Template anatomy on one grid: T1 (0..1), tissue probabilities, brain mask."""

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    mask: np.ndarray
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.t1.shape)  # type: ignore[return-value]


@lru_cache(maxsize=4)
def load_template(voxel_mm: float = 2.0) -> Template:
    """The nilearn MNI152 2009 template resampled to ``voxel_mm`` (offline, cached)."""
    import warnings

    from nilearn import datasets

    if not voxel_mm > 0:
        raise ValueError(f"voxel_mm must be positive, got {voxel_mm}")
    res = int(voxel_mm) if float(voxel_mm).is_integer() else float(voxel_mm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        imgs = [
            datasets.load_mni152_template(resolution=res),
            datasets.load_mni152_gm_template(resolution=res),
            datasets.load_mni152_wm_template(resolution=res),
            datasets.load_mni152_brain_mask(resolution=res),
        ]
    affine = np.asarray(imgs[0].affine, dtype=np.float64)
    for img in imgs[1:]:
        if img.shape != imgs[0].shape or not np.allclose(img.affine, affine, atol=1e-4):
            raise RuntimeError("nilearn MNI152 templates are not on one grid")
    t1, gm, wm, mask = (np.clip(np.asarray(i.get_fdata(), dtype=np.float32), 0, None) for i in imgs)
    mask = (mask > 0.5).astype(np.float32)
    gm = np.clip(gm, 0, 1) * mask
    wm = np.clip(wm, 0, 1) * mask
    total = gm + wm
    over = total > 1
    gm[over] /= total[over]
    wm[over] /= total[over]
    csf = np.clip(mask - gm - wm, 0, 1).astype(np.float32)
    t1 = (t1 / max(float(t1.max()), 1e-6)).astype(np.float32)
    for arr in (t1, gm, wm, csf, mask):
        arr.setflags(write=False)
    return Template(t1=t1, gm=gm, wm=wm, csf=csf, mask=mask, affine=affine)


def subject_label(number: int) -> str:
    """``sub-synthNN`` for subject ``number`` (1-based)."""
    return f"sub-synth{number:02d}"


def rigid_matrix(rotation_deg, translation_mm, center_mm) -> np.ndarray:
    """4x4 world (RAS mm) rigid motion: rotate by ``R = Rz @ Ry @ Rx`` (degrees about the
    x, y, z axes) around ``center_mm``, then translate by ``translation_mm``."""
    rx, ry, rz = np.deg2rad(np.asarray(rotation_deg, dtype=np.float64))
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    r_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    r_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    r_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rot = r_z @ r_y @ r_x
    c = np.asarray(center_mm, dtype=np.float64)
    m = np.eye(4)
    m[:3, :3] = rot
    m[:3, 3] = c - rot @ c + np.asarray(translation_mm, dtype=np.float64)
    return m


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) matrix of natural cubic-spline interpolation from ``n_in`` evenly
    spaced lattice points onto ``n_out`` evenly spaced points spanning the same range."""
    from scipy.interpolate import CubicSpline

    x_out = np.linspace(0.0, n_in - 1.0, n_out)
    return CubicSpline(np.arange(n_in, dtype=np.float64), np.eye(n_in), bc_type="natural")(x_out)


def _smooth_field(rng: np.random.Generator, shape, voxel_mm: float, spacing_mm: float, n: int = 1):
    """``n`` smooth random fields (cubic interpolation of a coarse N(0,1) lattice with
    ~``spacing_mm`` between lattice points), each rescaled to max |value| = 1."""
    coarse = tuple(max(3, int(np.ceil(s * voxel_mm / spacing_mm)) + 1) for s in shape)
    wx, wy, wz = (_interp_matrix(s, c) for s, c in zip(shape, coarse))
    fields = []
    for _ in range(n):
        lattice = rng.standard_normal(coarse)
        f = np.einsum("ai,bj,ck,ijk->abc", wx, wy, wz, lattice, optimize=True).astype(np.float32)
        fields.append(f / max(float(np.abs(f).max()), 1e-6))
    return fields


def _sample(arr: np.ndarray, coords: np.ndarray, order: int = 1, cval: float = 0.0) -> np.ndarray:
    return ndi.map_coordinates(arr, coords, order=order, mode="constant", cval=cval).astype(np.float32)


def synthesize_subject(
    number: int,
    seed: int = 0,
    modalities=("T1", "T2", "FLAIR", "PET"),
    voxel_mm: float = 2.0,
    rigid_motion: bool = True,
) -> dict:
    """Synthesise subject ``number`` (1-based) in memory.

    Returns ``{"affine": 4x4, "reference": modality, "images": {modality: float32
    array}, "meta": {modality: JSON-able dict}}``; all images are on the template grid
    (``affine``).  Deterministic in (``number``, ``seed``, ``voxel_mm``): the
    random draws of a modality do not depend on which other modalities are asked for.
    ``rigid_motion=False`` leaves every modality in the reference's place (already
    co-registered, as for training data); the other draws stay the same.
    """
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown:
        raise ValueError(f"unknown modality {unknown}; choose from {sorted(MODALITIES)}")
    if len(set(modalities)) != len(modalities):
        raise ValueError(f"duplicated modality in {modalities}")
    if int(seed) < 0 or int(number) < 1:
        raise ValueError("seed must be >= 0 and subject number >= 1")
    tpl = load_template(voxel_mm)
    shape = tpl.shape
    reference = "T1" if "T1" in modalities else modalities[0]

    # --- anatomy: one smooth deformation per subject --------------------------------
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(number), 0]))
    max_disp_mm = float(rng.uniform(1.5, 3.0))
    disp = _smooth_field(rng, shape, voxel_mm, spacing_mm=40.0, n=3)
    grid = np.indices(shape, dtype=np.float32)
    coords = np.stack([g + d * (max_disp_mm / voxel_mm) for g, d in zip(grid, disp)])
    anat = {name: _sample(getattr(tpl, name), coords) for name in ("t1", "gm", "wm", "csf")}

    # grid centre in world mm: centre of the rigid motions
    centre_vox = (np.asarray(shape, dtype=np.float64) - 1) / 2
    centre_mm = tpl.affine[:3, :3] @ centre_vox + tpl.affine[:3, 3]
    inv_affine = np.linalg.inv(tpl.affine)

    images, meta = {}, {}
    for modality in modalities:
        mrng = np.random.default_rng(
            np.random.SeedSequence([int(seed), int(number), 1 + list(MODALITIES).index(modality)])
        )
        info: dict = {"modality": modality}
        if modality == "T1":
            img = anat["t1"].copy()
            info["contrast"] = "template T1 (deformed)"
        else:
            w = np.asarray(_TISSUE_WEIGHTS[modality]) * mrng.uniform(0.95, 1.05, size=3)
            img = (w[0] * anat["gm"] + w[1] * anat["wm"] + w[2] * anat["csf"]).astype(np.float32)
            info["contrast"] = "tissue mixture"
            info["tissue_weights_gm_wm_csf"] = [round(float(v), 6) for v in w]
            if modality == "PET":
                sigma_vox = _PET_FWHM_MM / (2 * np.sqrt(2 * np.log(2))) / voxel_mm
                img = ndi.gaussian_filter(img, sigma_vox, mode="constant").astype(np.float32)
                info["psf_fwhm_mm"] = _PET_FWHM_MM

        rot = mrng.uniform(-_MAX_ROTATION_DEG, _MAX_ROTATION_DEG, size=3)
        trans = mrng.uniform(-_MAX_TRANSLATION_MM, _MAX_TRANSLATION_MM, size=3)
        if rigid_motion and modality != reference:
            motion = rigid_matrix(rot, trans, centre_mm)
            # output voxel v shows the anatomy found at template world point motion^-1(A v)
            vox_map = inv_affine @ np.linalg.inv(motion) @ tpl.affine
            img = ndi.affine_transform(img, vox_map[:3, :3], offset=vox_map[:3, 3], order=1,
                                       mode="constant", cval=0.0).astype(np.float32)
            info["rigid"] = {
                "rotation_deg_xyz": [round(float(v), 6) for v in rot],
                "translation_mm_xyz": [round(float(v), 6) for v in trans],
                "center_mm_ras": [round(float(v), 6) for v in centre_mm],
                "matrix_ras": [[round(float(v), 9) for v in row] for row in motion],
                "convention": "anatomy at template/reference world point p appears at "
                "matrix_ras @ p in this image; R = Rz @ Ry @ Rx about center_mm_ras, "
                "then translation",
            }
        else:
            info["rigid"] = None

        if modality == "PET":
            scale = float(mrng.uniform(6.0, 10.0))  # SUV-like grey-matter uptake
            img = img * np.float32(scale)
            noise_sigma = float(mrng.uniform(0.02, 0.04)) * scale
            noise = ndi.gaussian_filter(mrng.standard_normal(shape, dtype=np.float32), 1.0)
            noise *= np.float32(noise_sigma / max(float(noise.std()), 1e-6))
            img = img + noise
            info.update(intensity_scale=scale, noise="gaussian, smoothed 1 voxel", noise_sigma=noise_sigma)
        else:
            bias_amp = float(mrng.uniform(0.08, 0.2))
            (bias,) = _smooth_field(mrng, shape, voxel_mm, spacing_mm=80.0, n=1)
            img = img * np.exp(np.float32(bias_amp) * bias)
            scale = float(mrng.uniform(700.0, 1400.0))
            img = img * np.float32(scale)
            noise_sigma = float(mrng.uniform(0.01, 0.025)) * scale
            n1 = mrng.standard_normal(shape, dtype=np.float32) * np.float32(noise_sigma)
            n2 = mrng.standard_normal(shape, dtype=np.float32) * np.float32(noise_sigma)
            img = np.sqrt((img + n1) ** 2 + n2 ** 2)
            info.update(bias_field_log_amplitude=bias_amp, intensity_scale=scale, noise="rician",
                        noise_sigma=noise_sigma)
        images[modality] = np.ascontiguousarray(img, dtype=np.float32)
        meta[modality] = info
    return {
        "affine": tpl.affine.copy(),
        "reference": reference,
        "images": images,
        "meta": meta,
        "deformation_max_mm": max_disp_mm,
    }


def _dicom_geometry(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip voxel axes i/j when needed so DICOM rows/columns run along +LPS (conventional
    radiological display: columns towards the patient's left, rows towards posterior)."""
    from nibabel.affines import apply_affine

    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    out, aff = data, affine.copy()
    for axis in (0, 1):
        direction = lps[:3, axis]
        if direction[int(np.argmax(np.abs(direction)))] < 0:
            out = np.flip(out, axis=axis)
            n = data.shape[axis] - 1
            corner = np.zeros(3)
            corner[axis] = n
            new_origin = apply_affine(aff, corner)
            aff[:3, axis] = -aff[:3, axis]
            aff[:3, 3] = new_origin
    return np.ascontiguousarray(out), aff


def _write_dicom(folder: Path, data, affine, *, subject: str, modality: str, seed: int, number: int) -> None:
    from lpmnet.volumes.dicom import write_dicom_series

    data_c, aff_c = _dicom_geometry(data, affine)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        write_dicom_series(
            data_c,
            aff_c,
            tmp,
            modality="PT" if modality == "PET" else "MR",
            patient_id=subject,
            patient_name=f"Synthetic^{subject}",
            series_description=f"synthetic {modality} ({DATASET_NAME})",
            series_number=1 + list(MODALITIES).index(modality),
            uid_seed=["lpmnet-demo", seed, number, modality],
        )
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def demo_layout(n_subjects: int = 6, modalities=("T1", "T2", "FLAIR", "PET"),
                dicom_modalities=("T1",)) -> list[dict]:
    """The rows of ``subjects.tsv`` that :func:`make_demo_dataset` writes, without generating anything.

    The workflow reads this when it builds its job graph, before the data exist. ``path`` is relative
    to the dataset folder; a DICOM series is a folder.
    """
    rows = []
    for number in range(1, int(n_subjects) + 1):
        subject = subject_label(number)
        for modality in modalities:
            suffix, folder = MODALITIES[modality]
            if modality in dicom_modalities:
                path = f"{subject}/dicom/{subject}_{suffix}"
            else:
                path = f"{subject}/{folder}/{subject}_{suffix}.nii.gz"
            rows.append({"dataset": DATASET_NAME, "subject": subject, "modality": modality, "path": path})
    return rows


def make_demo_dataset(
    out_dir,
    n_subjects: int = 6,
    seed: int = 0,
    modalities=("T1", "T2", "FLAIR", "PET"),
    voxel_mm: float = 2.0,
    dicom_modalities=("T1",),
    rigid_motion: bool = True,
) -> list[dict]:
    """Generate the synthetic "demo" dataset in ``out_dir`` (see the module docstring).

    Returns one row per file, ``{"dataset", "subject", "modality", "path"}`` with
    ``path`` relative to ``out_dir`` (POSIX separators), the same rows as
    ``out_dir/subjects.tsv``.  Deterministic and idempotent: the same arguments give
    byte-identical files (a rerun overwrites them).
    """
    import lpmnet

    modalities = tuple(modalities)
    dicom_modalities = tuple(dicom_modalities or ())
    if int(n_subjects) < 1:
        raise ValueError(f"n_subjects must be >= 1, got {n_subjects}")
    stray = [m for m in dicom_modalities if m not in modalities]
    if stray:
        raise ValueError(f"dicom_modalities {stray} are not among modalities {modalities}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    generator = {"name": "lpmnet.volumes.demo.make_demo_dataset", "version": lpmnet.__version__}
    try:
        import nilearn

        nilearn_version = nilearn.__version__
    except Exception:  # pragma: no cover
        nilearn_version = "unknown"

    rows = demo_layout(n_subjects, modalities, dicom_modalities)
    for number in range(1, int(n_subjects) + 1):
        subject = subject_label(number)
        synth = synthesize_subject(number, seed=seed, modalities=modalities, voxel_mm=voxel_mm,
                                   rigid_motion=rigid_motion)
        for modality in modalities:
            data = synth["images"][modality]
            sidecar = {
                "synthetic": True,
                "dataset": DATASET_NAME,
                "subject": subject,
                **synth["meta"][modality],
                "reference_modality": synth["reference"],
                "deformation_max_mm": round(synth["deformation_max_mm"], 6),
                "seed": int(seed),
                "subject_number": number,
                "voxel_mm": float(voxel_mm),
                "generator": generator,
                "source_template": {**TEMPLATE_NOTE, "nilearn_version": nilearn_version},
            }
            path = out / next(r["path"] for r in rows if r["subject"] == subject and r["modality"] == modality)
            if modality in dicom_modalities:
                _write_dicom(path, data, synth["affine"], subject=subject, modality=modality,
                             seed=int(seed), number=number)
                sidecar["format"] = "DICOM (uint16 with RescaleSlope/RescaleIntercept)"
                atomic_write_json(path.with_name(path.name + ".json"), sidecar)
            else:
                save_volume(path, data, synth["affine"], xform_code="mni",
                            description=f"synthetic {modality} lpmnet demo")
                sidecar["format"] = "NIfTI"
                atomic_write_json(path.with_name(path.name[: -len(".nii.gz")] + ".json"), sidecar)

    atomic_write_json(out / "dataset_description.json", {
        "Name": "lpmnet synthetic demo dataset",
        "DatasetType": "derivative",
        "synthetic": True,
        "dataset": DATASET_NAME,
        "seed": int(seed),
        "n_subjects": int(n_subjects),
        "modalities": list(modalities),
        "dicom_modalities": list(dicom_modalities),
        "voxel_mm": float(voxel_mm),
        "rigid_motion": bool(rigid_motion),
        "GeneratedBy": [generator],
        "source_template": {**TEMPLATE_NOTE, "nilearn_version": nilearn_version},
        "subjects_tsv_paths": "relative to this folder; a folder path is a DICOM series",
    })
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["dataset", "subject", "modality", "path"],
                            delimiter="\t", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "subjects.tsv", buf.getvalue())
    return rows
