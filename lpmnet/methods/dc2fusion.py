"""DC2Fusion (Liu et al., "Three-dimensional medical image fusion with deformable cross-attention",
ICONIP 2023), re-implemented from the project's reading of the authors' code (louelin/DC2Fsuion
@233b5c27, ``models/DC2Fusion.py: DC2Fusion``).

Both volumes go through one weight-shared Swin-UNet-like network whose blocks are "cross" blocks:
each stream is updated with the other one as its partner (``x <- blk(x, a)``, then ``a <- blk(a, x)``).

1. Patch embedding: Conv3d(k=4, s=4) of each input to ``embed_dim`` channels.
2. Encoder stages of width ``embed_dim * 2**i`` (``depths`` blocks each); after every stage but the
   last a 2x2x2 stride-2 convolution + LayerNorm halves the grid (an odd grid side is zero-padded
   first). The outputs before downsampling are the skips. A LayerNorm follows the last stage.
3. Decoder stages of the same widths in reverse; the first runs on the bottleneck, every later one
   resizes its input to the skip's grid if needed (trilinear), concatenates the skip and projects
   back with ``concat_back_dim[i]``. Every decoder stage but the last ends with a 2x2x2
   transposed convolution + LayerNorm.
4. Head: both streams concatenated, LayerNorm, ConvTranspose3d(k=4, s=4) back to voxels, Conv3d(3^3)
   to two channels f1, f2, combined by ``fusion_strategy`` into the single output channel.

A cross block (query stream x, partner a; channels-last tensors, grid padded to whole windows of
``window_size`` tokens) computes: offsets from [LN(x), a] -> the partner sampled at the offset
positions (trilinear ``grid_sample``: the "deformable" part) -> a CNN branch (grouped 7^3 conv of
[LN(x), sampled], BatchNorm, GELU) that also yields a channel gate on V -> attention inside each
window with Q and V from LN(x) and K from the sampled partner -> a spatial gate from the attention
output on the CNN branch -> Linear(2C -> C) of [CNN, LN(attention)], residual; then a residual MLP
on LN(x) (``norm1`` is used again; the original has no ``norm2``).

``variant="faithful"`` (default) is the original's eval-mode function, quirks included, so that the
authors' weights give the authors' outputs (checked against golden outputs of their code in the
tests). The quirks, from ``docs/baselines.md`` 1.6:

- the sampled partner features (channels-first from ``grid_sample``) are ``reshape``d, not
  permuted, to channels-last, so keys and the CNN branch see a voxel/channel-shuffled partner;
- the block's BatchNorm was declared ``LazyBatchNorm3d(dim)``, whose first argument is ``eps``:
  eps equals the channel count (built here as an ordinary ``BatchNorm3d(dim, eps=dim)``);
- the attention has no softmax (``(q k^T) v``), V comes from the query stream;
- the reference grid of the sampling uses voxel centres ``(i + 0.5) / N`` with
  ``align_corners=True`` and divides the z, y, x centres by H, W, D instead of D, H, W;
- "L1NW" weighs f1 and f2 by their L1 norms summed over the whole tensor, batch included, so the
  output scale grows with the volume size and samples of a batch are coupled.

``variant="fixed"`` is this project's correction of those bugs, not the paper's method and not
trained by the authors: the sampled partner is permuted to channels-last, BatchNorm eps is 1e-5,
the attention is softmax attention, the reference grid is the voxel centres of each axis with
``align_corners=False`` (so zero offsets sample the partner exactly at the query voxel), and the
L1-norm weights are per sample and normalised to sum to one (each in [0, 1]; "L1NW", "AL1NW" and
"FL1N" then coincide). Both variants have the same parameters and load the same state dict.

State-dict names and shapes are the original's, including parameters that never influence the
output but are needed for a strict load: every ``cross_attn.proj`` (the original computes a
softmax + projection result and discards it) and ``swin.concat_back_dim.0`` (the first decoder
stage has no skip).

Unlike the original (which needs sides divisible by the patch size 4 and returns a padded volume
otherwise), any D, H, W work: the inputs are padded at the far end of each axis to a multiple of 4 by
edge replication (``mode="replicate"``: continuing the border values adds no artificial edge for the
7^3 convolutions and the attention to respond to, and it works for sides smaller than the padding,
unlike reflection), and the two output channels are cropped back before the fusion rule, so the L1
weights see only real voxels. Inputs with sides divisible by 4 are not padded, so for them the output
is the original's. Grid sides that are not multiples of 8 (e.g. 16x32x24 -> tokens 4x8x6 -> 2x4x3)
are handled inside as in the original (window padding, merge padding, decoder resize).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lpmnet.methods import FusionMethod, load_original_state_dict
from lpmnet.methods.blocks import ChannelsLastMlp, StochasticDepth
from lpmnet.volumes.normalize import minmax01

PATCH_SIZE = 4
VARIANTS = ("faithful", "fixed")
FUSION_STRATEGIES = ("L1NW", "AL1NW", "FL1N", "FER", "addition", "average")


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over the channels of a (B, C, D, H, W) tensor (the original's ``LayerNormProxy``).

    The LayerNorm lives in ``.norm`` because the original's state-dict names (``...1.norm.weight``)
    go through that attribute.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The permutes are free views; on channels_last_3d tensors (how the blocks feed them) the
        # normalised dimension is the contiguous one.
        return self.norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)


class PointwiseConv3d(nn.Conv3d):
    """1x1x1 Conv3d computed as a Linear over the channels of the channels-last view.

    The same function and parameters as ``nn.Conv3d(in, out, 1)``; PyTorch's CPU convolution sends
    most of these to its im2col path, which copies its input, while the blocks' tensors are already
    channels-last in memory, so the Linear needs no copy.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x.permute(0, 2, 3, 4, 1), self.weight.flatten(1), self.bias)
        return y.permute(0, 4, 1, 2, 3)


