"""Fusion of two co-registered volumes with a trained LPM-Net.

The output is a float32 NIfTI in exactly the grid and affine of the first (fixed) input, so it overlays
on the source scans in any viewer, plus a JSON sidecar recording the sources, the checkpoint and the
intensity convention. Registration is the workflow's job: inputs on different grids are refused.

Large volumes are fused in overlapping tiles whose outputs are blended with weights that fall off
linearly towards the tile borders, which bounds memory on small GPUs or CPUs: explicitly (``tile``) or
automatically, when a whole-volume pass would need more than ``memory_budget_mb``
(:func:`lpmnet.resources.fusion_tile`).
"""

from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path

import numpy as np
import torch

from lpmnet import __version__
from lpmnet.device import resolve_device
from lpmnet.io import atomic_write_json, dhw, file_digest, load_volume, require_same_grid, save_volume, sidecar_path
from lpmnet.methods import fused_of
from lpmnet.models import WINDOW, count_parameters
from lpmnet.normalize import minmax01
from lpmnet.runtime import release_freed_memory
from lpmnet.scan import cpu_kernel_load

log = logging.getLogger("lpmnet.fuse")

NORMALIZATION = "per-volume min-max to [0, 1] of each input; output in [0, 1]"


def _tile_starts(size, tile, step):
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, step))
    return starts + [size - tile]


def _blend_weights(shape):
    # Linear ramps (never zero) so that every voxel has positive total weight.
    ramps = []
    for n in shape:
        r = np.minimum(np.arange(1, n + 1), np.arange(n, 0, -1)).astype(np.float32)
        ramps.append(r / r.max())
    return ramps[0][:, None, None] * ramps[1][None, :, None] * ramps[2][None, None, :]


def model_device(model, device=None):
    """The device a fusion runs on: ``device`` when given, else the one the model's weights are on."""
    return torch.device(device) if device is not None else next(model.parameters()).device


@torch.no_grad()
def fuse_arrays(model, x1, x2, device=None, tile=None, overlap=0.25, unit=WINDOW):
    """Fuse two [0, 1] arrays (D, H, W) with a 3D network -> dict of float32 arrays ``fused`` (and, for
    LPM-Net, ``base`` and ``detail``).

    ``model(a, b)`` returns the fused tensor or an object with ``.fused`` (and ``.base``, ``.detail``).
    ``tile``: edge length(s) of the sliding window (multiples of ``unit``), or None for the whole volume;
    tile starts are multiples of ``unit`` (LPM-Net: its 16-voxel Mamba windows). The model must be in
    eval mode (so that LPM-Net's reconstruction branch does not run).
    """
    if model.training:
        raise RuntimeError("fuse_arrays needs the model in eval mode")
    device = model_device(model, device)
    shape = x1.shape
    tile_shape = shape if tile is None else tuple(min(int(t), s) for t, s in zip(np.broadcast_to(tile, 3), shape))
    if tile_shape == shape:
        tile = None  # one tile covers the volume: no blending needed
    outputs = {}
    weight_sum = np.zeros(shape, np.float32) if tile is not None else None
    weights = _blend_weights(tile_shape) if tile is not None else None
    # Tile starts on multiples of the unit (LPM-Net: its Mamba window) keep each tile's windows aligned
    # with the windows of a whole-volume pass, so interior voxels see the same context either way.
    steps = [max(unit, int(t * (1 - overlap)) // unit * unit) for t in tile_shape]
    for start in itertools.product(*(_tile_starts(s, t, st) for s, t, st in zip(shape, tile_shape, steps))):
        region = tuple(slice(s, s + t) for s, t in zip(start, tile_shape))
        a = torch.from_numpy(np.ascontiguousarray(x1[region], dtype=np.float32))[None, None].to(device)
        b = torch.from_numpy(np.ascontiguousarray(x2[region], dtype=np.float32))[None, None].to(device)
        result = model(a, b)
        for name in ("fused", "base", "detail"):
            value = fused_of(result) if name == "fused" else getattr(result, name, None)
            if value is None:
                continue
            value = value[0, 0].float().cpu().numpy()
            if tile is None:
                outputs[name] = value
                continue
            acc = outputs.setdefault(name, np.zeros(shape, np.float32))
            acc[region] += value * weights
        if tile is not None:
            weight_sum[region] += weights
            del result
            release_freed_memory()
    if tile is not None:
        for name in outputs:
            outputs[name] /= weight_sum
    return outputs


def fuse_files(path1, path2, out_path, checkpoint, device="auto", method="lpmnet", components=False,
               **settings):
    """Fuse two NIfTI files with a checkpoint of ``method``; writes ``out_path`` (+ ``.json`` sidecar).

    ``settings`` go to the method's fuse (:mod:`lpmnet.methods`); LPM-Net's: ``tile``, ``overlap``,
    ``memory_budget_mb`` (without ``tile``, the volume is tiled automatically when its pass would
    need more; None: never) and ``scan_backend``. ``components=True`` also writes the base and detail
    volumes of a method that has them next to the output (``..._base.nii.gz``, ``..._detail.nii.gz``).
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
    result = spec.fuse(model, minmax01(dhw(v1.data)), minmax01(dhw(v2.data)), device=device, **settings)

    volumes = {k: v for k, v in result.items() if isinstance(v, np.ndarray)}
    written = {"fused": out_path}
    if components:
        stem = out_path.name.removesuffix(".gz").removesuffix(".nii")
        written.update({name: out_path.with_name(f"{stem}_{name}.nii.gz") for name in volumes if name != "fused"})
    for name, path in written.items():
        save_volume(path, dhw(volumes[name]), v1.affine, header=v1.header)
    kernel = cpu_kernel_load() if kernel_before is None else None
    seconds = time.perf_counter() - tic - (kernel["seconds"] if kernel else 0.0)
    sidecar = {
        "Description": f"{spec.name} fusion in the grid of the fixed (first) input",
        "Method": spec.name,
        "Sources": [{"path": str(p), "sha256": file_digest(p)} for p in (path1, path2)],
        "SpaceOf": str(path1),
        "Checkpoint": {"path": str(checkpoint), "sha256": file_digest(checkpoint),
                       "model_card_method": card.get("method")},
        "ModelKwargs": model.model_kwargs,
        "ParameterCount": count_parameters(model),
        "Normalization": NORMALIZATION,
        "Components": {k: str(v) for k, v in written.items()},
        "Settings": settings,
        **{k: v for k, v in result.items() if k not in volumes},  # what the method reports (e.g. LPM-Net's tiles)
        "Device": str(device),
        "Seconds": round(seconds, 3),
        **({"KernelLoad": {**kernel, "seconds": round(kernel["seconds"], 3)}} if kernel else {}),
        "lpmnet_version": __version__,
    }
    atomic_write_json(sidecar_path(out_path), sidecar)
    return sidecar
