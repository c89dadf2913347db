"""LPM-Net (Wen & Zhang, Information Fusion 123:103306, 2025), written from the project's specification.

Data flow of :class:`LPMNet` for two co-registered volumes x1, x2 of shape (B, 1, D, H, W) in [0, 1]:

1. ``Conv_in``: Conv3d(2 -> base_c) on cat(x1, x2).
2. Axis decomposition: the features are viewed as three batches of 2D slices, H x W (P1), D x W (P2)
   and D x H (P3). Each view has its own dense 2D conv module and windowed Mamba module.
3. The three views are merged voxel-wise (max, mean or min).
4. A CfC-style gated head predicts the fused volume plus its "base" and "detail" components.
5. Training only: both inputs are masked with random 8^3 blocks, go through the same feature
   extractor and a second head (``cfc_mask``) that reconstructs them (the original also ran this at
   inference, doubling its cost; here it never runs in eval mode).

Unlike the original, any D, H, W works: inputs are padded to multiples of 16 by edge replication
(``mode="replicate"``; reflection would fail for dimensions smaller than the padding) and the outputs
are cropped back, so the output has the input's shape.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lpmnet.errors import InputError
from lpmnet.methods.mamba import Mamba
from lpmnet.methods.lpmnet.layers import (
    fused_cfc_head,
    fused_cfc_head_usable,
    fused_window_mamba,
    fused_window_mamba_usable,
    merge_views,
)

WINDOW = 16
MASK_BLOCK = 8
#: Upper size of one temporary tensor of an inference pass on a CPU. glibc's malloc serves blocks up to
#: its dynamic mmap threshold (at most 32 MiB) from the heap and maps larger ones afresh for every
#: allocation, zero-filling them page by page: a whole-volume pass spent half its time on that.
_PASS_BYTES = 16 << 20


def _runs_in_passes(t):
    """Whether the network runs in memory-bounded passes: inference on a CPU. Training needs the whole
    graph anyway, and the GPU's caching allocator reuses its blocks."""
    return t.device.type == "cpu" and not torch.is_grad_enabled()


def _items_per_pass(bytes_per_item):
    return max(1, _PASS_BYTES // bytes_per_item)


class FusionOutput(NamedTuple):
    """What :meth:`LPMNet.forward` returns; tensors are (B, 1, D, H, W) in [0, 1].

    ``base``/``detail`` are None without the CfC head; ``reconstruction`` (B, 2, D, H, W) exists only in
    training mode, when the model has the reconstruction head.
    """

    fused: torch.Tensor
    base: torch.Tensor | None
    detail: torch.Tensor | None
    reconstruction: torch.Tensor | None


def _to_unit_interval(x):
    # tanh(x)/2 + 0.5 as in the original (equal to sigmoid(2x)).
    return torch.tanh(x) / 2 + 0.5


class DenseLayer(nn.Module):
    def __init__(self, in_channels, growth):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, growth, kernel_size=3, padding=1)

    def forward(self, x):
        # New features go in front of the old ones, as in the original dense module.
        return torch.cat([F.leaky_relu(self.conv(x), 0.01), x], dim=1)


class DenseConv2d(nn.Module):
    """depth layers of Conv2d(3x3) + LeakyReLU(0.01); output channels = base_c * (depth + 1)."""

    def __init__(self, base_c, depth):
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(base_c * (i + 1), base_c) for i in range(depth))

    def forward(self, x):
        # Channels-last slices: oneDNN's 3x3 convolutions at these widths (8-24 channels) run about twice
        # as fast in that layout on a CPU, and the windowed Mamba layers that follow read it without a
        # transposing copy.
        if x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        for layer in self.layers:
            x = layer(x)
        return x


class _Reorder(torch.autograd.Function):
    """``x.index_select(1, order)`` for a permutation ``order``, whose gradient is the gather by the
    inverse permutation (autograd's own would scatter-add into zeros)."""

    @staticmethod
    def forward(ctx, x, order, inverse):
        ctx.save_for_backward(inverse)
        return x.index_select(1, order)

    @staticmethod
    def backward(ctx, grad):
        (inverse,) = ctx.saved_tensors
        return grad.index_select(1, inverse), None, None


