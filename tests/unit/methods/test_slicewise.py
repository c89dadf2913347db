"""lpmnet.methods.slicewise.fuse_slicewise: a 2D fusion network applied slice by slice to a volume pair."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import one_thread
from lpmnet.methods.mambadfuse import MambaDFuse
from lpmnet.methods.slicewise import fuse_slicewise

SHAPE = (6, 9, 11)  # (D, H, W): different sizes, so that a wrong axis shows


class ConvFuse(nn.Module):
    """A tiny deterministic 2D fusion network: one 3x3 convolution of the stacked pair.

    Its output leaves [0, 1] (weights of both signs, a bias), so that clipping is visible; it records
    the input shapes it is called with.
    """

    def __init__(self, wrap=False):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 3, padding=1)
        with torch.no_grad():
            weight = torch.linspace(-1.0, 2.0, self.conv.weight.numel(), dtype=torch.float64)
            self.conv.weight.copy_(weight.view_as(self.conv.weight))
            self.conv.bias.fill_(-0.3)
        self.wrap = wrap
        self.seen = []

    def forward(self, a, b):
        self.seen.append(tuple(a.shape))
        fused = self.conv(torch.cat([a, b], dim=1))
        return SimpleNamespace(fused=fused, base=None) if self.wrap else fused


def model64(**kwargs):
    return ConvFuse(**kwargs).double().eval()


def volumes(shape=SHAPE, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random(shape), rng.random(shape)


def per_slice_loop(model, x1, x2, axis, multiple=1, clip=True):
    """The plain definition: every slice alone through the model, replicate-padded, cropped, stacked."""
    out = []
    for i in range(x1.shape[axis]):
        a, b = (torch.from_numpy(np.take(x, i, axis=axis).copy())[None, None] for x in (x1, x2))
        h, w = a.shape[-2:]
        pad = (0, -w % multiple, 0, -h % multiple)
        with torch.no_grad():
            fused = model(F.pad(a, pad, mode="replicate"), F.pad(b, pad, mode="replicate"))
        fused = getattr(fused, "fused", fused)[0, 0, :h, :w]
        out.append((fused.clamp(0, 1) if clip else fused).float().numpy())
    return np.stack(out, axis=axis)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_equals_a_per_slice_loop_along_each_axis(axis):
    x1, x2 = volumes()
    model = model64()
    with one_thread():
        fused = fuse_slicewise(model, x1, x2, axis=axis, batch_size=4, dtype=torch.float64)
        expected = per_slice_loop(model, x1, x2, axis)
    assert fused.shape == SHAPE and fused.dtype == np.float32
    np.testing.assert_array_equal(fused, expected)


def test_clip_is_optional_and_the_raw_output_leaves_the_unit_interval():
    x1, x2 = volumes()
    model = model64()
    with one_thread():
        raw = fuse_slicewise(model, x1, x2, clip=False, dtype=torch.float64)
        clipped = fuse_slicewise(model, x1, x2, dtype=torch.float64)
    assert raw.min() < 0 and raw.max() > 1  # else the test would not show clipping
    np.testing.assert_array_equal(clipped, np.clip(raw, 0, 1))
    np.testing.assert_array_equal(raw, per_slice_loop(model, x1, x2, 0, clip=False))


def test_batch_size_and_voxel_bound_do_not_change_the_result():
    x1, x2 = volumes()
    model = model64()
    with one_thread():
        one = fuse_slicewise(model, x1, x2, batch_size=1, dtype=torch.float64)
        model.seen.clear()
        five = fuse_slicewise(model, x1, x2, batch_size=5, dtype=torch.float64)
        assert [s[0] for s in model.seen] == [5, 1]  # D = 6 slices: a full batch and the rest
        model.seen.clear()
        # 9 x 11 = 99 pixels per slice: a bound of 250 allows 2 slices per call.
        bounded = fuse_slicewise(model, x1, x2, batch_size=5, max_batch_voxels=250, dtype=torch.float64)
        assert [s[0] for s in model.seen] == [2, 2, 2]
        model.seen.clear()
        # A bound below one slice still runs, one slice at a time.
        tiny = fuse_slicewise(model, x1, x2, batch_size=5, max_batch_voxels=10, dtype=torch.float64)
        assert [s[0] for s in model.seen] == [1] * 6
    np.testing.assert_array_equal(one, five)
    np.testing.assert_array_equal(one, bounded)
    np.testing.assert_array_equal(one, tiny)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_odd_slices_are_padded_to_the_multiple_and_cropped_back(axis):
    shape = (5, 13, 7)
    x1, x2 = volumes(shape, seed=1)
    model = model64()
    with one_thread():
        fused = fuse_slicewise(model, x1, x2, axis=axis, batch_size=3, multiple=8, dtype=torch.float64)
    in_plane = [s for d, s in enumerate(shape) if d != axis]
    padded = tuple(-(-s // 8) * 8 for s in in_plane)
    assert {s[-2:] for s in model.seen} == {padded}
    assert fused.shape == shape
    with one_thread():
        np.testing.assert_array_equal(fused, per_slice_loop(model, x1, x2, axis, multiple=8))


def test_padding_replicates_the_edges():
    """The padded band repeats the last row/column: an identity-like model sees no step there."""
    x1, _ = volumes((1, 5, 6), seed=2)
    seen = []

    def first_input(a, b):
        seen.append(a)
        return a

    out = fuse_slicewise(first_input, x1, x1, multiple=8, dtype=torch.float64, clip=False)
    padded = seen[0][0, 0].numpy()
    assert padded.shape == (8, 8)
    np.testing.assert_array_equal(padded[:5, :6], x1[0])
    np.testing.assert_array_equal(padded[5:, :6], np.broadcast_to(x1[0, -1], (3, 6)))
    np.testing.assert_array_equal(padded[:, 6:], np.broadcast_to(padded[:, 5:6], (8, 2)))
    np.testing.assert_array_equal(out, x1.astype(np.float32))


def test_objects_with_a_fused_attribute_are_accepted():
    x1, x2 = volumes()
    with one_thread():
        plain = fuse_slicewise(model64(), x1, x2, axis=1, dtype=torch.float64)
        wrapped = fuse_slicewise(model64(wrap=True), x1, x2, axis=1, dtype=torch.float64)
    np.testing.assert_array_equal(plain, wrapped)


def test_refuses_bad_arguments_and_a_training_model():
    x1, x2 = volumes()
    model = model64()
    with pytest.raises(ValueError, match="one shape"):
        fuse_slicewise(model, x1, x2[:-1])
    with pytest.raises(ValueError, match="axis"):
        fuse_slicewise(model, x1, x2, axis=3)
    with pytest.raises(ValueError, match="batch_size"):
        fuse_slicewise(model, x1, x2, batch_size=0)
    with pytest.raises(RuntimeError, match="eval mode"):
        fuse_slicewise(model.train(), x1, x2)


def test_mambadfuse_slicewise_on_a_tiny_volume():
    torch.manual_seed(0)
    model = MambaDFuse(embed_dim=8, scan_backend="torch").eval()
    x1, x2 = volumes((3, 6, 5), seed=3)
    with one_thread():
        fused = fuse_slicewise(model, x1, x2, axis=2, batch_size=2, clip=False)
        with torch.no_grad():
            a, b = (torch.from_numpy(np.moveaxis(x, 2, 0).astype(np.float32))[:, None] for x in (x1, x2))
            expected = np.moveaxis(model(a, b)[:, 0].numpy(), 0, 2)
    assert fused.shape == (3, 6, 5) and np.isfinite(fused).all()
    # Batches of 2 and 3 slices: the network's samples are independent up to float32 round-off.
    np.testing.assert_allclose(fused, expected, rtol=0, atol=1e-5)
