"""LPM-Net (the project's core method, :mod:`lpmnet.methods.lpmnet.network`) on the method interface."""

import logging

import numpy as np

from lpmnet.methods import FusionMethod, model_device
from lpmnet.methods.tiling import fuse_arrays
from lpmnet.methods.lpmnet.network import LPMNet, WINDOW, load_checkpoint
from lpmnet.methods.lpmnet import resources
from lpmnet.memory import DEFAULT_FUSION_BUDGET_MB
from lpmnet.methods.lpmnet.pretrained import pretrained_path
from lpmnet.methods.lpmnet.resources import fusion_tile, model_dim

__all__ = ["LPMNet", "METHOD"]

log = logging.getLogger(__name__)


def fuse(model, x1, x2, device=None, tile=None, overlap=0.25, memory_budget_mb=DEFAULT_FUSION_BUDGET_MB,
         scan_backend="auto"):
    """Whole-volume 3D fusion, tiled when ``tile`` is given or the pass would exceed the memory budget.

    Returns fused, base and detail, and for the sidecar ``Tile`` (the tile used, or None) and ``TileChoice``.
    """
    model.set_scan_backend(scan_backend)
    choice = "given" if tile is not None else "none"
    if tile is None:
        tile = fusion_tile(x1.shape, memory_budget_mb, model_dim(model.config), model_device(model, device))
        if tile is not None:
            choice = f"auto: a whole-volume pass exceeds memory_budget_mb={memory_budget_mb}"
            log.info("fusing in tiles of %s (D, H, W): a whole-volume pass would need more than %s MB",
                     "x".join(map(str, tile)), memory_budget_mb)
    result = fuse_arrays(model, x1, x2, device=device, tile=tile, overlap=overlap, unit=WINDOW)
    return {**result, "Tile": [int(t) for t in np.broadcast_to(tile, 3)] if tile is not None else None,
            "TileChoice": choice}


def _load_original(path):
    model = load_checkpoint(path)[0]
    model.model_kwargs = dict(model.config)  # read off the state dict's shapes
    return model


def _fusion_mem_mb(fixed_path, model_kwargs, settings):
    return resources.fusion_mem_mb(fixed_path, settings.get("memory_budget_mb", DEFAULT_FUSION_BUDGET_MB),
                                   model_dim(model_kwargs))


def _training_mem_mb(volume_paths, config):
    return resources.training_mem_mb(volume_paths, config.patch_size, config.batch_size, model_dim(config.model))


#: The original's recipe (its engine.py and main.py), except 64^3 patches
#: where it trained on whole resized volumes on a GPU (``patch_size: None`` for that).
RECIPE = dict(iterations=3000, batch_size=1, patch_size=(64, 64, 64), slice_axis=0, lr=1e-4, betas=(0.9, 0.999),
              weight_decay=3e-4, optimizer="adam", schedule="cosine", poly_power=0.9, ema_decay=0.0,
              augmentation="flips", loss="lpmnet", loss_settings={}, seed=2)

METHOD = FusionMethod(
    name="lpmnet",
    description="LPM-Net (Wen & Zhang, Information Fusion 2025): 3D, axis-decomposed dense 2D convolutions "
                "and 16x16-window Mamba layers",
    dims=3,
    build=LPMNet,
    fuse=fuse,
    recipe=RECIPE,
    settings=("tile", "overlap", "memory_budget_mb", "scan_backend"),
    patch_multiple=WINDOW,
    load_original=_load_original,
    fusion_mem_mb=_fusion_mem_mb,
    training_mem_mb=_training_mem_mb,
    pretrained=pretrained_path,
)
