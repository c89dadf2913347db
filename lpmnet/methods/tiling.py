"""Sliding-window fusion of a volume pair with a 3D network, for volumes whose one pass would not fit.

Large volumes are fused in overlapping tiles whose outputs are blended with weights that fall off
linearly towards the tile borders, which bounds memory on small GPUs or CPUs; each 3D method decides
when to tile (e.g. :func:`lpmnet.methods.lpmnet.resources.fusion_tile`) and on which unit tiles start.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from lpmnet.methods import fused_of, model_device
from lpmnet.runtime import release_freed_memory


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


@torch.no_grad()
def fuse_arrays(model, x1, x2, device=None, tile=None, overlap=0.25, unit=1):
    """Fuse two [0, 1] arrays (D, H, W) with a 3D network -> dict of float32 arrays ``fused`` (and, for
    LPM-Net, ``base`` and ``detail``).

    ``model(a, b)`` returns the fused tensor or an object with ``.fused`` (and ``.base``, ``.detail``).
    ``tile``: edge length(s) of the sliding window (multiples of ``unit``), or None for the whole volume;
    tile starts are multiples of ``unit`` (LPM-Net: its 16-voxel Mamba windows; 1: any voxel). The model must be in
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
