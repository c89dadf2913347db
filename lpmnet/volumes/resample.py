"""Paper-style resizing of a volume to a target shape, keeping it in place in the world.

The original LPM-Net code resizes every volume to one shape per dataset (BraTS2020 128x192x192, IXI
128x160x160, in its (D, H, W) layout) with ``skimage.transform.resize`` (linear, anti-aliased when
shrinking) and drops the geometry. The same resize is used here, and the resized volume gets the
affine of the grid it was sampled on, so it still overlays on the native scans in any viewer.
"""

from __future__ import annotations

import numpy as np

from lpmnet.volumes.io import Volume

__all__ = ["resized_affine", "resize_volume", "shape_label"]


def shape_label(dhw_shape) -> str:
    """The name of a target shape in output names: (128, 192, 192) -> "128x192x192"."""
    return "x".join(str(int(n)) for n in dhw_shape)


def _voxel_shape(dhw_shape) -> tuple[int, int, int]:
    """A (D, H, W) shape as the files' voxel shape (i, j, k) (see :func:`lpmnet.volumes.io.dhw`)."""
    shape = tuple(int(n) for n in dhw_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"target shape must be three positive sizes (D, H, W), not {list(dhw_shape)}")
    return shape[::-1]


def resized_affine(affine, old_shape, new_shape) -> np.ndarray:
    """Voxel-to-world affine of a grid of ``new_shape`` voxels spanning the field of view of ``old_shape``.

    skimage's resize treats voxels as cells: the field of view (outer voxel faces) is kept, voxel
    sizes grow by ``old/new`` per axis, and new voxel ``n`` is centred on old voxel coordinate
    ``(n + 0.5) * old/new - 0.5``. Shapes are in voxel (i, j, k) order.
    """
    scale = np.asarray(old_shape, dtype=np.float64) / np.asarray(new_shape, dtype=np.float64)
    new_to_old = np.eye(4)
    new_to_old[:3, :3] = np.diag(scale)
    new_to_old[:3, 3] = 0.5 * scale - 0.5
    return np.asarray(affine, dtype=np.float64) @ new_to_old


def resize_volume(volume: Volume, dhw_shape) -> Volume:
    """``volume`` resized like the original code to ``dhw_shape`` (D, H, W), with the matching affine.

    The data are resized with skimage's defaults as the original called it (order 1, reflect at
    the borders, Gaussian anti-aliasing along the axes that shrink, clipped to the input range).
    A volume already of that shape is returned unchanged.
    """
    from skimage.transform import resize

    shape = _voxel_shape(dhw_shape)
    if volume.shape == shape:
        return volume
    data = resize(volume.data, shape, order=1).astype(np.float32)
    return Volume(data=data, affine=resized_affine(volume.affine, volume.shape, shape),
                  header=volume.header, path=volume.path)
