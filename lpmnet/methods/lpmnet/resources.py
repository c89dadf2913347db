"""LPM-Net's memory model: the fusion pass, the automatic tile and the training job's ``mem_mb``.

Fitted, like the shared parts in :mod:`lpmnet.memory`, to the peak resident memory that
``benchmarks/bench_memory.py`` measures (CPU, float32, the default model of 24 feature channels).
"""

from __future__ import annotations

import math

from lpmnet.memory import MB_PER_VOXEL_COPY, PROCESS_MB, largest_tile, mb_with_margin, volume_shape, voxels
from lpmnet.methods.lpmnet.network import WINDOW

#: Model activations of one LPM-Net eval pass per voxel of the padded input, default model (24 channels),
#: on a CPU, which runs the views a few slices at a time (network._PASS_BYTES): the merged features
#: and the head's outputs. Measured: 1.1e-4 (96x160x160) to 1.67e-4 (182x218x182, 240x240x155).
FUSION_MB_PER_VOXEL = 1.7e-4
#: The same on a GPU, which runs each view over the whole volume (its allocator caches the blocks):
#: measured on the CPU with that path, 1.55e-3 (240x240x155) to 1.77e-3 (96x160x160).
FUSION_MB_PER_VOXEL_WHOLE_VIEWS = 1.65e-3
#: A training job: the process with autograd, Adam and the losses' kernels, measured 1.37-1.39 GB for
#: 32^3 patches whatever the volume size (96x160x160 to 240x240x155) ...
TRAIN_PROCESS_MB = 1150
#: ... plus one step (forward with the reconstruction branch, backward) per voxel of the patch batch ...
TRAIN_MB_PER_VOXEL = 6.0e-3
#: ... plus its volumes, which stay in memory as two float32 arrays per pair and a foreground index.
TRAIN_VOLUME_COPIES = 5


def _padded(shape):
    return tuple(math.ceil(n / WINDOW) * WINDOW for n in shape)


def model_dim(model_kwargs):
    """Feature channels of an LPM-Net configuration (what its activations scale with)."""
    return int(model_kwargs.get("base_c", 8)) * (int(model_kwargs.get("depth_c", 2)) + 1)


def fusion_pass_mb(shape, model_dim=24, device="cpu"):
    """Peak of one model pass over a (D, H, W) block on ``device`` (without the process and the volume
    copies)."""
    per_voxel = FUSION_MB_PER_VOXEL if str(device).startswith("cpu") else FUSION_MB_PER_VOXEL_WHOLE_VIEWS
    return per_voxel * model_dim / 24 * voxels(_padded(shape))


def fusion_tile(shape, budget_mb, model_dim=24, device="cpu"):
    """The tile (D, H, W) that an LPM-Net fusion of ``shape`` within ``budget_mb`` megabytes uses, or None.

    None when the whole volume fits. Otherwise the largest tile of multiples of the Mamba window (tiles
    line up with a whole-volume pass) that fits (:func:`lpmnet.memory.largest_tile`).
    """
    return largest_tile(shape, budget_mb, lambda tile: fusion_pass_mb(tile, model_dim, device), WINDOW)


def fusion_mem_mb(fixed_path, budget_mb, model_dim=24):
    """``mem_mb`` of a fusion job on the grid of ``fixed_path`` (auto-tiled within ``budget_mb``)."""
    shape = volume_shape(fixed_path)
    tile = fusion_tile(shape, budget_mb, model_dim)
    # Inputs, their normalised copies, the fused/base/detail outputs and the blending weights.
    copies = 10 * MB_PER_VOXEL_COPY * voxels(shape)
    return mb_with_margin(PROCESS_MB + copies + fusion_pass_mb(tile or shape, model_dim))


def training_mem_mb(volume_paths, patch_size, batch_size, model_dim=24):
    """``mem_mb`` of a training job: its volumes in memory plus one step on a batch of patches."""
    shapes = [volume_shape(p) for p in volume_paths]
    volumes = TRAIN_VOLUME_COPIES * MB_PER_VOXEL_COPY * sum(voxels(s) for s in shapes)
    if patch_size:
        step_voxels = voxels(patch_size)
    else:  # whole volumes: the largest one sets the step's peak
        step_voxels = max(voxels(_padded(s)) for s in shapes)
    step = TRAIN_MB_PER_VOXEL * model_dim / 24 * step_voxels * batch_size
    return mb_with_margin(TRAIN_PROCESS_MB + volumes + step)
