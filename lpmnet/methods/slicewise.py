"""Slice-wise fusion of two volumes with a 2D fusion network (the 2D baselines' 3D use).

The 2D baselines (MambaDFuse, ASFE-Fusion) fuse images, not volumes. As the 3D use of 2D fusion methods
is usually done, a volume pair is fused slice by slice along one axis and the fused slices are stacked
again; the two inputs are expected already normalised to [0, 1] per volume (the
caller's job, as for the 3D methods' :func:`lpmnet.methods.tiling.fuse_arrays`), so every slice sees the intensity
scale of its whole volume rather than a per-slice stretch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from lpmnet.methods import fused_of, model_device

__all__ = ["fuse_slicewise"]


def _slices_per_batch(batch_size, max_batch_voxels, slice_voxels):
    """Slices per model call: ``batch_size``, lowered so that the batch holds at most
    ``max_batch_voxels`` (padded) pixels, but never below one slice."""
    if max_batch_voxels is None:
        return batch_size
    return max(1, min(batch_size, int(max_batch_voxels) // slice_voxels))


def fuse_slicewise(model, x1, x2, axis=0, batch_size=8, multiple=1, device=None, dtype=torch.float32,
                   max_batch_voxels=None, clip=True) -> np.ndarray:
    """Fuse two (D, H, W) arrays in [0, 1] with a 2D network, slice by slice along ``axis``.

    Args:
        model: a 2D fusion network called as ``model(a, b)`` on two (B, 1, h, w) tensors; it returns
            the fused (B, 1, h, w) tensor or an object with a ``.fused`` tensor. An ``nn.Module`` must
            be in eval mode and already in ``dtype`` on ``device`` (it is not moved or cast here).
        x1, x2: the two co-registered volumes, (D, H, W) arrays of one shape (the layout of
            :func:`lpmnet.volumes.io.dhw`).
        axis: the slicing axis, 0 (D: H x W slices), 1 (H: D x W slices) or 2 (W: D x H slices).
        batch_size: slices per model call. For a network whose samples do not interact (any network
            in eval mode) the result does not depend on it.
        multiple: each slice is padded at its far end (bottom rows, right columns) to a multiple of
            this in both in-plane axes and the output is cropped back (ASFE-Fusion needs 128,
            MambaDFuse 1). The padding replicates the edge pixels (torch's "replicate" mode): unlike
            zero padding it adds no artificial step at the image border (a bright edge row would
            otherwise meet a black band), and unlike reflection (the mode of MambaDFuse's test
            script) it invents no mirrored anatomy and works for any amount, including padding
            beyond the slice's own size (a 60-pixel slice padded to 128), which torch's "reflect"
            refuses.
        device: where the model runs; by default the device of its first parameter (CPU for a
            parameterless callable).
        dtype: the floating type of the input tensors.
        max_batch_voxels: optional bound on ``slices * padded h * padded w`` per call, which bounds
            the memory of a call for large slices; the batch is lowered to fit (at least one slice).
        clip: clamp the fused values to [0, 1]. MambaDFuse has no output activation and its authors'
            test script clamps to [0, 1] before saving, so True reproduces its results; False keeps
            the raw network output.

    Returns the fused volume as a float32 (D, H, W) array. Runs under ``torch.inference_mode``.
    """
    x1, x2 = np.asarray(x1), np.asarray(x2)
    if x1.ndim != 3 or x1.shape != x2.shape:
        raise ValueError(f"expected two (D, H, W) volumes of one shape, got {x1.shape} and {x2.shape}")
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, not {axis!r}")
    if batch_size < 1 or multiple < 1:
        raise ValueError(f"batch_size and multiple must be >= 1, got {batch_size} and {multiple}")
    if getattr(model, "training", False):
        # Dropout or batch statistics would make each slice's result depend on its batch.
        raise RuntimeError("fuse_slicewise needs the model in eval mode")
    device = model_device(model, device)

    # Slices first: (n, h, w) views of the inputs, and the output in the same order.
    s1, s2 = np.moveaxis(x1, axis, 0), np.moveaxis(x2, axis, 0)
    n, h, w = s1.shape
    pad_h, pad_w = -h % multiple, -w % multiple
    step = _slices_per_batch(batch_size, max_batch_voxels, (h + pad_h) * (w + pad_w))
    out = np.empty((n, h, w), np.float32)

    def to_batch(slices):
        t = torch.from_numpy(np.ascontiguousarray(slices)).to(device=device, dtype=dtype)[:, None]
        # F.pad's last-dimension-first order: (left, right, top, bottom) of the slice.
        return F.pad(t, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else t

    with torch.inference_mode():
        for start in range(0, n, step):
            stop = min(n, start + step)
            result = model(to_batch(s1[start:stop]), to_batch(s2[start:stop]))
            fused = fused_of(result)[:, 0, :h, :w]
            if clip:
                fused = fused.clamp(0.0, 1.0)
            out[start:stop] = fused.float().cpu().numpy()
    return np.ascontiguousarray(np.moveaxis(out, 0, axis))