@lru_cache(maxsize=64)
def _window_order(h, w, window, shift, device):
    """(order, inverse): the pixels of an h x w slice rolled by -shift along both axes and cut into
    window x window tiles, as flat indices (window after window, row-major inside each), and the
    inverse permutation."""
    index = torch.arange(h * w).view(h, w)
    if shift:
        index = torch.roll(index, shifts=(-shift, -shift), dims=(0, 1))
    order = index.view(h // window, window, w // window, window).permute(0, 2, 1, 3).reshape(-1)
    return order.to(device), torch.argsort(order).to(device)


class WindowMambaLayer(nn.Module):
    """LayerNorm + Mamba over 16x16 windows of a channels-last slice batch, Swin-style shift.

    There is no residual connection: the Mamba output replaces the features, as in the original.
    """

    def __init__(self, dim, shifted, d_state, d_conv, expand, window=WINDOW, scan_backend="auto"):
        super().__init__()
        self.window = window
        self.shift = window // 2 if shifted else 0
        self.norm = nn.LayerNorm(dim)
        self.mamba = Mamba(dim, d_state=d_state, d_conv=d_conv, expand=expand, scan_backend=scan_backend)

    def fused_params(self):
        """The tensors of :func:`lpmnet.methods.lpmnet.layers.fused_window_mamba`, in its order."""
        m = self.mamba
        return (self.norm.weight, self.norm.bias, m.in_proj.weight, m.in_proj.bias,
                m.conv1d.weight.squeeze(1), m.conv1d.bias, m.x_proj.weight, m.dt_proj.weight, m.dt_proj.bias,
                -torch.exp(m.A_log), m.D, m.out_proj.weight, m.out_proj.bias)

    def forward(self, x, channels_first_out=False):
        """x: (N, H, W, C) with H, W multiples of the window, any strides -> same shape; stored as
        (N, C, H, W) when ``channels_first_out`` and the fused CPU kernel runs."""
        n, h, w, c = x.shape
        ws = self.window
        # The roll by the shift and the cut into windows (and back) are one gather each: torch.roll
        # concatenates twice per axis, which cost more than the layer's projections.
        order, inverse = _window_order(h, w, ws, self.shift, x.device)
        params = self.fused_params()
        if fused_window_mamba_usable(x, params, self.mamba.scan_backend):
            out = fused_window_mamba(x.reshape(n, h * w, c), order, ws * ws, self.norm.eps, params,
                                     channels_first_out)
            return out.view(n, h, w, c)
        windows = _Reorder.apply(x.reshape(n, h * w, c), order, inverse).view(-1, ws * ws, c)
        windows = self.mamba(self.norm(windows))
        return _Reorder.apply(windows.reshape(n, h * w, c), inverse, order).view(n, h, w, c)


class WindowMamba(nn.Module):
    def __init__(self, dim, depth, d_state, d_conv, expand, scan_backend="auto"):
        super().__init__()
        self.layers = nn.ModuleList(
            WindowMambaLayer(dim, j % 2 == 1, d_state, d_conv, expand, scan_backend=scan_backend)
            for j in range(depth)
        )

    def forward(self, x):
        """x: (N, C, H, W) -> (N, C, H, W)."""
        x = x.permute(0, 2, 3, 1)
        for number, layer in enumerate(self.layers):
            x = layer(x, channels_first_out=number == len(self.layers) - 1)
        return x.permute(0, 3, 1, 2)


class CfCHead(nn.Module):
    """Closed-form-continuous-time style gate: out = ff1*(1-t) + t*ff2, t = sigmoid(time_a + time_b).

    The shared ``fc`` maps the gated mix, ff1 ("base") and ff2 ("detail") to the output channels.
    """

    def __init__(self, dim, out_channels):
        super().__init__()
        self.ff1 = nn.Conv3d(dim, dim, 1, bias=False)
        self.ff2 = nn.Conv3d(dim, dim, 1, bias=False)
        self.time_a = nn.Conv3d(dim, dim, 1, bias=False)
        self.time_b = nn.Conv3d(dim, dim, 1, bias=False)
        self.fc = nn.Conv3d(dim, out_channels, 1, bias=True)

    def forward(self, h, with_components=True):
        """h: (B, dim, D, H, W) -> (mixed, base, detail), each (B, out_channels, D, H, W); base and
        detail are None unless ``with_components``."""
        b, c, *spatial = h.shape
        flat = h.reshape(b, c, -1)
        weights = self._projection_weights()
        fc_weight = self.fc.weight.flatten(1)
        if fused_cfc_head_usable(flat, (weights, fc_weight)):
            outputs = [t.view(b, -1, *spatial)
                       for t in fused_cfc_head(flat, weights, fc_weight, self.fc.bias, with_components)]
            return tuple(outputs) if with_components else (outputs[0], None, None)
        if not _runs_in_passes(h):
            return tuple(None if t is None else t.reshape(b, -1, *spatial)
                         for t in self._project(flat, with_components))
        # Inference on a CPU: the head runs over runs of voxels into preallocated outputs, so that its
        # five temporaries of 4 x dim channels stay below _PASS_BYTES.
        outputs = [flat.new_empty(b, self.fc.out_channels, flat.shape[-1]) for _ in range(3 if with_components else 1)]
        step = _items_per_pass(4 * c * b * h.element_size())
        for start in range(0, flat.shape[-1], step):
            for out, part in zip(outputs, self._project(flat[..., start:start + step], with_components)):
                out[..., start:start + step] = part
        outputs = [out.view(b, -1, *spatial) for out in outputs]
        return tuple(outputs) if with_components else (outputs[0], None, None)

    def _projection_weights(self):
        """The four 1x1x1 projections as one (4 dim, dim) matrix: ff1, ff2, time_a, time_b."""
        return torch.cat([self.ff1.weight, self.ff2.weight, self.time_a.weight, self.time_b.weight]).flatten(1)

    def _project(self, flat, with_components):
        # The 1x1x1 convolutions are channel matmuls; doing the four projections as one matmul over the
        # flattened volume reads h once and is about 3x faster on CPUs than four Conv3d calls.
        ff1, ff2, time_a, time_b = torch.matmul(self._projection_weights(), flat).chunk(4, dim=1)
        t = torch.sigmoid(time_a + time_b)
        fc_weight, fc_bias = self.fc.weight.flatten(1), self.fc.bias[:, None]

        def head(x):
            return _to_unit_interval(torch.matmul(fc_weight, x) + fc_bias)

        mixed = head(ff1 * (1 - t) + t * ff2)
        if not with_components:
            return mixed, None, None
        return mixed, head(ff1), head(ff2)


def random_block_mask(shape, drop_probability, block=MASK_BLOCK, device=None, generator=None):
    """Keep-mask (1 = kept) of ``shape`` (D, H, W) made of block^3 cubes, each dropped with probability p.

    One mask is shared by the whole batch, as in the original.
    """
    grid = [math.ceil(s / block) for s in shape]
    keep = (torch.rand(grid, device=device, generator=generator) > drop_probability).float()
    for axis in range(3):
        keep = keep.repeat_interleave(block, dim=axis)
    return keep[: shape[0], : shape[1], : shape[2]]


def conv3d_by_planes(x, conv):
    """``conv(x)`` for a stride-1 ``nn.Conv3d`` computed as one 2D convolution over the depth planes.

    The kernel's depth taps become input channels: plane d sees the conv's input planes d - p ... d + p
    stacked, so a (B, C, D, H, W) input is a batch of B*D images of kD*C channels. The sums are the
    same taps in another order. The output is a (B, O, D, H, W) view of (B, D, O, H, W) memory, the
    layout of the P1 view's slices.

    Why: PyTorch's CPU heuristic sends a conv3d whose B*C*D*H is at most 20480 (``Conv_in`` on every
    training patch up to 96^3) to its im2col kernel, and even its oneDNN conv3d has a slow weight
    gradient. Forward and backward of ``Conv_in`` at 64^3 take 47 ms as conv3d, 19 ms as oneDNN's
    conv3d, 11 ms this way. Without a gradient, oneDNN's conv3d of a whole volume is the faster one
    (34 against 53 ms at 96x160x160), so only training takes this form.
    """
    if conv.stride != (1, 1, 1) or conv.dilation != (1, 1, 1) or conv.groups != 1 or conv.padding_mode != "zeros":
        raise ValueError(f"conv3d_by_planes takes a plain stride-1 Conv3d, not {conv}")
    b, c, d, h, w = x.shape
    depth_taps, pad = conv.kernel_size[0], conv.padding[0]
    x = F.pad(x, (0, 0, 0, 0, pad, pad))
    planes = d + 2 * pad - depth_taps + 1
    # channel (tap, c) of plane i is x[:, c, i + tap]
    stacked = torch.cat([x[:, :, tap:tap + planes] for tap in range(depth_taps)], dim=1)
    stacked = stacked.transpose(1, 2).reshape(b * planes, depth_taps * c, h, w)
    weight = conv.weight.transpose(1, 2).reshape(conv.out_channels, depth_taps * c, *conv.kernel_size[1:])
    out = F.conv2d(stacked, weight, conv.bias, padding=conv.padding[1:])
    return out.reshape(b, planes, conv.out_channels, *out.shape[-2:]).transpose(1, 2)


class LPMNet(nn.Module):
    """LPM-Net fusion network. Constructor defaults are the paper's.

    Args:
        base_c: channels of ``Conv_in`` and growth of the dense modules.
        depth_c: dense layers per view; features have dim = base_c * (depth_c + 1) channels.
        depth_m: windowed Mamba layers per view (odd layers are shifted by half a window).
        iscfc: CfC gated head with base/detail outputs; False = a single 1x1x1 conv (``conv_out``).
        fuse_method: how the three views are merged voxel-wise: "max", "mean" or "min".
        rec: probability that an 8^3 block is dropped in the masked-reconstruction branch.
        reconstruction: build the reconstruction head ``cfc_mask`` (the original ``Ours_mask`` model).
        d_state, d_conv, expand: Mamba parameters.
        scan_backend: selective-scan backend, see :func:`lpmnet.ops.selective_scan.selective_scan`.
    """

    VIEWS = ("P1", "P2", "P3")
    #: The axis of (B, C, D, H, W) that a view cuts into slices: P1 = H x W slices along D, and so on.
    SLICE_AXIS = {"P1": 2, "P2": 3, "P3": 4}
    #: How the views are merged voxel-wise; each takes ``out=`` for the in-place merge of inference.
    MERGE = {"max": torch.maximum, "min": torch.minimum, "mean": torch.add}

    def __init__(
        self,
        base_c=8,
        depth_c=2,
        depth_m=2,
        iscfc=True,
        fuse_method="max",
        rec=0.2,
        reconstruction=True,
        d_state=8,
        d_conv=4,
        expand=1,
        scan_backend="auto",
    ):
        super().__init__()
        if fuse_method not in ("max", "mean", "min"):
            raise ValueError(f"fuse_method must be 'max', 'mean' or 'min', not {fuse_method!r}")
        if reconstruction and not iscfc:
            raise ValueError("the reconstruction head exists only with iscfc=True")
        self.config = dict(
            base_c=base_c, depth_c=depth_c, depth_m=depth_m, iscfc=iscfc, fuse_method=fuse_method,
            rec=rec, reconstruction=reconstruction, d_state=d_state, d_conv=d_conv, expand=expand,
        )
        self.fuse_method = fuse_method
        self.rec = rec
        dim = base_c * (depth_c + 1)
        self.dim = dim
        self.Conv_in = nn.Conv3d(2, base_c, kernel_size=3, padding=1)
        for view in self.VIEWS:
            setattr(self, f"Conv_{view}", DenseConv2d(base_c, depth_c))
            setattr(self, f"Mamba_{view}", WindowMamba(dim, depth_m, d_state, d_conv, expand, scan_backend))
        if iscfc:
            self.cfc = CfCHead(dim, 1)
        else:
            self.conv_out = nn.Conv3d(dim, 1, 1)
        self.cfc_mask = CfCHead(dim, 2) if reconstruction else None

    def set_scan_backend(self, backend):
        """Select the selective-scan backend of every Mamba layer ("auto", "cuda", "cpu", "torch")."""
        for module in self.modules():
            if isinstance(module, Mamba):
                module.scan_backend = backend

    def _view(self, feats, view):
        """Run one axis view: features (B, C, D, H, W) -> (B, dim, D, H, W)."""
        b, c, d, h, w = feats.shape
        # Slice axis first, then the two in-plane axes in their original order.
        order = (0, self.SLICE_AXIS[view], *(a for a in (1, 2, 3, 4) if a != self.SLICE_AXIS[view]))
        slices = feats.permute(*order)
        s, rows, cols = slices.shape[1], slices.shape[3], slices.shape[4]
        x = slices.reshape(b * s, c, rows, cols)
        x = getattr(self, f"Conv_{view}")(x)
        x = getattr(self, f"Mamba_{view}")(x)
        x = x.reshape(b, s, self.dim, rows, cols)
        inverse = [order.index(i) for i in range(5)]
        return x.permute(*inverse)

    def features(self, x1, x2):
        """Shared feature extractor: cat -> Conv_in -> three views -> voxel-wise merge."""
        x = torch.cat([x1, x2], dim=1)
        training_on_cpu = x.device.type == "cpu" and torch.is_grad_enabled()
        feats = conv3d_by_planes(x, self.Conv_in) if training_on_cpu else self.Conv_in(x)
        merge = self.MERGE[self.fuse_method]
        if _runs_in_passes(feats):
            merged = self._features_in_passes(feats, merge)
        elif self.fuse_method == "mean":
            merged = sum(self._view(feats, view) for view in self.VIEWS)
        else:
            merged = merge_views([self._view(feats, view) for view in self.VIEWS], self.fuse_method == "max")
        if self.fuse_method == "mean":
            merged = merged / len(self.VIEWS)
        return merged

    def _features_in_passes(self, feats, merge):
        """The views of inference on a CPU, a few slices at a time, merged into one preallocated volume.

        The slices of a view are independent (2D convolutions, Mamba windows inside a slice), so the
        result is the whole-view pass's. Only the merged volume and one pass's temporaries (below
        _PASS_BYTES each) are alive at once: about a tenth of a whole-view pass's memory, and glibc
        serves such blocks from its heap, where it maps and zero-fills every larger block afresh (what
        lpmnet.runtime.keep_freed_memory_for_reuse avoided for the jobs only).
        """
        b, _, *size = feats.shape
        merged = feats.new_empty(b, self.dim, *size)
        # channels per voxel of a pass's widest temporaries: the Mamba's x and z, alive together
        widest = max(self.dim, int(2 * self.config["expand"] * self.dim))
        # P3 first: its passes cover a few voxels of the contiguous W axis, which the merge writes with a
        # stride; a plain copy does that 5x faster than the read-modify-write of a maximum (the merge is
        # symmetric; "mean" differs from the whole-view order by rounding only).
        for number, view in enumerate(("P3", "P1", "P2")):
            axis = self.SLICE_AXIS[view]
            slice_voxels = math.prod(size) // size[axis - 2]
            step = _items_per_pass(b * slice_voxels * widest * feats.element_size())
            for start in range(0, size[axis - 2], step):
                count = min(step, size[axis - 2] - start)
                out = self._view(feats.narrow(axis, start, count), view)
                target = merged.narrow(axis, start, count)
                if number == 0:
                    target.copy_(out)
                else:
                    merge(target, out, out=target)
        return merged

    def forward(self, x1, x2):
        """x1, x2: (B, 1, D, H, W) in [0, 1], any D, H, W -> :class:`FusionOutput` of the same size."""
        if x1.shape != x2.shape or x1.dim() != 5 or x1.shape[1] != 1:
            raise ValueError(f"expected two (B, 1, D, H, W) tensors of one shape, got {tuple(x1.shape)} "
                             f"and {tuple(x2.shape)}")
        size = x1.shape[2:]
        pad = []
        for s in reversed(size):  # F.pad lists the last axis first
            pad += [0, (-s) % WINDOW]
        if any(pad):
            x1 = F.pad(x1, pad, mode="replicate")
            x2 = F.pad(x2, pad, mode="replicate")

        def crop(t):
            return None if t is None else t[..., : size[0], : size[1], : size[2]]

        h = self.features(x1, x2)
        if self.config["iscfc"]:
            fused, base, detail = self.cfc(h)
        else:
            fused, base, detail = _to_unit_interval(self.conv_out(h)), None, None
        del h
        reconstruction = None
        if self.training and self.cfc_mask is not None:
            padded = x1.shape[2:]
            m1 = random_block_mask(padded, self.rec, device=x1.device)
            m2 = random_block_mask(padded, self.rec, device=x1.device)
            h_masked = self.features(x1 * m1, x2 * m2)
            reconstruction, _, _ = self.cfc_mask(h_masked, with_components=False)
        return FusionOutput(crop(fused), crop(base), crop(detail), crop(reconstruction))


def _infer_config(state_dict):
    """Constructor arguments of a bare state dict saved by the original code, read off its shapes."""
    try:
        base_c = state_dict["Conv_in.weight"].shape[0]
        depth_c = len({k.split(".")[2] for k in state_dict if k.startswith("Conv_P1.layers.")})
        depth_m = len({k.split(".")[2] for k in state_dict if k.startswith("Mamba_P1.layers.")})
        a_log = state_dict["Mamba_P1.layers.0.mamba.A_log"]
        dim = a_log.shape[0]
        return dict(
            base_c=base_c,
            depth_c=depth_c,
            depth_m=depth_m,
            iscfc="cfc.ff1.weight" in state_dict,
            reconstruction="cfc_mask.ff1.weight" in state_dict,
            d_state=a_log.shape[1],
            d_conv=state_dict["Mamba_P1.layers.0.mamba.conv1d.weight"].shape[-1],
            expand=state_dict["Mamba_P1.layers.0.mamba.in_proj.weight"].shape[0] // 2 // dim,
        )
    except (KeyError, IndexError) as err:
        raise ValueError(f"not an LPM-Net state dict (missing {err})") from None


def load_checkpoint(path, map_location="cpu", **overrides):
    """Build an :class:`LPMNet` from a checkpoint (project format or original bare state dict).

    The LPM-Net reader on top of the methods' one checkpoint API (:mod:`lpmnet.methods`): a project
    checkpoint (:func:`lpmnet.methods.save_checkpoint`, method "lpmnet"; another method's raises
    InputError) is read with its constructor arguments; an original code's state dict (bare or wrapped
    in {"model": ...} or {"state_dict": ...}, :func:`lpmnet.methods.original_state_dict`) with those
    read off its shapes. ``overrides`` replace constructor arguments that a bare state dict cannot tell
    (e.g. fuse_method). The weights are loaded strictly. Returns (model in eval mode, model card dict).
    """
    from lpmnet.methods import original_state_dict, read_checkpoint

    payload, is_project = read_checkpoint(path, "lpmnet", map_location)
    if is_project:
        kwargs, state_dict, card = payload["model_kwargs"], payload["state_dict"], payload.get("model_card", {})
    else:
        state_dict = original_state_dict(path, payload, "LPM-Net")
        try:
            kwargs = _infer_config(state_dict)
        except ValueError as err:
            raise InputError(path, str(err)) from None
        card = {"source": "original state dict"}
    kwargs = {**kwargs, **overrides}
    model = LPMNet(**kwargs)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0] if str(err) else "state dict does not match"
        raise InputError(path, f"weights do not fit LPM-Net{json.dumps(kwargs)}: {first}") from None
    model.eval()
    return model, card
