"""LPM-Net (the project's core method, :mod:`lpmnet.models`) on the method interface."""

import logging

import numpy as np

from lpmnet.fuse import fuse_arrays
from lpmnet.methods import FusionMethod
from lpmnet.models import LPMNet, load_checkpoint
from lpmnet.resources import DEFAULT_FUSION_BUDGET_MB, fusion_tile, model_dim

__all__ = ["LPMNet", "METHOD"]

log = logging.getLogger("lpmnet.fuse")


def fuse(model, x1, x2, device=None, tile=None, overlap=0.25, memory_budget_mb=DEFAULT_FUSION_BUDGET_MB,
         scan_backend="auto"):
    """Whole-volume 3D fusion, tiled when ``tile`` is given or the pass would exceed the memory budget.

    Returns fused, base and detail, and for the sidecar ``Tile`` (the tile used, or None) and ``TileChoice``.
    """
    model.set_scan_backend(scan_backend)
    choice = "given" if tile is not None else "none"
    if tile is None:
        tile = fusion_tile(x1.shape, memory_budget_mb, model_dim(model.config))
        if tile is not None:
            choice = f"auto: a whole-volume pass exceeds memory_budget_mb={memory_budget_mb}"
            log.info("fusing in tiles of %s (D, H, W): a whole-volume pass would need more than %s MB",
                     "x".join(map(str, tile)), memory_budget_mb)
    result = fuse_arrays(model, x1, x2, device=device, tile=tile, overlap=overlap)
    return {**result, "Tile": [int(t) for t in np.broadcast_to(tile, 3)] if tile is not None else None,
            "TileChoice": choice}


METHOD = FusionMethod(
    name="lpmnet",
    description="LPM-Net (Wen & Zhang, Information Fusion 2025): 3D, axis-decomposed dense 2D convolutions "
                "and 16x16-window Mamba layers",
    dims=3,
    load=load_checkpoint,
    fuse=fuse,
    settings=("tile", "overlap", "memory_budget_mb", "scan_backend"),
)
