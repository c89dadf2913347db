"""Memory the heavy steps need, from the shapes of their inputs: Snakemake's ``mem_mb`` and auto-tiling.

A cluster kills a job that uses more memory than it asked for, and a fixed request is either too small
for a 240x240x155 BraTS volume or wasteful for a 96x160x160 one. Each estimate is a line in the number
of voxels, fitted to the peak resident memory that ``benchmarks/bench_memory.py`` measures for
96x160x160, 182x218x182 and 240x240x155 volumes (CPU, float32), with a margin of about 10 % on top.
This module holds what every job shares (the process, the volume copies, the margin, the tile search)
and the estimates of the method-independent steps; each method estimates its own fusion and training
(``FusionMethod.fusion_mem_mb``, e.g. :mod:`lpmnet.methods.lpmnet.resources`).

Shapes come from the NIfTI headers only (no data is read). A file that does not exist yet raises
:class:`FileNotFoundError` with its name, which Snakemake takes as "evaluate this resource later, when
the job's inputs exist".
"""

from __future__ import annotations

import errno
import math
import os

import nibabel as nib

#: Memory for the model pass of ``lpmnet fuse`` and of the workflow's fusion (``methods.<name>.fusion.memory_budget_mb``).
DEFAULT_FUSION_BUDGET_MB = 6000

#: Resident size of a Python process with torch, nibabel and the model loaded.
PROCESS_MB = 450
#: One float32 copy of a volume.
MB_PER_VOXEL_COPY = 4 / 2**20
#: Metrics of both conventions (float64 volumes, gradient, filter and histogram images): measured
#: 0.99 / 2.17 / 2.62 GB for 96x160x160 / 182x218x182 / 240x240x155.
METRICS_PROCESS_MB = 400
METRICS_MB_PER_VOXEL = 2.5e-4
#: ANTs registration, per voxel of the fixed plus the moving image: measured 0.75 / 1.19 GB for pairs of
#: 96x160x160 / 182x218x182 volumes.
REGISTRATION_PROCESS_MB = 500
REGISTRATION_MB_PER_VOXEL = 4.6e-5
#: A viewer page (lpmnet.evaluation.viewer): per volume shown, its float32 data, display copy, compressed and
#: base64 forms and its share of the page text; measured 309-344 MB peak RSS for 9 views of 1.1 M voxels.
VIEWER_PROCESS_MB = 250
VIEWER_MB_PER_VOXEL_VIEW = 16 / 2**20
MARGIN = 1.1
MIN_MEM_MB = 256
MIN_TILE = 32


def volume_shape(path):
    """(i, j, k) of a NIfTI file from its header. A missing file raises FileNotFoundError naming it."""
    path = str(path)
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "volume not found (yet)", path)
    return tuple(int(n) for n in nib.load(path).shape[:3])


def voxels(shape):
    return math.prod(shape)


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


def metrics_mem_mb(fixed_path):
    """``mem_mb`` of a metrics job (both conventions) on the grid of ``fixed_path``."""
    return mb_with_margin(METRICS_PROCESS_MB + METRICS_MB_PER_VOXEL * voxels(volume_shape(fixed_path)))


def viewer_mem_mb(fixed_path, views):
    """``mem_mb`` of a viewer page of ``views`` volumes on the grid of ``fixed_path``."""
    return mb_with_margin(VIEWER_PROCESS_MB + VIEWER_MB_PER_VOXEL_VIEW * views * voxels(volume_shape(fixed_path)))


def registration_mem_mb(fixed_path, moving_path):
    """``mem_mb`` of an ANTs registration of ``moving_path`` onto ``fixed_path``."""
    shape_sum = voxels(volume_shape(fixed_path)) + voxels(volume_shape(moving_path))
    return mb_with_margin(REGISTRATION_PROCESS_MB + REGISTRATION_MB_PER_VOXEL * shape_sum)
