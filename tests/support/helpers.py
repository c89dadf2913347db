"""Small real-looking test volumes written as NIfTI files (no network, no shared data needed)."""

from contextlib import contextmanager

import numpy as np
import torch
from scipy import ndimage

from lpmnet.volumes.io import save_volume

# 2 mm voxels, rotated a little and shifted: any code that loses the affine is caught.
TEST_AFFINE = np.array([
    [1.98, -0.28, 0.0, -40.0],
    [0.28, 1.98, 0.0, -52.5],
    [0.0, 0.0, 2.0, -30.0],
    [0.0, 0.0, 0.0, 1.0],
])


def smooth_pair(shape=(24, 28, 20), seed=0):
    """Two correlated smooth 'contrasts' of one random anatomy, with a dark background."""
    rng = np.random.default_rng(seed)
    anatomy = ndimage.gaussian_filter(rng.random(shape), 2.0)
    anatomy = (anatomy - anatomy.min()) / np.ptp(anatomy)
    grid = np.indices(shape).astype(float)
    centre = (np.array(shape) - 1)[:, None, None, None] / 2
    head = (((grid - centre) / (np.array(shape)[:, None, None, None] / 2.4)) ** 2).sum(0) < 1
    a = np.where(head, anatomy, 0.0) * 800 + rng.normal(0, 5, shape)
    b = np.where(head, 1 - anatomy, 0.0) * 300 + rng.normal(0, 5, shape)
    return a.astype(np.float32), b.astype(np.float32)


def write_pair(folder, name="sub-01", shape=(24, 28, 20), seed=0, affine=TEST_AFFINE):
    a, b = smooth_pair(shape, seed)
    pa = save_volume(folder / f"{name}_T1.nii.gz", a, affine)
    pb = save_volume(folder / f"{name}_FLAIR.nii.gz", b, affine)
    return pa, pb


@contextmanager
def one_thread():
    """Tiny test tensors: with more threads every op pays for a parallel region larger than its work,
    and on a shared machine for waiting on a descheduled second thread (measured: 4x slower)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
