"""MambaDFuse (Li et al., arXiv:2404.08406, 2024): Mamba-based dual-phase fusion of two 2D images.

A re-implementation, written from the project's reading of the authors' code, of
``models/network.py: MambaDFuse`` of Lizhe1228/MambaDFuse @0c2a117e together with the repository's
forked ``mamba_simple.py`` (which the authors put in place of mamba-ssm's). It loads the original's
state dicts with ``strict=True`` (same names, shapes and order) and, in float64, reproduces the
original's eval-mode output to round-off (tests/unit/methods/test_mambadfuse_network.py, against the outputs the
original code computed).

``model(x1, x2)``: two co-registered images (B, in_chans, H, W), in [0, 1] as the authors train
and test, give the fused image of the same shape. There is no output activation: the result is
not clamped (the authors' test script clamps to [0, 1] only when saving).

Data flow, C = ``embed_dim`` (60), tokens are the H*W pixels in raster order:

1. Low-level stem, one set of weights for both images: Conv3x3(in_chans -> C/2) + LeakyReLU(0.2),
   Conv3x3(C/2 -> C) + LeakyReLU(0.2).
2. Tokenise with ``patch_embed`` (a LayerNorm(C), the same instance at every tokenisation below).
3. Per image, its own stack of 8 :class:`SingleMambaBlock` (``r <- x + r; x <- Mamba(LN(r))``).
4. Shallow fusion: two :class:`TokenSwapMamba` (add the residual, LN, swap the channels with an
   even index between the images, one Mamba per image); then
   ``I1 <- Conv(cat[I1, I2]) + I1``, ``I2 <- Conv(cat[I2, I1]) + I2`` (with the new I1) and
   ``F = (I1 + I2) / 2``.
5. Deep fusion: five :class:`M3` blocks; each runs a three-stream Mamba on (F, I2, I1) whose gated
   outputs are summed before one out-projection (streams 2 and 3 share ``A_b_log``; there is no
   ``A_c_log``), then ``F <- DWConv3x3(F) + F``.
6. Reconstruction: tokenise, 8 :class:`SingleMambaBlock`, Conv3x3 C -> C/2 -> C/4 -> in_chans
   with LeakyReLU(0.2) between; ``out = x / img_range + mean`` (mean 0 for grayscale).

The constructor's defaults are the authors' test-script arguments (``embed_dim=60`` etc.), not the
original class's own defaults (``embed_dim=96``), since the released checkpoints use them. Only
``in_chans``, ``embed_dim``, ``img_range``, ``patch_norm``/``norm_layer``, ``ape`` (with
``img_size``/``patch_size``, which then fix the image size), ``drop_rate`` (training only) and
``upscale`` (a final crop to ``H*upscale x W*upscale``, which removes nothing for upscale >= 1)
have an effect, as in the original; the other arguments are SwinIR leftovers the original accepts
and ignores.

Any H x W works without padding: the network has no windows and no down-sampling (one causal scan
per image over its H*W tokens, 3x3 convolutions with zero padding 1), so nothing is padded or
cropped. The authors' test script reflect-pads its inputs to a multiple of 8 and crops the result,
which the network does not need; the padded pixels do take part in the scans and convolutions, so
such a result differs near the border (and, through the scans, beyond it) from this module's on
the unpadded image. With ``ape=True`` the image must be ``img_size`` (the learned position
embedding has one entry per token).

Quirks of the original (baselines.md 2.6 and 2.1), and what ``variant`` does about them. None of
the surprises baselines.md lists is a bug of the forward pass: they are design, training-script or
initialisation matters.

- Architecture, kept in both variants (it is what the authors trained, and not an error): the
  residual streams are dropped after the shallow fusion, after the last M3 block and after the
  reconstruction stack (each stage outputs its last Mamba output, without the residual sum); the
  stem is shared by both images while the Mamba stacks are not; the second shallow-fusion
  convolution sees the already updated I1; streams 2 and 3 of the M3 Mamba share ``A_b``; the
  three gated M3 streams are summed, not averaged.
- Initialisation, as in the original in both variants: its ``self.apply(_init_weights)`` runs
  before any layer exists and only resets the patch LayerNorm to its defaults, so the network
  starts from PyTorch's default initialisation plus mamba-ssm's for the first stream of every
  Mamba; the fork's extra M3 streams (``dt_proj_b/_c`` included) keep PyTorch's defaults.
- Not reproduced, since it cannot change a result: ``forward`` of the original overwrites
  ``self.mean`` with ``(mean_A + mean_B) / 2``, the same value. ``in_chans=6``, which the original
  accepts but cannot run (it subtracts a 3-channel mean from 6 channels), is refused.
- ``variant="fixed"`` changes one thing, the one computation of the forward pass that is evidently
  unintended: each M3 block assigns ``norm1(F + r)``, ``norm2(I2)`` and ``norm3(I1)`` and then
  calls its Mamba on ``norm1``/``norm2``/``norm3`` of those again, i.e. every LayerNorm twice with
  the same weights. "fixed" applies each once. This is the project's correction, not the paper's.
  It is benign either way (a redundant normalisation, not a defect of the results), so checkpoints
  trained with the original code belong with ``variant="faithful"``; "fixed" is for training from
  scratch. Both variants have the same parameters and load the same state dicts.

Layout and speed: the tokens are kept channel-major, (B, C, H*W), which is the image's own memory
layout: tokenising and untokenising are views, and every projection is a batched matmul that
reads and writes (channels, tokens) directly, so neither the Mamba blocks nor the convolutions
transpose anything. The selective scans (three per M3 block) and the causal depthwise
convolutions go through :mod:`lpmnet.ops.backends` (``scan_backend``: the compiled CPU kernel, the
pure-PyTorch scan or mamba-ssm's CUDA kernel); about half of the CPU time is the scans. Batch the
slices of a volume: the compiled CPU scan parallelises over the batch, so a single image keeps one
thread busy there (benchmarks/bench_mambadfuse_network.py: a 160x160 slice in float32 costs about
3 CPU-seconds in batches of 4-8, i.e. about 1.6 s on 2 idle cores). As in mamba-ssm, ``A_log``,
``D`` and the step-size bias are used in at least float32 (the original casts them to float32
even in float64 runs, a 1e-10 relative difference the float64 fixtures were computed without).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lpmnet.methods.mamba import Mamba
from lpmnet.methods import FusionMethod, load_original_state_dict
from lpmnet.precision import at_least_float32
from lpmnet.ops.backends import BACKENDS
from lpmnet.ops.causal_conv1d import causal_conv1d
from lpmnet.ops.selective_scan import selective_scan

__all__ = ["MambaDFuse", "VARIANTS", "load_released_checkpoint"]

VARIANTS = ("faithful", "fixed")
# The original's LeakyReLU; its slope is part of what the fixtures check.
LRELU_SLOPE = 0.2
# Mean colour the SwinIR scaffolding subtracts from RGB inputs (grayscale: 0).
RGB_MEAN = (0.4488, 0.4371, 0.4040)


def _linear(x, layer):
    """``layer`` (an nn.Linear) over the channels of channel-major x (B, C_in, L) -> (B, C_out, L).

    bmm with the weight expanded over the batch is a plain GEMM per image on these layouts; matmul
    would broadcast the other way and copy x into token-major order first.
    """
    w = layer.weight
    y = torch.bmm(w.expand(x.shape[0], *w.shape), x)
    return y if layer.bias is None else y + layer.bias[:, None]


def _layer_norm(x, norm):
    """LayerNorm ``norm`` over the channels of channel-major x (B, C, L).

    The channel means are bmm's with a constant row: on this layout torch's reductions over the
    non-innermost channel dimension are slower (mean about 2x, var_mean about 40x on a 2-core CPU).
    Two passes (mean, then the variance of the centred values) keep float32 accurate for inputs far
    from zero mean.
    """
    c = x.shape[1]
    avg = x.new_full((1, 1, c), 1.0 / c).expand(x.shape[0], 1, c)
    centred = x - torch.bmm(avg, x)
    var = torch.bmm(avg, centred * centred)
    return torch.addcmul(norm.bias[:, None], centred * torch.rsqrt(var + norm.eps), norm.weight[:, None])


class LayerNorm(nn.Module):
    """The original's with-bias LayerNorm wrapper (``<name>.body.weight``/``.bias`` in the state dict),
    on channel-major tokens. Same eps (1e-5) and biased variance as nn.LayerNorm, which holds the
    parameters."""

    def __init__(self, dim):
        super().__init__()
        self.body = nn.LayerNorm(dim)

    def forward(self, x):
        return _layer_norm(x, self.body)


class ChannelMamba(Mamba):
    """:class:`lpmnet.methods.mamba.Mamba` (mamba-ssm's parameters, names and initialisation) on
    channel-major sequences: ``forward`` maps (batch, d_model, length) -> (batch, d_model, length).

    The computation is mamba-ssm's; only the layout differs, so the in-projection, the
    convolution, the scan and the out-projection all read and write (channels, length) without a
    transpose.
    """

    def _stream(self, xz, conv1d, x_proj, dt_proj, A_log, D):
        """One selective-scan stream: in-projected xz (B, 2*d_inner, L) -> y * silu(z) (B, d_inner, L)."""
        x, z = xz.chunk(2, dim=1)
        x = causal_conv1d(x, conv1d.weight, conv1d.bias, activation="silu", backend=self.scan_backend)
        x_dbl = _linear(x, x_proj)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=1)
        # The step-size bias goes into the scan (delta_bias), as mamba-ssm does, not into the matmul.
        delta = torch.bmm(dt_proj.weight.expand(dt.shape[0], *dt_proj.weight.shape), dt)
        return selective_scan(
            x,
            delta,
            -torch.exp(at_least_float32(A_log)),
            B,
            C,
            D=at_least_float32(D),
            z=z,
            delta_bias=at_least_float32(dt_proj.bias),
            delta_softplus=True,
            backend=self.scan_backend,
        )

    def forward(self, hidden_states):
        y = self._stream(_linear(hidden_states, self.in_proj), self.conv1d, self.x_proj, self.dt_proj,
                         self.A_log, self.D)
        return _linear(y, self.out_proj)


class M3Mamba(ChannelMamba):
    """The fork's ``Mamba(bimamba_type="m3")``: three selective-scan streams, summed before one
    out-projection.

    Stream 1 is the plain Mamba of ``hidden_states``; streams 2 and 3 take ``extra_emb1`` and
    ``extra_emb2`` through their own in-projection (``in_proj_extra1/2``), convolution
    (``conv1d_b/_c``), x/dt projections (``x_proj_b/_c``, ``dt_proj_b/_c``) and skip (``D_b``,
    ``D_c``), and share the state matrix ``A_b_log``. The extra streams keep PyTorch's default
    initialisation, as in the fork (only stream 1 gets mamba-ssm's step-size initialisation).
    """

    def __init__(self, d_model, d_state=16, d_conv=4, expand=2, dt_rank="auto", dt_min=0.001,
                 dt_max=0.1, dt_init_floor=1e-4, dt_scale=1.0, conv_bias=True, bias=False,
                 scan_backend="auto"):
        super().__init__(d_model, d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank,
                         dt_min=dt_min, dt_max=dt_max, dt_init_floor=dt_init_floor,
                         dt_scale=dt_scale, conv_bias=conv_bias, bias=bias, scan_backend=scan_backend)
        d_inner, width = self.d_inner, self.dt_rank + 2 * d_state
        self.A_b_log = nn.Parameter(self.A_log.detach().clone())  # S4D-real, like A_log
        self.D_b = nn.Parameter(torch.ones(d_inner))
        self.D_c = nn.Parameter(torch.ones(d_inner))

        def conv():
            return nn.Conv1d(d_inner, d_inner, kernel_size=d_conv, groups=d_inner, padding=d_conv - 1,
                             bias=conv_bias)

        self.conv1d_b = conv()
        self.conv1d_c = conv()
        self.x_proj_b = nn.Linear(d_inner, width, bias=False)
        self.x_proj_c = nn.Linear(d_inner, width, bias=False)
        self.dt_proj_b = nn.Linear(self.dt_rank, d_inner, bias=True)
        self.dt_proj_c = nn.Linear(self.dt_rank, d_inner, bias=True)
        self.in_proj_extra1 = nn.Linear(d_model, 2 * d_inner, bias=bias)
        self.in_proj_extra2 = nn.Linear(d_model, 2 * d_inner, bias=bias)
        # Re-registered last so that the state dict lists the entries in the fork's order.
        self.out_proj = self._modules.pop("out_proj")

    def forward(self, hidden_states, extra_emb1, extra_emb2):
        y = self._stream(_linear(hidden_states, self.in_proj), self.conv1d, self.x_proj,
                         self.dt_proj, self.A_log, self.D)
        y_b = self._stream(_linear(extra_emb1, self.in_proj_extra1), self.conv1d_b, self.x_proj_b,
                           self.dt_proj_b, self.A_b_log, self.D_b)
        y_c = self._stream(_linear(extra_emb2, self.in_proj_extra2), self.conv1d_c, self.x_proj_c,
                           self.dt_proj_c, self.A_b_log, self.D_c)
        return _linear(y + y_b + y_c, self.out_proj)


class SingleMambaBlock(nn.Module):
    """``r <- x + r; x <- Mamba(LN(r))``; returns (x, r). mamba-ssm's Add -> LN -> Mixer order."""

    def __init__(self, dim, scan_backend="auto"):
        super().__init__()
        self.encoder = ChannelMamba(dim, scan_backend=scan_backend)
        self.norm = LayerNorm(dim)

    def forward(self, x, residual=None):
        residual = x if residual is None else x + residual
        return self.encoder(self.norm(residual)), residual


def _run_stack(blocks, x, residual=None):
    """SingleMambaBlocks in sequence; returns the last Mamba output and the residual sum."""
    for block in blocks:
        x, residual = block(x, residual)
    return x, residual


def _exchange_channels(x1, x2):
    """Swaps the channels with an even index between two channel-major token tensors (p = 2)."""
    even = (torch.arange(x1.shape[1], device=x1.device) % 2 == 0)[:, None]
    return torch.where(even, x2, x1), torch.where(even, x1, x2)


class TokenSwapMamba(nn.Module):
    """Shallow fusion step: add the residuals, LN per image, channel exchange, one Mamba per image."""

    def __init__(self, dim, scan_backend="auto"):
        super().__init__()
        self.I1encoder = ChannelMamba(dim, scan_backend=scan_backend)
        self.I2encoder = ChannelMamba(dim, scan_backend=scan_backend)
        self.norm1 = LayerNorm(dim)
        self.norm2 = LayerNorm(dim)

    def forward(self, I1, I2, I1_residual, I2_residual):
        I1_residual = I1 + I1_residual
        I2_residual = I2 + I2_residual
        I1_swap, I2_swap = _exchange_channels(self.norm1(I1_residual), self.norm2(I2_residual))
        return self.I1encoder(I1_swap), self.I2encoder(I2_swap), I1_residual, I2_residual


class M3(nn.Module):
    """Deep fusion step: three-stream Mamba on (fusion, I2, I1), then ``F <- DWConv3x3(F) + F``.

    ``double_norm`` reproduces the original, which applies each of its LayerNorms twice (see the
    module docstring); without it each is applied once.
    """

    def __init__(self, dim, double_norm=True, scan_backend="auto"):
        super().__init__()
        self.multi_modal_mamba_block = M3Mamba(dim, scan_backend=scan_backend)
        self.norm1 = LayerNorm(dim)
        self.norm2 = LayerNorm(dim)
        self.norm3 = LayerNorm(dim)
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)
        self.double_norm = double_norm

    def forward(self, I1, fusion_resi, I2, fusion, h, w):
        fusion_resi = fusion if fusion_resi is None else fusion + fusion_resi
        f, i2, i1 = self.norm1(fusion_resi), self.norm2(I2), self.norm3(I1)
        if self.double_norm:
            f, i2, i1 = self.norm1(f), self.norm2(i2), self.norm3(i1)
        g = self.multi_modal_mamba_block(f, extra_emb1=i2, extra_emb2=i1)
        b, c, _ = g.shape
        g = g.view(b, c, h, w)
        fusion = (self.dwconv(g) + g).flatten(2)
        return fusion, fusion_resi


class PatchEmbed(nn.Module):
    """Tokenisation: (B, C, H, W) -> channel-major tokens (B, C, H*W), then the optional norm.

    ``patch_size`` only sets the bookkeeping ``patches_resolution``/``num_patches`` (used by
    ``ape``); as in the original, every pixel is a token, whatever ``patch_size`` is.
    """

    def __init__(self, img_size, patch_size, embed_dim, norm_layer):
        super().__init__()
        img_size, patch_size = _pair(img_size), _pair(patch_size)
        self.patches_resolution = (img_size[0] // patch_size[0], img_size[1] // patch_size[1])
        self.num_patches = self.patches_resolution[0] * self.patches_resolution[1]
        self.norm = norm_layer(embed_dim) if norm_layer is not None else None

    def forward(self, x):
        x = x.flatten(2)
        if self.norm is None:
            return x
        if isinstance(self.norm, nn.LayerNorm) and self.norm.bias is not None:
            return _layer_norm(x, self.norm)
        # Any other norm_layer is a module over the last (channel) dimension, as in the original.
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _lrelu(x):
    return F.leaky_relu(x, LRELU_SLOPE, inplace=True)


class MambaDFuse(nn.Module):
    """MambaDFuse fusion network; ``forward(A, B)`` fuses two (B, in_chans, H, W) images.

    Args (names as in the original; defaults are the authors' test-script configuration):
        upscale: kept from the original, which crops its output to ``H*upscale x W*upscale``; that
            removes nothing for upscale >= 1 (there is no upsampler).
        in_chans: image channels (1: grayscale, mean 0; 3: RGB, minus the SwinIR mean colour).
        img_size, patch_size: bookkeeping of the patch embedding; they matter only with ``ape``.
        window_size, depths, num_heads, mlp_ratio, upsampler, resi_connection, qkv_bias, qk_scale,
            attn_drop_rate, drop_path_rate, Ex_depths, Fusion_depths, Re_depths, Ex_num_heads,
            Fusion_num_heads, Re_num_heads: accepted like the original, no effect (the block
            counts are fixed: 8 + 8 extraction, 2 swap, 5 M3, 8 reconstruction).
        img_range: inputs are multiplied by it (outputs divided).
        embed_dim: width C of all Mamba blocks (stem C/2 -> C, reconstruction C -> C/2 -> C/4).
        patch_norm, norm_layer: the shared tokenisation norm ``patch_embed.norm`` (a LayerNorm).
        ape: learned absolute position embedding (one per token of an ``img_size`` image).
        drop_rate: dropout after the tokenisation of the inputs (training only).
        scan_backend: "auto", "cuda", "cpu" or "torch", see :func:`lpmnet.ops.selective_scan.selective_scan`.
        variant: "faithful" (the original's computation) or "fixed" (each M3 LayerNorm applied
            once instead of twice); see the module docstring.
    """

    def __init__(
        self,
        upscale=1,
        in_chans=1,
        img_size=128,
        window_size=8,
        img_range=1.0,
        depths=(6, 6, 6, 6),
        embed_dim=60,
        num_heads=(6, 6, 6, 6),
        mlp_ratio=2,
        upsampler=None,
        resi_connection="1conv",
        patch_size=1,
        patch_norm=True,
        norm_layer=nn.LayerNorm,
        ape=False,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.1,
        qkv_bias=True,
        qk_scale=None,
        Ex_depths=(4,),
        Fusion_depths=(2, 2),
        Re_depths=(4,),
        Ex_num_heads=(6,),
        Fusion_num_heads=(6, 6),
        Re_num_heads=(6,),
        scan_backend="auto",
        variant="faithful",
    ):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if scan_backend not in BACKENDS:
            raise ValueError(f"scan_backend must be one of {BACKENDS}, got {scan_backend!r}")
        if in_chans == 6:
            raise ValueError("in_chans=6 is not supported: the original subtracts a 3-channel mean "
                             "from the 6-channel input and fails")
        self.variant = variant
        self.upscale = upscale
        self.img_range = img_range
        self.ape = ape
        mean = RGB_MEAN if in_chans == 3 else (0.0,) * in_chans
        self.register_buffer("mean", torch.tensor(mean).view(1, in_chans, 1, 1), persistent=False)
        half = embed_dim // 2

        self.patch_embed = PatchEmbed(img_size, patch_size, embed_dim, norm_layer if patch_norm else None)
        if ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, embed_dim))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(p=drop_rate)

        self.low_level_feature_extraction1 = nn.Conv2d(in_chans, half, 3, 1, 1)
        self.low_level_feature_extraction2 = nn.Conv2d(half, embed_dim, 3, 1, 1)
        self.high_level_feature_extraction1 = nn.ModuleList(
            SingleMambaBlock(embed_dim, scan_backend) for _ in range(8))
        self.high_level_feature_extraction2 = nn.ModuleList(
            SingleMambaBlock(embed_dim, scan_backend) for _ in range(8))

        self.channel_exchange1 = TokenSwapMamba(embed_dim, scan_backend)
        self.channel_exchange2 = TokenSwapMamba(embed_dim, scan_backend)
        self.shallow_fusion1 = nn.Conv2d(2 * embed_dim, embed_dim, 3, 1, 1)
        self.shallow_fusion2 = nn.Conv2d(2 * embed_dim, embed_dim, 3, 1, 1)

        double_norm = variant == "faithful"
        for i in range(1, 6):
            setattr(self, f"M3_block{i}", M3(embed_dim, double_norm=double_norm, scan_backend=scan_backend))

        self.feature_re = nn.ModuleList(SingleMambaBlock(embed_dim, scan_backend) for _ in range(8))
        self.conv_last1 = nn.Conv2d(embed_dim, half, 3, 1, 1)
        self.conv_last2 = nn.Conv2d(half, half // 2, 3, 1, 1)
        self.conv_last3 = nn.Conv2d(half // 2, in_chans, 3, 1, 1)

    def set_scan_backend(self, backend):
        """Select the selective-scan backend of every Mamba ("auto", "cuda", "cpu", "torch")."""
        if backend not in BACKENDS:
            raise ValueError(f"scan_backend must be one of {BACKENDS}, got {backend!r}")
        for module in self.modules():
            if isinstance(module, Mamba):
                module.scan_backend = backend

    def dual_level_feature_extraction(self, x, y):
        b = x.shape[0]
        # One stem pass over both images (shared weights): half the convolution calls.
        feats = _lrelu(self.low_level_feature_extraction1(torch.cat([x, y])))
        feats = _lrelu(self.low_level_feature_extraction2(feats))
        tokens = self.patch_embed(feats)
        if self.ape:
            if tokens.shape[-1] != self.patch_embed.num_patches:
                raise ValueError(
                    f"with ape=True the image must have {self.patch_embed.patches_resolution} pixels "
                    f"(img_size), got {tuple(feats.shape[-2:])}")
            tokens = tokens + self.absolute_pos_embed.transpose(1, 2)
        tokens = self.pos_drop(tokens)
        I1, residual1 = _run_stack(self.high_level_feature_extraction1, tokens[:b])
        I2, residual2 = _run_stack(self.high_level_feature_extraction2, tokens[b:])
        return I1, residual1, I2, residual2

    def dual_phase_feature_fusion(self, I1, I1_residual, I2, I2_residual, h, w):
        I1, I2, I1_residual, I2_residual = self.channel_exchange1(I1, I2, I1_residual, I2_residual)
        I1, I2, _, _ = self.channel_exchange2(I1, I2, I1_residual, I2_residual)
        b, c, _ = I1.shape
        I1, I2 = I1.view(b, c, h, w), I2.view(b, c, h, w)
        I1 = self.shallow_fusion1(torch.cat([I1, I2], dim=1)) + I1
        I2 = self.shallow_fusion2(torch.cat([I2, I1], dim=1)) + I2
        fusion = (I1 + I2) / 2

        I1, I2, fusion = self.patch_embed(I1), self.patch_embed(I2), self.patch_embed(fusion)
        fusion_resi = None
        for i in range(1, 6):
            fusion, fusion_resi = getattr(self, f"M3_block{i}")(I1, fusion_resi, I2, fusion, h, w)
        return fusion.view(b, c, h, w)

    def fused_img_recon(self, x):
        b, c, h, w = x.shape
        x, _ = _run_stack(self.feature_re, self.patch_embed(x))
        x = _lrelu(self.conv_last1(x.view(b, c, h, w)))
        x = _lrelu(self.conv_last2(x))
        return self.conv_last3(x)

    def forward(self, A, B):
        """A, B: (batch, in_chans, H, W) -> fused (batch, in_chans, H, W)."""
        if A.shape != B.shape or A.dim() != 4:
            raise ValueError(f"expected two (batch, channels, H, W) images of one shape, got "
                             f"{tuple(A.shape)} and {tuple(B.shape)}")
        H, W = A.shape[-2:]
        mean = self.mean.to(A.dtype)
        x = (A - mean) * self.img_range
        y = (B - mean) * self.img_range
        I1, I1_residual, I2, I2_residual = self.dual_level_feature_extraction(x, y)
        fusion = self.dual_phase_feature_fusion(I1, I1_residual, I2, I2_residual, H, W)
        out = self.fused_img_recon(fusion) / self.img_range + mean
        return out[:, :, : H * self.upscale, : W * self.upscale]


# Wrappers of a state dict in KAIR/BasicSR checkpoints, in order of preference: the EMA weights are
# what the authors evaluate (their test script loads ``*_E.pth``).
CHECKPOINT_WRAPPERS = ("params_ema", "params")


def load_released_checkpoint(path, **kwargs) -> MambaDFuse:
    """The authors' released MambaDFuse weights as a :class:`MambaDFuse` in eval mode, on the CPU.

    The authors' repository (Lizhe1228/MambaDFuse) ships its medical-fusion models under
    ``Model/Medical_Fusion-{CT-MRI,PET-MRI,SPECT-MRI}/Medical_Fusion/models/``: ``10000_E.pth``, the
    EMA generator (decay 0.999) that their test script loads, and ``10000_G.pth``, the plain
    generator, both after 10,000 iterations. Their KAIR training code saves ``network.state_dict()``
    as it is; a file whose dict is wrapped in ``{"params_ema": ...}`` and/or ``{"params": ...}``
    (BasicSR style; "params_ema" preferred when both are there) or whose keys carry DataParallel's
    ``module.`` prefix loads too. The weights are loaded with ``strict=True`` into
    ``MambaDFuse(**kwargs)``, by default the authors' test-script configuration (``embed_dim=60``,
    ``variant="faithful"``, the computation the weights were trained with); ``kwargs`` set e.g.
    ``scan_backend``.

    For example, the PET-MRI model, from the project's root with the authors' repository cloned
    into it::

        git clone https://github.com/Lizhe1228/MambaDFuse
        .venv/bin/python - <<'EOF'
        from lpmnet.methods.mambadfuse import load_released_checkpoint
        model = load_released_checkpoint("MambaDFuse/Model/Medical_Fusion-PET-MRI/Medical_Fusion/models/10000_E.pth")
        print(sum(p.numel() for p in model.parameters()))
        EOF

    which prints 1347271. Raises :class:`lpmnet.errors.InputError` naming ``path`` when the file is
    missing or unreadable, or is not a MambaDFuse state dict of this configuration (the message
    names the missing, unexpected or mis-shaped keys).
    """
    return load_original_state_dict(path, MambaDFuse(**kwargs), "MambaDFuse", CHECKPOINT_WRAPPERS)


def _fuse(model, x1, x2, device=None, axis=0, batch_size=8, scan_backend="auto"):
    """Slice by slice along ``axis`` (0 = D, the files' slice axis), output clamped to [0, 1] as the
    authors' test script does; the network needs no padding (see the module docstring)."""
    from lpmnet.methods.slicewise import fuse_slicewise

    model.set_scan_backend(scan_backend)
    return {"fused": fuse_slicewise(model, x1, x2, axis=axis, batch_size=batch_size, device=device, clip=True)}


#: The authors' MIF recipe (their KAIR options and models/loss_med.py): Adam 2e-4
#: without weight decay, EMA 0.999 (the released and tested weights), batch 12 of 64x64 crops with one of
#: the 8 flip/rot90 modes, 10,000 iterations (the released checkpoints); their MultiStepLR milestones
#: (250k+) are never reached, so the rate is constant. Crops come from slices along the D axis that
#: have foreground (their training data were 2D slices). Seed: theirs is unset (random); ours is fixed.
RECIPE = dict(iterations=10000, batch_size=12, patch_size=(64, 64), slice_axis=0, lr=2e-4, betas=(0.9, 0.999),
              weight_decay=0.0, optimizer="adam", schedule="constant", poly_power=0.9, ema_decay=0.999,
              augmentation="dihedral", loss="mif", loss_settings={}, seed=0)

METHOD = FusionMethod(name="mambadfuse", description="MambaDFuse (Li et al. 2024): 2D Mamba dual-phase fusion, "
                      "slice by slice", dims=2, build=MambaDFuse, fuse=_fuse, recipe=RECIPE,
                      settings=("axis", "batch_size", "scan_backend"), load_original=load_released_checkpoint)
