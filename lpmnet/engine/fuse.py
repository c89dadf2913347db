"""Fusion of two co-registered volumes with a trained LPM-Net.

The output is a float32 NIfTI in exactly the grid and affine of the first (fixed) input, so it overlays
on the source scans in any viewer, plus a JSON sidecar recording the sources, the checkpoint and the
intensity convention. Registration is the workflow's job: inputs on different grids are refused.

How a method runs over the volume (whole, in tiles: :mod:`lpmnet.methods.tiling`, or slice by slice) is
the method's own business (:mod:`lpmnet.methods`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from lpmnet import __version__
from lpmnet.engine.device import resolve_device
from lpmnet.volumes.io import atomic_write_json, dhw, file_digest, load_volume, require_same_grid, save_volume, sidecar_path
from lpmnet.methods import count_parameters
from lpmnet.volumes.colour import colour_luminance, write_colour_fusion
from lpmnet.volumes.normalize import UNIT_RANGE, unit_range
from lpmnet.ops.cpu import cpu_kernel_load

log = logging.getLogger(__name__)

NORMALIZATION = f"{UNIT_RANGE}; output in [0, 1]"
#: The sidecar's Normalization of a fusion of inputs normalised before (``normalize=False``).
GIVEN_NORMALIZATION = "none here: inputs normalised to [0, 1] before, used as given; output in [0, 1]"


def fuse_files(path1, path2, out_path, checkpoint, device="auto", method="lpmnet", components=False,
               normalize=True, colour=None, **settings):
    """Fuse two NIfTI files with a checkpoint of ``method``; writes ``out_path`` (+ ``.json`` sidecar).

    ``settings`` go to the method's fuse (:mod:`lpmnet.methods`); LPM-Net's: ``tile``, ``overlap``,
    ``memory_budget_mb`` (without ``tile``, the volume is tiled automatically when its pass would
    need more; None: never) and ``scan_backend``. ``components=True`` also writes the base and detail
    volumes of a method that has them next to the output (``..._base.nii.gz``, ``..._detail.nii.gz``).
    ``normalize``: how the inputs reach [0, 1], by :func:`lpmnet.volumes.normalize.unit_range`, the one
    owner of that convention: True (default), raw volumes, each min-max scaled; False, volumes normalised
    before (they must lie in [0, 1]), used as they are. The two agree exactly on volumes that span
    [0, 1]; the workflow keeps the default because its volumes on a resized grid span less.
    ``colour``: the second input is functional (PET, SPECT) and fused in colour through this colour map
    (:mod:`lpmnet.volumes.colour`): the method fuses the first input with its luminance, ``out_path`` is the
    fused luminance and ``<name>_rgb.nii.gz`` beside it the RGB24 colour fusion.
    The sidecar records the network's constructor arguments and parameter count, and ``Seconds``: the
    fusion from reading the inputs to writing the outputs (no start-up, imports or kernel build), what
    the comparison tables report. Returns the sidecar.
    """
    from lpmnet.methods import get_method

    spec = get_method(method)
    unknown = sorted(set(settings) - set(spec.settings))
    if unknown:
        raise ValueError(f"method {method} has no setting {', '.join(unknown)}; its settings: "
                         f"{', '.join(spec.settings)}")
    out_path = Path(out_path)
    device = resolve_device(device)
    kernel_before = cpu_kernel_load()
    # The fusion's own seconds: from reading the inputs to writing the output, less a kernel load or build
    # (a prebuilt kernel loads in milliseconds; a first just-in-time build takes a minute).
    tic = time.perf_counter()
    v1, v2 = load_volume(path1), load_volume(path2)
    # Registration is the workflow's job: fusing volumes on different grids would mix anatomy.
    require_same_grid(v1, v2)
    model, card = spec.load(checkpoint, map_location=device)
    model.to(device)
    x2 = unit_range(dhw(v2.data), normalize)
    if colour:
        x2, cb, cr = colour_luminance(x2, colour)
    result = spec.fuse(model, unit_range(dhw(v1.data), normalize), x2, device=device, **settings)

    volumes = {k: v for k, v in result.items() if isinstance(v, np.ndarray)}
    written = {"fused": out_path}
    if components:
        stem = out_path.name.removesuffix(".gz").removesuffix(".nii")
        written.update({name: out_path.with_name(f"{stem}_{name}.nii.gz") for name in volumes if name != "fused"})
    for name, path in written.items():
        save_volume(path, dhw(volumes[name]), v1.affine, header=v1.header)
    coloured = (write_colour_fusion(out_path, dhw(volumes["fused"]), dhw(cb), dhw(cr), v1.affine, v1.header, colour)
                if colour else None)
    kernel = cpu_kernel_load() if kernel_before is None else None
    seconds = time.perf_counter() - tic - (kernel["seconds"] if kernel else 0.0)
    sidecar = {
        "Description": f"{spec.name} fusion in the grid of the fixed (first) input",
        "Method": spec.name,
        "SourceFiles": [{"path": str(p), "sha256": file_digest(p)} for p in (path1, path2)],
        "SpaceOf": str(path1),
        "Checkpoint": {"path": str(checkpoint), "sha256": file_digest(checkpoint),
                       "model_card_method": card.get("method")},
        "ModelKwargs": model.model_kwargs,
        "ParameterCount": count_parameters(model),
        "Normalization": NORMALIZATION if normalize else GIVEN_NORMALIZATION,
        "Components": {k: str(v) for k, v in written.items()},
        "Settings": settings,
        **{k: v for k, v in result.items() if k not in volumes},  # what the method reports (e.g. LPM-Net's tiles)
        "Device": str(device),
        "Seconds": round(seconds, 3),
        **({"KernelLoad": {**kernel, "seconds": round(kernel["seconds"], 3)}} if kernel else {}),
        **({"Colour": coloured} if coloured else {}),
        "lpmnet_version": __version__,
    }
    atomic_write_json(sidecar_path(out_path), sidecar)
    return sidecar
