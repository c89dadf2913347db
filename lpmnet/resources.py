"""Memory the heavy steps need, from the shapes of their inputs: Snakemake's ``mem_mb`` and auto-tiling.

A cluster kills a job that uses more memory than it asked for, and a fixed request is either too small
for a 240x240x155 BraTS volume or wasteful for a 96x160x160 one. Each estimate below is a line in the
number of voxels, fitted to the peak resident memory that ``benchmarks/bench_memory.py`` measures for
96x160x160, 182x218x182 and 240x240x155 volumes (CPU, float32, the default model), with a margin of
about 10 % on top. The same numbers decide when fusion must tile (:func:`fusion_tile`), so that a
fusion job stays within its own request.

Shapes come from the NIfTI headers only (no data is read). A file that does not exist yet raises
:class:`FileNotFoundError` with its name, which Snakemake takes as "evaluate this resource later, when
the job's inputs exist".
"""

from __future__ import annotations

import errno
import math
import os

import nibabel as nib

#: Memory for the model pass of ``lpmnet fuse`` and of the workflow's fusion (``methods.lpmnet.fusion.memory_budget_mb``):
#: on a CPU, volumes up to about 330^3 voxels in one pass; on a GPU, up to about 150^3.
DEFAULT_FUSION_BUDGET_MB = 6000

#: Resident size of a Python process with torch, nibabel and the model loaded.
PROCESS_MB = 450
#: One float32 copy of a volume.
MB_PER_VOXEL_COPY = 4 / 2**20
#: Model activations of one LPM-Net eval pass per voxel of the padded input, default model (24 channels),
#: on a CPU, which runs the views a few slices at a time (lpmnet.models._PASS_BYTES): the merged features
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
#: Metrics of both conventions (float64 volumes, gradient, filter and histogram images): measured
#: 0.99 / 2.17 / 2.62 GB for 96x160x160 / 182x218x182 / 240x240x155.
METRICS_PROCESS_MB = 400
METRICS_MB_PER_VOXEL = 2.5e-4
#: ANTs registration, per voxel of the fixed plus the moving image: measured 0.75 / 1.19 GB for pairs of
#: 96x160x160 / 182x218x182 volumes.
REGISTRATION_PROCESS_MB = 500
REGISTRATION_MB_PER_VOXEL = 4.6e-5
MARGIN = 1.1
MIN_MEM_MB = 256
#: The Mamba window: tiles are multiples of it so that their windows line up with a whole-volume pass.
TILE_UNIT = 16
MIN_TILE = 32


def volume_shape(path):
    """(i, j, k) of a NIfTI file from its header. A missing file raises FileNotFoundError naming it."""
    path = str(path)
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "volume not found (yet)", path)
    return tuple(int(n) for n in nib.load(path).shape[:3])


def _voxels(shape):
    return math.prod(shape)


def _padded(shape):
    return tuple(math.ceil(n / TILE_UNIT) * TILE_UNIT for n in shape)


def fusion_pass_mb(shape, model_dim=24, device="cpu"):
    """Peak of one model pass over a (D, H, W) block on ``device`` (without the process and the volume
    copies)."""
    per_voxel = FUSION_MB_PER_VOXEL if str(device).startswith("cpu") else FUSION_MB_PER_VOXEL_WHOLE_VIEWS
    return per_voxel * model_dim / 24 * _voxels(_padded(shape))


def fusion_tile(shape, budget_mb, model_dim=24, device="cpu"):
    """The tile (D, H, W) that an LPM-Net fusion of ``shape`` within ``budget_mb`` megabytes uses, or None.

    None when the whole volume fits. Otherwise the largest tile of multiples of the Mamba window that
    fits (:func:`largest_tile`).
    """
    return largest_tile(shape, budget_mb, lambda tile: fusion_pass_mb(tile, model_dim, device), TILE_UNIT)


def largest_tile(shape, budget_mb, pass_mb, unit, min_tile=MIN_TILE):
    """The largest tile (D, H, W) of multiples of ``unit`` whose pass needs at most ``budget_mb``
    (``pass_mb(tile)`` -> megabytes), or None when the whole volume fits (or ``budget_mb`` is None).

    Found by shrinking the longest edge one unit at a time (near-cubic tiles waste the least work on
    overlaps); a budget that not even a ``min_tile``^3 tile fits raises ValueError.
    """
    if budget_mb is None or pass_mb(shape) <= budget_mb:
        return None
    tile = [math.ceil(n / unit) * unit for n in shape]
    while pass_mb(tile) > budget_mb:
        longest = max(range(3), key=lambda a: tile[a])
        if tile[longest] <= min_tile:
            raise ValueError(f"memory_budget_mb={budget_mb} is too small: even a {min_tile}^3 tile "
                             f"needs {pass_mb([min_tile] * 3):.0f} MB")
        tile[longest] -= unit
    return tuple(tile)


def mb_with_margin(value):
    """A job's ``mem_mb`` for an estimate of ``value`` megabytes: the margin on top, at least MIN_MEM_MB."""
    return max(MIN_MEM_MB, int(math.ceil(value * MARGIN)))


def fusion_mem_mb(fixed_path, budget_mb, model_dim=24):
    """``mem_mb`` of a fusion job on the grid of ``fixed_path`` (auto-tiled within ``budget_mb``)."""
    shape = volume_shape(fixed_path)
    tile = fusion_tile(shape, budget_mb, model_dim)
    # Inputs, their normalised copies, the fused/base/detail outputs and the blending weights.
    copies = 10 * MB_PER_VOXEL_COPY * _voxels(shape)
    return mb_with_margin(PROCESS_MB + copies + fusion_pass_mb(tile or shape, model_dim))


def training_mem_mb(volume_paths, patch_size, batch_size, model_dim=24):
    """``mem_mb`` of a training job: its volumes in memory plus one step on a batch of patches."""
    shapes = [volume_shape(p) for p in volume_paths]
    volumes = TRAIN_VOLUME_COPIES * MB_PER_VOXEL_COPY * sum(_voxels(s) for s in shapes)
    if patch_size:
        step_voxels = _voxels(patch_size)
    else:  # whole volumes: the largest one sets the step's peak
        step_voxels = max(_voxels(_padded(s)) for s in shapes)
    step = TRAIN_MB_PER_VOXEL * model_dim / 24 * step_voxels * batch_size
    return mb_with_margin(TRAIN_PROCESS_MB + volumes + step)


def metrics_mem_mb(fixed_path):
    """``mem_mb`` of a metrics job (both conventions) on the grid of ``fixed_path``."""
    return mb_with_margin(METRICS_PROCESS_MB + METRICS_MB_PER_VOXEL * _voxels(volume_shape(fixed_path)))


def registration_mem_mb(fixed_path, moving_path):
    """``mem_mb`` of an ANTs registration of ``moving_path`` onto ``fixed_path``."""
    voxels = _voxels(volume_shape(fixed_path)) + _voxels(volume_shape(moving_path))
    return mb_with_margin(REGISTRATION_PROCESS_MB + REGISTRATION_MB_PER_VOXEL * voxels)


def model_dim(model_kwargs):
    """Feature channels of an LPM-Net configuration (what its activations scale with)."""
    return int(model_kwargs.get("base_c", 8)) * (int(model_kwargs.get("depth_c", 2)) + 1)