class PairGroupedConv3d(nn.Conv3d):
    """Conv3d with ``groups = out_channels = in_channels / 2`` (two inputs per output channel).

    Computed as a depthwise convolution of every input channel followed by summing each group's
    two results: the same function, but PyTorch's CPU grouped 3-D convolution with two channels per
    group is an order of magnitude slower than its depthwise one (measured: 7^3 kernel, 96 groups,
    32^3 grid, 2 threads). Same parameters and names as the ``nn.Conv3d`` it replaces.
    """

    def __init__(self, in_channels: int, kernel_size: int):
        super().__init__(in_channels, in_channels // 2, kernel_size, padding=kernel_size // 2,
                         groups=in_channels // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        depthwise = F.conv3d(x, self.weight.reshape(self.in_channels, 1, *self.kernel_size),
                             None, padding=self.padding, groups=self.in_channels)
        b, _, d, h, w = depthwise.shape
        # Group g of the original owns input channels 2g and 2g + 1, i.e. depthwise outputs 2g, 2g + 1.
        paired = depthwise.permute(0, 2, 3, 4, 1).reshape(b, d, h, w, self.out_channels, 2).sum(-1)
        return (paired + self.bias).permute(0, 4, 1, 2, 3)


def sample_partner(partner: torch.Tensor, offsets: torch.Tensor, faithful: bool) -> torch.Tensor:
    """Sample the partner (B, C, D, H, W) at reference grid + offsets; returns channels-last (B, D, H, W, C).

    ``offsets`` (B, 3, D, H, W) are raw network outputs for the D, H, W axes; ``tanh`` bounds them to
    +-2/N in normalised coordinates (+-1 voxel for the corrected grid). See the module docstring for
    the faithful grid and the faithful reshape.
    """
    b, c, d, h, w = partner.shape
    opts = {"dtype": partner.dtype, "device": partner.device}
    # linspace as in the original, so that the faithful grid is the original's to the last bit.
    centres = [torch.linspace(0.5, n - 0.5, n, **opts) for n in (d, h, w)]
    normalisers = (h, w, d) if faithful else (d, h, w)
    cz, cy, cx = (centre / n * 2 - 1 for centre, n in zip(centres, normalisers))
    gz, gy, gx = torch.meshgrid(cz, cy, cx, indexing="ij")
    reference = torch.stack((gx, gy, gz), dim=-1)  # grid_sample wants (x, y, z) = (W, H, D) order
    scale = torch.tensor([2.0 / d, 2.0 / h, 2.0 / w], **opts).view(1, 3, 1, 1, 1)
    shift = (offsets.tanh() * scale).flip(1).permute(0, 2, 3, 4, 1)
    sampled = F.grid_sample(partner, reference + shift, mode="bilinear", padding_mode="zeros",
                            align_corners=faithful)
    if faithful:
        return sampled.reshape(b, d, h, w, c)
    return sampled.permute(0, 2, 3, 4, 1)


