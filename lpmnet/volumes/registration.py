"""Registration (ANTsPy), N4 bias correction and a registration QC figure.

Reproducibility
---------------
ANTs gives bitwise identical results only with a fixed random seed AND one ITK thread.
ITK reads ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` once per process, when ANTs first
needs it, so :func:`register` sets that variable and ``ANTS_RANDOM_SEED`` *before*
importing ``ants`` (imported lazily, inside the functions) and passes the seed with
``ants.config.set_ants_deterministic(True, seed)`` (ANTsPy 0.6.3), which makes ANTsPy
add ``--random-seed`` to ``antsRegistration``.  The first call in a process therefore
fixes the thread count for the whole process (a Snakemake ``script:`` job is one
process, so that is what the workflow should rely on).  Note that in ANTsPy 0.6.3 the
"deterministic" flag also asks ``ants.registration`` to refuse non-``Repro`` presets,
but that check reads a value bound when ``ants`` is first imported, so the plain
``Rigid``/``Affine``/``SyN`` presets still run; the ``*Repro`` presets (CC metric)
fail on multimodal pairs and are not offered.

Transform files
---------------
``out_transform_prefix`` is a path prefix chosen by the caller, BIDS-like, e.g.
``.../sub-01_from-FLAIR_to-T1w`` (a trailing ``_`` is ignored).  Written next to it:

* ``<prefix>_mode-image_xfm.mat``  - the ITK/ANTs affine (Rigid, Affine and SyN's
  linear part), ANTs' ``0GenericAffine.mat``;
* for SyN also ``<prefix>_mode-image_desc-warp_xfm.nii.gz`` (ANTs ``1Warp``) and
  ``<prefix>_mode-image_desc-inversewarp_xfm.nii.gz`` (``1InverseWarp``).

To apply moving -> fixed later: ``ants.apply_transforms(fixed, moving,
transformlist=result["forward_transforms"])`` (warp first, then affine, ANTs order);
fixed -> moving: ``ants.apply_transforms(moving, fixed,
transformlist=result["inverse_transforms"],
whichtoinvert=result["inverse_whichtoinvert"])``.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from lpmnet.errors import InputError
from lpmnet.volumes.io import Volume, atomic_output, load_volume, require_same_grid, save_volume

__all__ = [
    "TRANSFORM_TYPES",
    "transform_paths",
    "register",
    "n4_bias_correct",
    "resample_like",
    "volume_to_ants",
]

#: Transform presets offered (plain ANTsPy presets, Mattes MI metric for the linear stages).
TRANSFORM_TYPES = ("Rigid", "Affine", "SyN")

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


# ITK thread count in force when ``ants`` was first imported in this process
# (None: not imported yet; "unknown": imported by someone else before us).
_ANTS_IMPORT_THREADS: str | None = None


def _import_ants(seed: int, threads: int):
    """Set the ITK/ANTs environment, then import ants and fix its random seed."""
    global _ANTS_IMPORT_THREADS
    if int(threads) < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if _ANTS_IMPORT_THREADS is None:
        _ANTS_IMPORT_THREADS = "unknown" if "ants" in sys.modules else str(int(threads))
    if _ANTS_IMPORT_THREADS != str(int(threads)):
        warnings.warn(
            f"ants was imported in this process with ITK threads={_ANTS_IMPORT_THREADS}; "
            f"threads={threads} may not take effect (ITK reads the thread count once per "
            "process): results may not be reproducible",
            RuntimeWarning,
            stacklevel=3,
        )
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(int(threads))
    os.environ["ANTS_RANDOM_SEED"] = str(int(seed))
    import ants  # noqa: WPS433 (lazy on purpose)

    config = getattr(ants, "config", None)
    if config is not None and hasattr(config, "set_ants_deterministic"):
        # set_ants_deterministic also reseeds numpy's/python's global RNGs and forces
        # one ITK thread in the environment: keep the caller's RNG state and threads.
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            config.set_ants_deterministic(True, int(seed))
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
            os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(int(threads))
    return ants


def volume_to_ants(vol: Volume):
    """An ANTs image of ``vol`` with the same world geometry (RAS affine -> ITK LPS)."""
    import ants

    lps = _LPS_TO_RAS @ vol.affine
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    direction = lps[:3, :3] / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise InputError(vol.path, "affine has shears; ITK/ANTs cannot represent this grid")
    return ants.from_numpy(
        np.ascontiguousarray(vol.data, dtype=np.float32),
        origin=tuple(float(v) for v in lps[:3, 3]),
        spacing=tuple(float(v) for v in spacing),
        direction=direction,
    )


def _border_value(data: np.ndarray) -> float:
    """Median of the outermost voxel layer (the background level of most scans)."""
    faces = [data[0], data[-1], data[:, 0], data[:, -1], data[:, :, 0], data[:, :, -1]]
    return float(np.median(np.concatenate([f.ravel() for f in faces])))


def transform_paths(out_transform_prefix, transform: str) -> dict[str, Path]:
    """The transform files :func:`register` writes for ``transform`` (see module doc)."""
    prefix = str(out_transform_prefix).rstrip("_")
    paths = {"affine": Path(f"{prefix}_mode-image_xfm.mat")}
    if transform == "SyN":
        paths["warp"] = Path(f"{prefix}_mode-image_desc-warp_xfm.nii.gz")
        paths["inverse_warp"] = Path(f"{prefix}_mode-image_desc-inversewarp_xfm.nii.gz")
    return paths


def _similarities(ants, fixed, moving) -> dict[str, float]:
    """Mattes MI (ANTs sign: lower = better) and Pearson NCC of moving sampled on fixed."""
    mi = float(ants.image_similarity(fixed, moving, metric_type="MattesMutualInformation"))
    resampled = ants.resample_image_to_target(moving, fixed, interp_type="linear")
    a = fixed.numpy().astype(np.float64).ravel()
    b = resampled.numpy().astype(np.float64).ravel()
    a -= a.mean()
    b -= b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    ncc = float((a * b).sum() / denom) if denom > 0 else 0.0
    return {"mattes_mi": mi, "ncc": ncc}


def register(
    fixed_path,
    moving_path,
    out_registered,
    out_transform_prefix,
    transform: str = "Rigid",
    seed: int = 42,
    threads: int = 1,
    *,
    fixed_mask=None,
    interpolator: str = "linear",
    fill_value: float | str = "border",
    verbose: bool = False,
    **ants_kwargs,
) -> dict:
    """Register ``moving_path`` onto ``fixed_path`` with ANTs and write the results.

    ``transform`` is ``"Rigid"``, ``"Affine"`` or ``"SyN"`` (plain ANTsPy presets,
    Mattes MI metric).  The moving image resampled into the fixed grid
    (``interpolator``) is written to ``out_registered`` as float32 with exactly the
    fixed image's affine and shape; points outside the moving field of view get
    ``fill_value``: a number, or ``"border"`` = median of the moving image's outermost
    voxel layer (its background level; right for negative or noisy backgrounds too).
    Transform files go to the :func:`transform_paths` names.  ``fixed_mask`` (NIfTI on
    the fixed grid) restricts the metric.  Extra keyword arguments go to
    ``ants.registration`` (e.g. ``aff_iterations``, ``reg_iterations``).  Bad inputs
    raise :class:`InputError` naming the file.

    Returns a JSON-able dict: the paths, ``transform``, ``seed``, ``threads``,
    ``mattes_mi_before/after`` (ANTs' Mattes MI: lower, i.e. more negative, is
    better), ``improved`` (Mattes MI decreased), ``ncc_before/after`` (Pearson
    correlation on the fixed grid; for multimodal pairs only its magnitude means
    something), ``ncc_improved`` (|NCC| increased), ``transforms`` (role -> path),
    ``forward_transforms``, ``inverse_transforms`` and ``inverse_whichtoinvert`` (ANTs
    order, for ``ants.apply_transforms``) and ``runtime_s``.
    """
    if transform not in TRANSFORM_TYPES:
        raise ValueError(f"transform must be one of {TRANSFORM_TYPES}, got {transform!r}")
    fixed_vol = load_volume(fixed_path)
    moving_vol = load_volume(moving_path)
    mask_vol = load_volume(fixed_mask, allow_constant=True) if fixed_mask is not None else None
    if mask_vol is not None:
        require_same_grid(fixed_vol, mask_vol)

    ants = _import_ants(seed, threads)
    t0 = time.perf_counter()
    fixed = volume_to_ants(fixed_vol)
    moving = volume_to_ants(moving_vol)
    mask = None
    if mask_vol is not None:
        mask = volume_to_ants(Volume((mask_vol.data > 0).astype(np.float32), mask_vol.affine,
                                     mask_vol.header, mask_vol.path))
    before = _similarities(ants, fixed, moving)

    targets = transform_paths(out_transform_prefix, transform)
    with tempfile.TemporaryDirectory(prefix="lpmnet-ants-") as tmp:
        reg = ants.registration(
            fixed=fixed,
            moving=moving,
            type_of_transform=transform,
            mask=mask,
            outprefix=str(Path(tmp) / "reg_"),
            verbose=verbose,
            **ants_kwargs,
        )
        fwd = list(reg["fwdtransforms"])
        inv = list(reg["invtransforms"])
        fill = _border_value(moving_vol.data) if fill_value == "border" else float(fill_value)
        # antsApplyTransforms parses a negative default value ("-f -0.3") as a flag and aborts, so the
        # image is shifted to make the fill 0 and shifted back; interpolation commutes with the shift.
        warped = ants.apply_transforms(
            fixed=fixed, moving=moving - fill, transformlist=fwd, interpolator=interpolator, defaultvalue=0.0
        ) + fill
        after = _similarities(ants, fixed, warped)

        produced: dict[str, str] = {}
        for src in set(fwd) | set(inv):
            name = Path(src).name
            if name.endswith("GenericAffine.mat"):
                produced["affine"] = src
            elif name.endswith("InverseWarp.nii.gz"):
                produced["inverse_warp"] = src
            elif name.endswith("Warp.nii.gz"):
                produced["warp"] = src
        missing = sorted(set(targets) - set(produced))
        if missing:
            raise RuntimeError(f"ANTs did not produce the expected transform(s) {missing}: {fwd + inv}")
        for key, dest in targets.items():
            with atomic_output(dest) as tmp_dest:
                shutil.copyfile(produced[key], tmp_dest)
        mapping = {produced[k]: str(targets[k]) for k in targets}
        forward = [mapping[p] for p in fwd]
        inverse = [mapping[p] for p in inv]

    data = np.ascontiguousarray(warped.numpy(), dtype=np.float32)
    save_volume(out_registered, data, fixed_vol.affine, header=fixed_vol.header,
                description=f"lpmnet {transform} registered")
    runtime = time.perf_counter() - t0

    return {
        "fixed": str(fixed_path),
        "moving": str(moving_path),
        "registered": str(out_registered),
        "transform": transform,
        "seed": int(seed),
        "threads": int(threads),
        "interpolator": interpolator,
        "fill_value": fill,
        "transforms": {k: str(v) for k, v in targets.items()},
        "forward_transforms": forward,
        "inverse_transforms": inverse,
        "inverse_whichtoinvert": [p.endswith(".mat") for p in inverse],
        "mattes_mi_before": before["mattes_mi"],
        "mattes_mi_after": after["mattes_mi"],
        "mattes_mi_note": "ANTs Mattes mutual information: lower (more negative) is better",
        "improved": bool(after["mattes_mi"] < before["mattes_mi"]),
        "ncc_before": before["ncc"],
        "ncc_after": after["ncc"],
        "ncc_improved": bool(abs(after["ncc"]) > abs(before["ncc"])),
        "itk_threads_at_import": _ANTS_IMPORT_THREADS,
        "runtime_s": round(runtime, 3),
        "ants_version": getattr(ants, "__version__", "unknown"),
    }


def n4_bias_correct(
    path,
    out_path,
    mask=None,
    *,
    shrink_factor: int = 4,
    iterations=(50, 50, 50, 50),
    out_mask=None,
    threads: int = 1,
    seed: int = 42,
) -> dict:
    """N4 bias-field correction of ``path`` written (float32, same grid) to ``out_path``.

    ``mask``: a NIfTI path on the same grid, a boolean array, or None to build a head /
    foreground mask with ``ants.get_mask`` (threshold at the image mean, largest
    component, morphological clean-up) - N4 without a mask fits the background too
    and corrects little.  N4 works on positive intensities, so when the masked data
    reach zero or below they are shifted up for the fit and shifted back after (the
    shift is reported).  ``shrink_factor`` and ``iterations`` (per fitting level) are
    N4's; ``out_mask`` optionally saves the mask used (uint8).
    Returns a JSON-able dict.
    """
    vol = load_volume(path)
    if mask is None:
        mask_arr = None
        source = "ants.get_mask"
    elif isinstance(mask, np.ndarray):
        if mask.shape != vol.shape:
            raise InputError(path, f"mask shape {mask.shape} differs from image shape {vol.shape}")
        mask_arr = mask.astype(bool)
        source = "array"
    else:
        mvol = load_volume(mask, allow_constant=True)
        require_same_grid(vol, mvol)
        mask_arr = mvol.data > 0
        source = str(mask)
    ants = _import_ants(seed, threads)
    img = volume_to_ants(vol)
    if mask_arr is None:
        mask_arr = ants.get_mask(img).numpy() > 0
    n_mask = int(mask_arr.sum())
    if n_mask == 0:
        raise InputError(mask if isinstance(mask, (str, os.PathLike)) else path, "mask is empty")
    inside = vol.data[mask_arr]
    lo, hi = float(inside.min()), float(inside.max())
    shift = 0.0
    if lo <= 0:
        shift = -lo + 0.01 * max(hi - lo, 1e-6)
    work = volume_to_ants(Volume(vol.data + np.float32(shift), vol.affine, vol.header, vol.path))
    mask_img = volume_to_ants(Volume(mask_arr.astype(np.float32), vol.affine, vol.header, vol.path))
    corrected = ants.n4_bias_field_correction(
        work, mask=mask_img, shrink_factor=int(shrink_factor),
        convergence={"iters": [int(i) for i in iterations], "tol": 1e-7},
    )
    out = np.ascontiguousarray(corrected.numpy(), dtype=np.float32) - np.float32(shift)
    save_volume(out_path, out, vol.affine, header=vol.header, description="lpmnet N4")
    if out_mask is not None:
        save_volume(out_mask, mask_arr.astype(np.uint8), vol.affine, header=vol.header, dtype=np.uint8)
    return {
        "input": str(path),
        "output": str(out_path),
        "mask": source,
        "mask_voxels": n_mask,
        "intensity_shift": shift,
        "shrink_factor": int(shrink_factor),
        "iterations": [int(i) for i in iterations],
    }


def resample_like(vol: Volume, ref: Volume) -> Volume:
    """``vol`` resampled (linear, world coordinates) onto ``ref``'s grid."""
    from scipy import ndimage as ndi

    vox = np.linalg.inv(vol.affine) @ ref.affine
    data = ndi.affine_transform(vol.data, vox[:3, :3], offset=vox[:3, 3], output_shape=ref.shape,
                                order=1, mode="constant", cval=_border_value(vol.data))
    return Volume(data.astype(np.float32), ref.affine, ref.header, vol.path)