class CrossWindowAttention3D(nn.Module):
    """Window attention of a query stream over a partner stream (Q, V from the query, K from the partner).

    ``proj`` exists only because the original has it (it projects a softmax result that the
    original discards); it never influences the output.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, partner: torch.Tensor, window: tuple[int, int, int],
                v_gate: torch.Tensor, softmax: bool) -> torch.Tensor:
        """x, partner: channels-last (B, D, H, W, C) with sides divisible by ``window``; v_gate (B, C)
        multiplies V. Returns the attention output on the same grid."""
        b, d, h, w, c = x.shape
        wd, wh, ww = window
        heads, width = self.num_heads, c // self.num_heads
        blocked = (b, d // wd, wd, h // wh, wh, w // ww, ww, heads, width)

        def per_window_and_head(t: torch.Tensor) -> torch.Tensor:
            # Q, K, V are per token, so they are projected on the grid and split into windows and
            # heads in one copy: (B * windows * heads, tokens per window, head width).
            return t.view(blocked).permute(0, 1, 3, 5, 7, 2, 4, 6, 8).reshape(-1, wd * wh * ww, width)

        q = per_window_and_head(self.q(x) * self.scale)
        k = per_window_and_head(self.k(partner))
        v = per_window_and_head(self.v(x) * v_gate[:, None, None, None, :])
        attn = q @ k.transpose(1, 2)
        if softmax:
            attn = attn.softmax(dim=-1)
        out = (attn @ v).view(b, d // wd, h // wh, w // ww, heads, wd, wh, ww, width)
        return out.permute(0, 1, 5, 2, 6, 3, 7, 4, 8).reshape(b, d, h, w, c)


class CrossTransformerBlock3D(nn.Module):
    """One cross block; ``forward(x, partner)`` on channels-last (B, D, H, W, C) tensors."""

    def __init__(self, dim: int, num_heads: int, window_size: tuple[int, int, int], mlp_ratio: float,
                 qkv_bias: bool, drop_path: float, faithful: bool):
        super().__init__()
        self.window_size = tuple(window_size)
        self.faithful = faithful
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = CrossWindowAttention3D(dim, num_heads, qkv_bias)
        self.conv_offset = nn.Sequential(
            nn.Conv3d(2 * dim, 2 * dim, 3, padding=1, groups=2 * dim),
            ChannelsFirstLayerNorm(2 * dim),
            nn.GELU(),
            PointwiseConv3d(2 * dim, 3, bias=False),
        )
        self.proj_q = PointwiseConv3d(2 * dim, 2 * dim)
        self.drop_path = StochasticDepth(drop_path)
        self.mlp = ChannelsLastMlp(dim, int(dim * mlp_ratio))
        self.projection = PointwiseConv3d(dim, dim)
        self.dwconv3x3 = nn.Sequential(  # the original's name; the kernel is 7^3
            PairGroupedConv3d(2 * dim, 7),
            nn.BatchNorm3d(dim, eps=float(dim) if faithful else 1e-5),
            nn.GELU(),
        )
        self.channel_interaction = nn.Sequential(
            nn.AdaptiveAvgPool3d(1),
            PointwiseConv3d(dim, dim // 8),
            ChannelsFirstLayerNorm(dim // 8),
            nn.GELU(),
            PointwiseConv3d(dim // 8, dim),
        )
        self.spatial_interaction = nn.Sequential(
            PointwiseConv3d(dim, dim // 8),
            ChannelsFirstLayerNorm(dim // 8),
            nn.GELU(),
            PointwiseConv3d(dim // 8, 1),
        )
        self.proj = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self._cross(x, partner))
        return x + self.drop_path(self.mlp(self.norm1(x)))

    def _cross(self, x: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
        b, d, h, w, c = x.shape
        # A grid side smaller than the window shrinks the window (no padding up to a full window).
        window = tuple(min(side, size) for side, size in zip((d, h, w), self.window_size))
        pad = [(-side) % size for side, size in zip((d, h, w), window)]
        query = self.norm1(x)  # the partner is used un-normalised, as in the original
        if any(pad):
            spec = (0, 0, 0, pad[2], 0, pad[1], 0, pad[0])
            query, partner = F.pad(query, spec), F.pad(partner, spec)

        # Channels-first views of channels-last tensors are channels_last_3d for the convolutions:
        # no copies, and PyTorch's CPU 3-D convolutions are several times faster in that layout.
        offsets = self.conv_offset(self.proj_q(torch.cat([query, partner], -1).permute(0, 4, 1, 2, 3)))
        sampled = sample_partner(partner.permute(0, 4, 1, 2, 3), offsets, self.faithful)

        cnn = self.dwconv3x3(torch.cat([query, sampled], -1).permute(0, 4, 1, 2, 3))
        v_gate = torch.sigmoid(self.channel_interaction(cnn)).flatten(1)
        cnn = self.projection(cnn)

        attn = self.cross_attn(query, sampled, window, v_gate, softmax=not self.faithful)
        spatial_gate = torch.sigmoid(self.spatial_interaction(attn.permute(0, 4, 1, 2, 3)))
        cnn = (spatial_gate * cnn).permute(0, 2, 3, 4, 1)
        # The original merges in window layout; the merge is per token, so the grid layout gives the same.
        out = self.proj(torch.cat([cnn, self.norm1(attn)], -1))
        return out[:, :d, :h, :w]


class PatchEmbed3D(nn.Module):
    """Conv3d(k=4, s=4) of a (B, C_in, D, H, W) volume with sides divisible by 4 -> channels-last tokens."""

    def __init__(self, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv3d(in_chans, embed_dim, PATCH_SIZE, stride=PATCH_SIZE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 4, 1)


class PatchMerging(nn.Module):
    """2x2x2 stride-2 convolution to twice the channels, then LayerNorm (channels-last in and out)."""

    def __init__(self, dim: int):
        super().__init__()
        self.down_conv = nn.Conv3d(dim, 2 * dim, 2, stride=2)
        self.norm = nn.LayerNorm(2 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, d, h, w, _ = x.shape
        if d % 2 or h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2, 0, d % 2))
        return self.norm(self.down_conv(x.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1))


class PatchExpand(nn.Module):
    """2x2x2 stride-2 transposed convolution to half the channels, then LayerNorm (channels-last)."""

    def __init__(self, dim: int):
        super().__init__()
        self.up_conv = nn.ConvTranspose3d(dim, dim // 2, 2, stride=2)
        self.norm = nn.LayerNorm(dim // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.up_conv(x.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1))


class CrossStage(nn.Module):
    """``depth`` cross blocks applied alternately to both streams, then an optional resampling.

    The resampling module sits in ``downsample`` for encoder and decoder stages alike, because the
    original's state-dict names (``up_layers.<i>.downsample.up_conv``) say so.
    """

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: tuple[int, int, int],
                 mlp_ratio: float, qkv_bias: bool, drop_paths: list[float], faithful: bool,
                 resample: type[nn.Module] | None):
        super().__init__()
        self.blocks = nn.ModuleList(
            CrossTransformerBlock3D(dim, num_heads, window_size, mlp_ratio, qkv_bias, drop_paths[i], faithful)
            for i in range(depth))
        self.downsample = resample(dim) if resample is not None else None

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the stage's outputs (before resampling); see :meth:`resample`."""
        for block in self.blocks:
            x = block(x, a)
            a = block(a, x)  # the partner already sees the updated x
        return x, a

    def resample(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.downsample is None else self.downsample(x)


class FusionModel(nn.Module):
    """The weight-shared two-stream U-Net (the original's ``FusionModel``): (B, n_channels, D, H, W)
    pair with sides divisible by 4 -> (B, embed_dim // 2, D, H, W) features."""

    def __init__(self, in_chans: int, embed_dim: int, depths: tuple[int, ...], num_heads: tuple[int, ...],
                 window_size: tuple[int, int, int], mlp_ratio: float, qkv_bias: bool, drop_path_rate: float,
                 faithful: bool):
        super().__init__()
        self.patch_embed = PatchEmbed3D(in_chans, embed_dim)
        stages = len(depths)
        # The original's float32 linspace values; on the CPU whatever the default device (e.g. "meta").
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        stage_rates = [rates[sum(depths[:i]):sum(depths[:i + 1])] for i in range(stages)]

        def stage(i: int, resample: type[nn.Module] | None) -> CrossStage:
            return CrossStage(embed_dim * 2 ** i, depths[i], num_heads[i], window_size, mlp_ratio, qkv_bias,
                              stage_rates[i], faithful, resample)

        self.layers = nn.ModuleList(stage(i, PatchMerging if i < stages - 1 else None) for i in range(stages))
        # Decoder stage k works at encoder stage i = stages - 1 - k (same widths, depths and heads).
        self.up_layers = nn.ModuleList(stage(i, PatchExpand if i > 0 else None) for i in reversed(range(stages)))
        self.concat_back_dim = nn.ModuleList(
            nn.Linear(2 * embed_dim * 2 ** i, embed_dim * 2 ** i) for i in reversed(range(stages)))
        self.norm = nn.LayerNorm(embed_dim * 2 ** (stages - 1))
        self.norm2 = nn.LayerNorm(2 * embed_dim)
        self.reverse_patch_embedding = nn.ConvTranspose3d(2 * embed_dim, embed_dim // 2, PATCH_SIZE, stride=PATCH_SIZE)

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        x, a = self.patch_embed(x), self.patch_embed(a)
        skips = []
        for layer in self.layers:
            x, a = layer(x, a)
            skips.append((x, a))
            x, a = layer.resample(x), layer.resample(a)
        x, a = self.norm(x), self.norm(a)

        for k, layer in enumerate(self.up_layers):
            if k > 0:
                # concat_back_dim[0] is never used: the bottleneck stage has no skip to concatenate.
                skip_x, skip_a = skips[len(skips) - 1 - k]
                x, a = (self.concat_back_dim[k](torch.cat([_resize_to(v, skip), skip], -1))
                        for v, skip in ((x, skip_x), (a, skip_a)))
            x, a = layer(x, a)
            x, a = layer.resample(x), layer.resample(a)

        features = self.norm2(torch.cat([x, a], -1))
        return self.reverse_patch_embedding(features.permute(0, 4, 1, 2, 3))


def _resize_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Trilinear resize (align_corners=True) of channels-last x to the grid of ``like``, if different.

    Needed where the encoder padded an odd grid before merging: expanding again gives one token more.
    """
    if x.shape[1:4] == like.shape[1:4]:
        return x
    return F.interpolate(x.permute(0, 4, 1, 2, 3), size=like.shape[1:4], mode="trilinear",
                         align_corners=True).permute(0, 2, 3, 4, 1)


class DC2Fusion(nn.Module):
    """DC2Fusion network: ``model(x1, x2)`` on (B, n_channels, D, H, W) pairs -> fused (B, 1, D, H, W).

    Any D, H, W are accepted (padding and cropping: module docstring). With the authors' "L1NW" rule
    and ``variant="faithful"`` the output scale depends on the volume size and on the other samples
    of the batch; the authors' weights only land in [0, 1] at their training setting (128^3, batch 1).

    Args:
        n_channels: channels of each input volume.
        embed_dim: width of the first stage; stage i has ``embed_dim * 2**i`` channels. The authors
            train with 96 (their CLI default of 48 is ignored by their script).
        window_size: attention window in tokens (shrunk per axis on smaller grids).
        fusion_strategy: how the two output channels f1, f2 are combined (the original's
            ``fusion_strategy`` names; "SFNN" is not supported): "L1NW" ``|f1|_1 f1 + |f2|_1 f2``
            (trained with), "AL1NW" (half those weights), "FL1N" (weights ``|fi|_1 / (|f1|_1 +
            |f2|_1)``), "FER" (voxel-wise ``fi^2 / (f1^2 + f2^2)``), "addition", "average".
        depths, num_heads: blocks and attention heads per stage (fixed in the original).
        mlp_ratio: MLP hidden width over block width (fixed at 4 in the original).
        qkv_bias: biases of the Q, K, V projections (fixed True in the original).
        drop_path_rate: stochastic depth, 0 -> rate linearly over the encoder blocks, the decoder
            stages re-using their encoder stage's rates (training only).
        variant: "faithful" (the original's function) or "fixed" (the project's bug fixes, see the
            module docstring); the parameters are the same.
        l1_reference_voxels: None (the original) or a voxel count N0: the faithful "L1NW"/"AL1NW"
            norms, sums over the whole tensor, are scaled by N0 / (elements of the tensor), so that
            the output has the scale of a pass over N0 voxels whatever the volume's size (the
            project's normalisation; at exactly N0 voxels and batch 1 it is the original's output).
    """

    def __init__(self, n_channels: int = 1, embed_dim: int = 96, window_size: tuple[int, int, int] = (2, 2, 2),
                 fusion_strategy: str = "L1NW", depths: tuple[int, ...] = (2, 2, 6, 2),
                 num_heads: tuple[int, ...] = (3, 6, 12, 24), mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path_rate: float = 0.2, variant: str = "faithful", l1_reference_voxels: int | None = None):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, not {variant!r}")
        if fusion_strategy not in FUSION_STRATEGIES:
            raise ValueError(f"fusion_strategy must be one of {FUSION_STRATEGIES}, not {fusion_strategy!r}")
        if len(depths) != len(num_heads) or not depths:
            raise ValueError("depths and num_heads must be non-empty and of equal length")
        if len(tuple(window_size)) != 3 or min(window_size) < 1:
            raise ValueError(f"window_size must be three positive ints, not {window_size!r}")
        if embed_dim < 8:
            raise ValueError("embed_dim must be at least 8 (the gates have embed_dim // 8 channels)")
        for i, heads in enumerate(num_heads):
            if (embed_dim * 2 ** i) % heads:
                raise ValueError(f"stage {i}: width {embed_dim * 2 ** i} is not divisible by {heads} heads")
        if l1_reference_voxels is not None and l1_reference_voxels < 1:
            raise ValueError(f"l1_reference_voxels must be a positive voxel count or None, not {l1_reference_voxels!r}")
        self.n_channels = n_channels
        self.fusion_strategy = fusion_strategy
        self.variant = variant
        self.l1_reference_voxels = l1_reference_voxels
        self.swin = FusionModel(n_channels, embed_dim, tuple(depths), tuple(num_heads), tuple(window_size),
                                mlp_ratio, qkv_bias, drop_path_rate, faithful=variant == "faithful")
        self.out_conv = nn.Conv3d(embed_dim // 2, 2, 3, padding=1)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        f1, f2 = self.fusion_channels(x1, x2)
        return self.combine(f1, f2)

    def fusion_channels(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two output channels f1, f2 (each (B, 1, D, H, W)) before the fusion rule."""
        if x1.shape != x2.shape or x1.ndim != 5 or x1.shape[1] != self.n_channels:
            raise ValueError(f"expected two inputs of equal shape (B, {self.n_channels}, D, H, W), "
                             f"got {tuple(x1.shape)} and {tuple(x2.shape)}")
        d, h, w = x1.shape[2:]
        pad = [(-side) % PATCH_SIZE for side in (d, h, w)]
        if any(pad):
            spec = (0, pad[2], 0, pad[1], 0, pad[0])
            x1, x2 = F.pad(x1, spec, mode="replicate"), F.pad(x2, spec, mode="replicate")
        out = self.out_conv(self.swin(x1, x2))[:, :, :d, :h, :w]
        return out[:, 0:1], out[:, 1:2]

    def combine(self, f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
        """Apply ``fusion_strategy`` to the two output channels."""
        strategy = self.fusion_strategy
        if strategy == "addition":
            return f1 + f2
        if strategy == "average":
            return (f1 + f2) / 2
        if strategy == "FER":
            energy = f1 ** 2 + f2 ** 2
            energy = torch.where(energy == 0, torch.ones_like(energy), energy)
            return f1 ** 2 / energy * f1 + f2 ** 2 / energy * f2
        if self.variant == "faithful":
            # The original's L1 norms: one sum over the whole tensor, batch included.
            l1, l2 = f1.abs().sum(), f2.abs().sum()
            if self.l1_reference_voxels is not None:
                l1, l2 = (norm * (self.l1_reference_voxels / f1.numel()) for norm in (l1, l2))
            if strategy == "AL1NW":
                l1, l2 = l1 / 2, l2 / 2
            elif strategy == "FL1N":
                l1, l2 = l1 / (l1 + l2), l2 / (l1 + l2)
            return l1 * f1 + l2 * f2
        dims = tuple(range(1, f1.ndim))
        l1, l2 = f1.abs().sum(dims, keepdim=True), f2.abs().sum(dims, keepdim=True)
        # Both norms zero means f1 = f2 = 0; the guard only keeps 0/0 out of the result.
        total = (l1 + l2).clamp_min(torch.finfo(f1.dtype).tiny)
        return (l1 / total) * f1 + (l2 / total) * f2


# --- The method layer: DC2Fusion fuses volumes of any shape on their own grid, and trains ----------

#: The grid the authors trained on (their MNI crop, padded to 224^3 and resized): their weights
#: produce outputs in [0, 1] for passes over this many voxels (batch 1).
TRAINING_SHAPE = (128, 128, 128)
TRAINING_VOXELS = 128 ** 3
#: The original's preprocessing pads the foreground crop to this cube before resizing it to TRAINING_SHAPE.
ORIGINAL_PAD = 224
#: Tiles and their starts are multiples of the network's total downsampling (patch 4, three merges).
TILE_UNIT = 32
#: Training patch edges: multiples of 16 (the token grid halves twice evenly), at least 48, so that the
#: bottleneck's BatchNorm sees more than one voxel per channel in training (batch 1).
PATCH_MULTIPLE, MIN_PATCH = 16, 48
PREPROCESSING = ("pad", "original")
#: Peak memory of a float32 eval pass per voxel of the padded input at embed_dim 96 (activations grow
#: with the width): measured 0.80 GB over the process for 128^3 and 1.0 GB for 96x160x160 (2 threads).
FUSION_MB_PER_VOXEL_96 = 4.5e-4


def build(**kwargs) -> DC2Fusion:
    """:class:`DC2Fusion` as the method layer builds it: ``l1_reference_voxels`` defaults to the authors'
    training grid (128^3), which normalises the faithful L1NW output of other sizes to their scale and
    leaves a pass over 128^3 voxels exactly the original's."""
    kwargs.setdefault("l1_reference_voxels", TRAINING_VOXELS)
    return DC2Fusion(**kwargs)


def _load_original(path):
    """A state dict of the authors' code (bare, or under "model"/"state_dict"), default configuration."""
    return load_original_state_dict(path, build(), "DC2Fusion")


def _pass_mb(model):
    width = model.out_conv.in_channels * 2  # embed_dim
    return lambda shape: FUSION_MB_PER_VOXEL_96 * width / 96 * _voxels_padded(shape)


def _voxels_padded(shape):
    out = 1
    for n in shape:
        out *= -(-int(n) // PATCH_SIZE) * PATCH_SIZE
    return out


def _original_preprocess(x1, x2):
    """The authors' validation transforms of a pair: crop to the bounding box of x1 > 0, pad symmetrically
    to at least 224^3, resize (area) to 128^3, min-max each to [0, 1]. Returns the two 128^3 arrays and
    the box and padding that :func:`_original_inverse` needs."""
    nonzero = np.argwhere(x1 > 0)
    if not len(nonzero):
        raise ValueError("preprocess 'original' crops to the first input's foreground (x1 > 0), which is empty")
    box = tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(nonzero.min(0), nonzero.max(0)))
    crop_shape = tuple(s.stop - s.start for s in box)
    pads = [((max(ORIGINAL_PAD, n) - n) // 2, max(ORIGINAL_PAD, n) - n - (max(ORIGINAL_PAD, n) - n) // 2)
            for n in crop_shape]
    out = []
    for x in (x1, x2):
        padded = torch.from_numpy(np.pad(x[box], pads))[None, None]
        out.append(minmax01(F.interpolate(padded, size=TRAINING_SHAPE, mode="area")[0, 0].numpy()))
    return out[0], out[1], box, pads, tuple(n + a + b for n, (a, b) in zip(crop_shape, pads))


def _original_inverse(fused, shape, box, pads, padded_shape):
    """The 128^3 output back on the input grid: resized (trilinear) to the padded crop, un-padded and put
    into the crop box; zero outside it (the original's crop removed only voxels where x1 = 0)."""
    back = F.interpolate(torch.from_numpy(fused)[None, None], size=padded_shape, mode="trilinear",
                         align_corners=False)[0, 0].numpy()
    inner = tuple(slice(a, n - b) for (a, b), n in zip(pads, padded_shape))
    out = np.zeros(shape, np.float32)
    out[box] = back[inner]
    return out


def fuse(model, x1, x2, device=None, preprocess="pad", tile=None, overlap=0.25, memory_budget_mb=6000):
    """Fuse two (D, H, W) volumes in [0, 1] on their own grid; the output is clipped to [0, 1].

    ``preprocess="pad"`` (default): the whole volume (padded by the network to multiples of 4 and
    cropped back), in overlapping tiles of multiples of 32 voxels when ``tile`` is given or a pass would
    need more than ``memory_budget_mb`` (None: never tile); the faithful L1NW output is normalised to
    the training grid's scale per pass (``l1_reference_voxels``). ``"original"``: the authors'
    preprocessing (foreground crop, pad to 224^3, resize to 128^3), one pass at their training size and
    batch 1, and the result resampled back onto the input grid.
    """
    from lpmnet.methods.tiling import fuse_arrays
    from lpmnet.memory import largest_tile

    if preprocess not in PREPROCESSING:
        raise ValueError(f"preprocess must be one of {', '.join(PREPROCESSING)}, not {preprocess!r}")
    if preprocess == "original":
        a, b, box, pads, padded_shape = _original_preprocess(x1, x2)
        fused = fuse_arrays(model, a, b, device=device)["fused"]
        fused = _original_inverse(fused, x1.shape, box, pads, padded_shape)
        return {"fused": np.clip(fused, 0, 1), "Preprocess": preprocess}
    choice = "given" if tile is not None else "none"
    if tile is None:
        tile = largest_tile(x1.shape, memory_budget_mb, _pass_mb(model), TILE_UNIT)
        if tile is not None:
            choice = f"auto: a whole-volume pass exceeds memory_budget_mb={memory_budget_mb}"
    fused = fuse_arrays(model, x1, x2, device=device, tile=tile, overlap=overlap, unit=TILE_UNIT)["fused"]
    return {"fused": np.clip(fused, 0, 1), "Preprocess": preprocess,
            "Tile": [int(t) for t in np.broadcast_to(tile, 3)] if tile is not None else None, "TileChoice": choice}


def _fusion_mem_mb(fixed_path, model_kwargs, settings):
    """Inputs, copies and output of the volume, plus one pass: over 128^3 voxels ("original"), or the
    whole volume or the largest tile within the memory budget."""
    from lpmnet import memory

    shape = memory.volume_shape(fixed_path)
    per_voxel = FUSION_MB_PER_VOXEL_96 * int(model_kwargs.get("embed_dim", 96)) / 96
    if settings.get("preprocess") == "original":
        pass_mb = per_voxel * TRAINING_VOXELS
    else:
        budget = settings.get("memory_budget_mb", 6000)
        pass_mb = per_voxel * _voxels_padded(shape) if budget is None else min(per_voxel * _voxels_padded(shape), budget)
    copies = 10 * memory.MB_PER_VOXEL_COPY * _voxels_padded(shape)
    return memory.mb_with_margin(memory.PROCESS_MB + copies + pass_mb)


#: The authors' recipe (their train_diff.py and config_diff.py): Adam 1e-4 without
#: weight decay, lr (1 - epoch/epochs)^0.9 per epoch, batch 1, seed 3407, their loss, their augmentations
#: (small rotations; contrast and noise on the MRI, the first input). They trained 500 epochs on whole
#: 128^3 volumes; here an epoch is one pass over the training pairs, so the default 500 iterations are
#: 500 epochs of one pair (set iterations = 500 x pairs), on 128^3 patches of the native grid (the same
#: voxel count, so the L1NW scale is the one inference normalises to; whole volumes: patch_size null).
RECIPE = dict(iterations=500, batch_size=1, patch_size=(128, 128, 128), slice_axis=0, lr=1e-4, betas=(0.9, 0.999),
              weight_decay=0.0, optimizer="adam", schedule="poly", poly_power=0.9, ema_decay=0.0,
              augmentation="dc2fusion", loss="dc2fusion", loss_settings={}, seed=3407)


METHOD = FusionMethod(name="dc2fusion", description="DC2Fusion (Liu et al., ICONIP 2023): 3D deformable "
                      "cross-attention Swin U-Net", dims=3, build=build, fuse=fuse, recipe=RECIPE,
                      settings=("preprocess", "tile", "overlap", "memory_budget_mb"), patch_multiple=PATCH_MULTIPLE, min_patch=MIN_PATCH,
                      load_original=_load_original, fusion_mem_mb=_fusion_mem_mb)
