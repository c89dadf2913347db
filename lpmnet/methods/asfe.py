"""ASFE-Fusion (Gu et al., *Biomedical Signal Processing and Control* 96:106478, 2024), re-implemented.

A 2D fusion network of adaptive spatial and frequency experts, written from the authors' code
(xianming-gu/ASFE-Fusion @0db7b8aa, ``network.py: ASFEFusion``); none of it is vendored (the
repository has no licence). State-dict names and shapes are exactly the original's, so its
checkpoints load with ``load_state_dict(sd, strict=True)``; in eval mode, ``variant="faithful"``
computes the original's forward (checked in float64 against outputs of the original code, 1e-14).

Architecture (one slice pair ``(B, 1, H, W)`` in, the fused slice ``(B, 1, H, W)`` out):

- a CNN encoder shared by both inputs, four scales of 112, 160, 208 and 256 channels (H, H/2, H/4,
  H/8); every downsampling is MaxPool(2, stride 1) + BlurPool (binomial [1, 3, 3, 1], reflect pad);
- per scale a fusion module: the frequency expert (AFF: rFFT2, 1x1 conv + BN + ReLU on the stacked
  real/imaginary parts, a 7x7 spatial gate over the spectrum, an inverse transform; one per input,
  summed), the spatial expert (CASF: 16x16 patch embeddings, each input's self-similarity map applied
  to the other input's values, de-patching, plus both inputs), and a Soft-MoE over the pixels of both
  experts' features (SFEF: 4 experts x 256 slots, dispatch softmax over all pixels of an image);
- a U-Net decoder (bilinear x2 upsampling, align_corners) and a 1x1 output conv, no output activation.

``variant="faithful"`` (default) keeps every quirk of the original forward:

- **the frequency expert's inverse transform is broken.** The original's ``irfft`` helper takes
  ``x[:, :, 0]`` and ``x[:, :, 1]`` of its (B, C, H, W/2+1, 2) gated spectrum as real and imaginary
  part, i.e. spectrum *rows* 0 and 1 (vertical frequencies 0 and 1, real and imaginary parts still
  stacked in the last axis), not the last axis; ``irfft2(..., s=(H, W))`` then transforms that
  (B, C, W/2+1, 2) array's last two axes. The resulting "frequency feature" is, per channel,
  ``a(y) + b(y) cos(2 pi x / W) + c(y) sin(2 pi x / W)``: the rest of the spectrum is discarded, and
  along W only one cosine period survives. Kept because the published weights were trained with it;
- no activation between the two 3x3 convs of an encoder or decoder block (conv-BN-conv-BN-GELU);
- ``AFFusion1`` transforms the *second* input and ``AFFusion2`` the first (names only);
- each CASF ``QKV_Block`` is a full ViT block of which only ``norm1`` and the ``qkv`` projection take
  part: the block's own attention output and ``attn.proj`` are discarded, ``norm2`` and ``mlp`` are
  never called. They exist here, with the original's names, only for a strict load (this forward
  does not compute the discarded attention);
- ``fusionblock_depth`` is accepted and ignored: every scale has exactly one cross-attention layer;
- the attention scale is ``qk_scale or head_dim ** -0.5`` (so ``qk_scale=0`` means the default);
- the Soft-MoE has no residual and replaces the fused features; its slots are averages of the
  RMS-normalised tokens, and its dispatch softmax runs over all H*W tokens of an image.

``variant="fixed"`` is the project's correction, not the authors' or the paper's: the frequency
expert's inverse is ``irfft2`` over (H, W) of the gated spectrum with the last axis as real and
imaginary part, as in the FFC Fourier unit this code derives from. It is the only change; both variants
have the same parameters and load the same state dicts (a checkpoint trained "faithful" is not
meaningful with "fixed": its frequency features change). The original's other bugs are in its
*training* code and belong to the trainer: the SSIM loss term returns ``.item()`` and has no gradient,
AdamW is re-created every step, and the min-max normalisation runs over the whole batch tensor.

Sizes: the original only runs when H and W are multiples of 128 (the 16x16 patches of the H/8 scale).
Here any H, W work: both inputs are zero-padded, centred, to the next multiples of 128, and the
output is cropped back. Zero padding because the training images (the 256x256 Harvard slices) and
normalised medical slices have a black background at their borders, so the padding extends that
background, as in a larger field of view; reflect padding would mirror anatomy into the border.
Centred because the anatomy of the training images is centred. The padding is not neutral: the FFT,
the cross-attention and the Soft-MoE dispatch softmax run over *all* tokens of the padded image, so
the fused values inside the crop depend on how much padding there is (and on where it goes).

Speed (CPU inference, same results up to float rounding):

- channels-last memory throughout (faster convolutions; the token layouts of the patch embedding,
  de-patching, spectrum and Soft-MoE are then views), both inputs through the encoder as one batch;
- the work that only feeds the padding is skipped: the Soft-MoE combine step and the decoder run
  only on the window of each scale that the cropped output depends on (the dispatch and everything
  before it still see every token, so the crop is that of the full padded computation);
- faithful, in eval mode: only the 5 spectrum rows that reach the output are computed (a matrix DFT),
  and the original's inverse is evaluated in closed form (in training, BatchNorm needs the statistics
  of every row, so the full rFFT2 runs); fixed: one irFFT2 of the summed spectra of both inputs (the
  inverse is linear);
- the large matrix products run as 1x1 convolutions, where oneDNN is faster than the BLAS GEMM.

Under ``torch.autocast("cpu", dtype=torch.bfloat16)`` the convolutions and matrix products run in
bfloat16, while the frequency experts, the norms and the Soft-MoE logits and softmax normalisers
stay in float32 (the logits are sums of 2C products of order 1; their bfloat16 error would move the
softmax weights). The output is returned in the input's dtype; it deviates from float32 by about 1 %
of its range at most (0.2 % on average), mostly from the bfloat16 convolutions.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from lpmnet.methods import FusionMethod, load_original_state_dict
from lpmnet.methods.blocks import ChannelsLastMlp

__all__ = ["ASFEFusion", "VARIANTS"]

VARIANTS = ("faithful", "fixed")

#: The four fusion scales' widths the authors trained.
DEFAULT_CHANNELS = (112, 160, 208, 256)
# Fixed widths of the original: the input 1x1 conv, the first block's hidden conv, the last decoder block.
_INLAYER_WIDTH, _FIRST_HIDDEN, _LAST_DECODER = 64, 32, (8, 16)


def _encoder_hidden(channels):
    """Hidden widths of the four encoder blocks. The original hard-codes (32, 56, 80, 104), which is
    (32, then half the previous scale's width) for its channels; that rule is kept for other widths."""
    return (_FIRST_HIDDEN, *(c // 2 for c in channels[:3]))


def _decoder_widths(channels):
    """(hidden, out) of conv_up4 .. conv_up1. The original's ((104, 208), (80, 160), (56, 112), (8, 16)):
    each block ends at the width of the scale it is concatenated with, its hidden conv at half that."""
    return (*((c // 2, c) for c in channels[2::-1]), _LAST_DECODER)

# Two 3x3 convolutions (padding 1) per block: an output pixel depends on input pixels up to 2 away.
_BLOCK_HALO = 2

# The faithful frequency expert's output depends on spectrum rows 0 and 1 only, and their 7x7 spatial
# gate on rows 0 to 4.
_FAITHFUL_SPECTRUM_ROWS = 5


def _float_at_least_32(dtype):
    """float32 for bfloat16/float16 inputs (autocast), the input's dtype otherwise (float32, float64)."""
    return torch.promote_types(dtype, torch.float32)


def _linear_nhwc(x, weight, bias=None):
    """``F.linear`` over the last dimension of an NHWC tensor (N, H, W, K) -> contiguous (N, H, W, O).

    On CPU (float32, bfloat16) it runs as a 1x1 convolution of the channels-last NCHW view: for the
    large products of this network oneDNN's convolution is 1.5-2.3x faster than the BLAS GEMM behind
    ``F.linear`` (measured on 2 AVX-512 cores). Elsewhere (float64, GPU) it is ``F.linear``.
    """
    if x.device.type != "cpu" or x.dtype == torch.float64:
        return F.linear(x, weight, bias).contiguous()
    out = F.conv2d(x.permute(0, 3, 1, 2), weight[:, :, None, None], bias)
    return out.permute(0, 2, 3, 1).contiguous()


# --------------------------------------------------------------------------------------------------
# Windows: which part of each scale's grid the cropped output depends on


class _Window:
    """Rows ``[top, bottom)`` and columns ``[left, right)`` of a grid of ``height`` x ``width``."""

    def __init__(self, top, bottom, left, right, height, width):
        self.top, self.bottom, self.left, self.right = top, bottom, left, right
        self.height, self.width = height, width

    def grown(self, k):
        """The window ``k`` pixels larger on every side, clipped to the grid."""
        return _Window(max(self.top - k, 0), min(self.bottom + k, self.height),
                       max(self.left - k, 0), min(self.right + k, self.width), self.height, self.width)

    def source(self, height, width):
        """The window of a ``height`` x ``width`` grid that bilinear align-corners upsampling to this
        grid reads for this window (one extra row/column each side, against float rounding of the
        source coordinate)."""
        def span(lo, hi, n_in, n_out):
            first = lo * (n_in - 1) // (n_out - 1)
            last = (hi - 1) * (n_in - 1) // (n_out - 1) + 1
            return max(first - 1, 0), min(last + 2, n_in)

        top, bottom = span(self.top, self.bottom, height, self.height)
        left, right = span(self.left, self.right, width, self.width)
        return _Window(top, bottom, left, right, height, width)

    def slices_in(self, outer):
        """(row slice, column slice) of this window inside a tensor that holds ``outer``."""
        return (slice(self.top - outer.top, self.bottom - outer.top),
                slice(self.left - outer.left, self.right - outer.left))


def _interpolation_matrix(src_start, src_stop, src_size, dst_start, dst_stop, dst_size, dtype, device):
    """Weights of align-corners linear upsampling from ``src_size`` to ``dst_size`` positions (those of
    ``F.interpolate(mode="bilinear", align_corners=True)``, computed in float64), as a matrix from
    source positions ``[src_start, src_stop)`` to destination positions ``[dst_start, dst_stop)``."""
    position = torch.arange(dst_start, dst_stop, dtype=torch.float64, device=device)
    position = position * ((src_size - 1) / (dst_size - 1))
    lower = position.floor().long().clamp(max=src_size - 1)
    upper = (lower + 1).clamp(max=src_size - 1)
    fraction = position - lower
    matrix = torch.zeros(dst_stop - dst_start, src_stop - src_start, dtype=torch.float64, device=device)
    rows = torch.arange(dst_stop - dst_start, device=device)
    matrix.index_put_((rows, lower - src_start), 1 - fraction, accumulate=True)
    matrix.index_put_((rows, upper - src_start), fraction, accumulate=True)  # upper == lower at the end
    return matrix.to(dtype)


def _upsample_window(x, src, dst):
    """Bilinear x2 upsampling (align_corners) of ``x`` (B, C, h, w), which holds window ``src`` of its
    grid, evaluated on window ``dst`` of the upsampled grid."""
    # One matrix product per axis. The matrices have two non-zeros per row, but on the NHWC layout the
    # products are faster than gathering the two taps (index_select along W moves C values at a time).
    b, c, h, w = x.shape
    along_h = _interpolation_matrix(src.top, src.bottom, src.height, dst.top, dst.bottom, dst.height,
                                    x.dtype, x.device)
    along_w = _interpolation_matrix(src.left, src.right, src.width, dst.left, dst.right, dst.width,
                                    x.dtype, x.device)
    rows = (along_h @ x.permute(0, 2, 3, 1).reshape(b, h, w * c)).view(b * along_h.shape[0], w, c)
    return (along_w @ rows).view(b, along_h.shape[0], along_w.shape[0], c).permute(0, 3, 1, 2)


# --------------------------------------------------------------------------------------------------
# Encoder and decoder


def _max_pool_2x2_stride1(x):
    """``F.max_pool2d(x, kernel_size=2, stride=1)`` as two maxima of shifted views (exact; the pooling
    op also computes int64 indices, which inference does not need)."""
    rows = torch.maximum(x[:, :, :-1], x[:, :, 1:])
    return torch.maximum(rows[..., :-1], rows[..., 1:])


class _BlurPool(nn.Module):
    """antialiased-cnns' ``BlurPool(channels, stride=2)``: reflect pad (1, 2, 1, 2), depthwise 4x4
    normalised binomial filter, stride 2. ``filt`` is a state-dict buffer of the original."""

    def __init__(self, channels):
        super().__init__()
        taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
        kernel = taps[:, None] * taps[None, :]
        self.register_buffer("filt", (kernel / kernel.sum()).repeat(channels, 1, 1, 1))

    def forward(self, x):
        x = F.pad(x, (1, 2, 1, 2), mode="reflect")
        return F.conv2d(x, self.filt.to(x.dtype), stride=2, groups=x.shape[1])


class _ConvBlock(nn.Module):
    """conv3x3 -> BN -> conv3x3 -> BN, with the original's names; the callers add downsampling,
    upsampling and the GELU. (The original has no activation between the two convolutions.)"""

    def __init__(self, in_channels, hidden_channels, out_channels):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, hidden_channels, 3, 1, 1)
        self.conv2 = nn.Conv2d(hidden_channels, out_channels, 3, 1, 1)
        self.bn1 = nn.BatchNorm2d(hidden_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def convs(self, x):
        return self.bn2(self.conv2(self.bn1(self.conv1(x))))


class _EncoderBlock(_ConvBlock):
    """The original's ``ConvBlock_down``: [MaxPool(2, s1) -> BlurPool -> GELU] -> convs -> GELU.

    ``down_anti`` exists in every block for the state dict, also in block 1, which does not downsample.
    """

    def __init__(self, in_channels, hidden_channels, out_channels, downsample):
        super().__init__(in_channels, hidden_channels, out_channels)
        self.downsample = downsample
        self.down_anti = _BlurPool(in_channels)

    def forward(self, x):
        if self.downsample:
            x = F.gelu(self.down_anti(_max_pool_2x2_stride1(x)))
        return F.gelu(self.convs(x))


class _Encoder(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.inlayer = nn.Conv2d(1, _INLAYER_WIDTH, 1)
        widths = (_INLAYER_WIDTH, *channels)
        for i, hidden in enumerate(_encoder_hidden(channels)):
            self.add_module(f"block{i + 1}", _EncoderBlock(widths[i], hidden, widths[i + 1], downsample=i > 0))

    def forward(self, x):
        # Channels-last from here on: faster convolutions, and the token views below are free.
        x = self.inlayer(x).contiguous(memory_format=torch.channels_last)
        features = []
        for block in (self.block1, self.block2, self.block3, self.block4):
            x = block(x)
            features.append(x)
        return features


class _DecoderBlock(_ConvBlock):
    """The original's ``ConvBlock_up``: convs -> [bilinear x2, align_corners] -> GELU, evaluated on a
    window: ``x`` holds window ``inp`` of its grid, the result covers window ``out`` of the output grid
    (``out`` must lie ``_BLOCK_HALO`` pixels inside ``inp`` wherever ``inp`` does not reach the grid's
    border, where the convolutions' zero padding is the original's)."""

    def __init__(self, in_channels, hidden_channels, out_channels, upsample):
        super().__init__(in_channels, hidden_channels, out_channels)
        self.upsample = upsample

    def forward(self, x, inp, out):
        x = self.convs(x)
        if self.upsample:
            src = out.source(inp.height, inp.width)
            rows, cols = src.slices_in(inp)
            x = _upsample_window(x[:, :, rows, cols], src, out)
        else:
            rows, cols = out.slices_in(inp)
            x = x[:, :, rows, cols]
        return F.gelu(x)


# --------------------------------------------------------------------------------------------------
# Frequency expert (AFF)


def _twiddle_angles(rows, cols, period, device):
    """``2 pi (r * c mod period) / period`` for r < rows, c < cols, in float64 (exact integer products,
    so the angles stay small)."""
    r = torch.arange(rows, dtype=torch.float64, device=device)
    c = torch.arange(cols, dtype=torch.float64, device=device)
    return (2 * math.pi / period) * torch.remainder(r[:, None] * c[None, :], period)


def _rfft2_rows(x, rows):
    """Rows ``0 .. rows-1`` (along H) of ``torch.fft.rfft2(x, dim=(1, 2))`` for x (B, H, W, C):
    a matrix DFT along H for just those rows, then an FFT along W. Complex (B, rows, W//2+1, C)."""
    b, h, w, c = x.shape
    angle = _twiddle_angles(rows, h, h, x.device)
    basis = torch.cat((angle.cos(), -angle.sin())).to(x.dtype)  # real and imaginary parts, (2 rows, H)
    along_h = (basis @ x.reshape(b, h, w * c)).view(b, 2, rows, w, c)
    return torch.fft.fft(torch.complex(along_h[:, 0], along_h[:, 1]), dim=2)[:, :, : w // 2 + 1]


def _faithful_inverse(real, imag, h, w):
    """The original's inverse transform, ``irfft2(complex(real, imag), s=(h, w))`` over the last two
    axes of its (B, C, W', 2) arrays; here ``real``, ``imag`` are (B, W', C, 2), the result (B, h, w, C).

    irfft2 inverse-transforms the W' axis to length h (truncated or zero-padded), then reads the
    2-long axis as the half spectrum [p0, p1, 0, ...] of a real signal of length w, which is
    ``(Re p0 + 2 Re(p1 exp(2 pi i x / w))) / w`` (irfft drops the imaginary part of p0). Written out,
    this costs two small matrix products instead of two FFTs over zero-padded arrays.
    """
    b, width, c, _ = real.shape
    k = min(width, h)
    angle = _twiddle_angles(h, k, h, real.device)
    cos, sin = (angle.cos() / h).to(real.dtype), (angle.sin() / h).to(real.dtype)
    real, imag = real[:, :k].reshape(b, k, 2 * c), imag[:, :k].reshape(b, k, 2 * c)
    # (1/h) sum_k (a + ib)(cos + i sin): the inverse DFT of the W' axis as real matrix products
    p_real = (cos @ real - sin @ imag).view(b, h, c, 2)
    p1_imag = (sin @ real[..., 1::2] + cos @ imag[..., 1::2])  # only p1's imaginary part is read
    x = torch.arange(w, dtype=torch.float64, device=real.device) * (2 * math.pi / w)
    basis = torch.stack((torch.ones_like(x), 2 * x.cos(), -2 * x.sin()), dim=1).div(w).to(real.dtype)
    coefficients = torch.stack((p_real[..., 0], p_real[..., 1], p1_imag), dim=2)  # (B, h, 3, C)
    return basis @ coefficients


class _AdaptiveFrequencyFusion(nn.Module):
    """The original's ``AdaFreFusion``: a feature map's spectrum, gated in the frequency domain.

    rFFT2 over (H, W); the real and imaginary parts become 2C channels (channel ``2c`` the real and
    ``2c + 1`` the imaginary part of feature ``c``); 1x1 conv (no bias) -> BN -> ReLU; a spatial gate
    sigmoid(conv7x7([channel mean, channel max])) multiplies them. :meth:`gated_spectrum` returns the
    gated spectrum; the fusion module sums both inputs' and transforms back once.
    """

    def __init__(self, channels):
        super().__init__()
        self.conv_layer = nn.Conv2d(2 * channels, 2 * channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(2 * channels)
        self.conv_layer1 = nn.Conv2d(2, 1, 7, padding=3, bias=False)

    def gated_spectrum(self, spectrum):
        """``spectrum``: (B, rows, W', C, 2) real view of (rows of) rFFT2 -> gated, the same layout."""
        b, h, w, c, _ = spectrum.shape
        # In this layout the original's interleaved 2C channels are the contiguous last dimension: the
        # 1x1 conv is a matrix product over it and BN sees a channels-last NCHW view.
        x = _linear_nhwc(spectrum.reshape(b, h, w, 2 * c), self.conv_layer.weight.flatten(1))
        x = F.relu(self.bn(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)
        pooled = torch.stack((x.mean(dim=-1), x.amax(dim=-1)), dim=1)  # (B, 2, H, W')
        gate = torch.sigmoid(self.conv_layer1(pooled)).squeeze(1).unsqueeze(-1)  # (B, H, W', 1)
        return (x * gate).reshape(b, h, w, c, 2)


# --------------------------------------------------------------------------------------------------
# Spatial expert (CASF)


class _PatchEmbed(nn.Module):
    def __init__(self, patch_size, in_channels, dim):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch_size, patch_size)

    def forward(self, x):
        """(B, C, H, W) -> tokens (B, H/p * W/p, dim), row-major over the patch grid."""
        return self.proj(x).flatten(2).transpose(1, 2)


class _QKVAttention(nn.Module):
    """The original's ``Attention``; only ``qkv`` is used (``proj`` acts on a discarded result)."""

    def __init__(self, dim):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)


class _QKVBlock(nn.Module):
    """The original's ``Block``: LayerNorm, then q, k, v of the normalised tokens."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0):
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _QKVAttention(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = ChannelsLastMlp(dim, int(dim * mlp_ratio))  # the original's ViT Mlp: never called

    def forward(self, tokens):
        """(B, N, dim) -> q, k, v, each (B, heads, N, dim / heads)."""
        b, n, d = tokens.shape
        qkv = self.attn.qkv(self.norm1(tokens))
        return qkv.reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)


class _DePatch(nn.Module):
    def __init__(self, channels, dim, patch_size):
        super().__init__()
        self.patch_size = patch_size
        self.projection = nn.Sequential(nn.Linear(dim, patch_size ** 2 * channels))

    def forward(self, tokens, height, width):
        """(B, N, dim) -> (B, C, height, width); each token's features are (p1, p2, c), c fastest."""
        b = tokens.shape[0]
        p = self.patch_size
        linear = self.projection[0]
        x = _linear_nhwc(tokens.reshape(b, height // p, width // p, -1), linear.weight, linear.bias)
        x = x.view(b, height // p, width // p, p, p, -1).permute(0, 1, 3, 2, 4, 5)
        # The result is the NHWC memory of a channels-last (B, C, H, W) tensor.
        return x.reshape(b, height, width, -1).permute(0, 3, 1, 2)


class _CrossAttentionSpatialFusion(nn.Module):
    """The original's ``CroAttSpaFusion``: ``x + y + depatch((proj1(S_x v_y) + proj2(S_y v_x)) / 2)``
    with ``S = softmax(q k^T * scale)`` each input's self-similarity of its 16x16 patches."""

    def __init__(self, patch_size, dim, num_heads, channels, qk_scale, attn_drop, proj_drop):
        super().__init__()
        self.patchembed1 = _PatchEmbed(patch_size, channels, dim)
        self.patchembed2 = _PatchEmbed(patch_size, channels, dim)
        self.QKV_Block1 = _QKVBlock(dim, num_heads)
        self.QKV_Block2 = _QKVBlock(dim, num_heads)
        self.proj1 = nn.Linear(dim, dim)
        self.proj2 = nn.Linear(dim, dim)
        self.depatch = _DePatch(channels, dim, patch_size)
        self.scale = qk_scale or (dim // num_heads) ** -0.5  # the original's `or`: qk_scale=0 -> default
        self.attn_drop = attn_drop
        self.proj_drop = proj_drop

    def _similarity(self, q, k):
        attn = torch.softmax(q @ k.transpose(-2, -1) * self.scale, dim=-1)
        return F.dropout(attn, self.attn_drop, self.training)

    def forward(self, x, y):
        tokens_x, tokens_y = self.patchembed1(x), self.patchembed2(y)
        b, n, d = tokens_x.shape
        q1, k1, v1 = self.QKV_Block1(tokens_x)
        q2, k2, v2 = self.QKV_Block2(tokens_y)
        cross1 = (self._similarity(q1, k1) @ v2).transpose(1, 2).reshape(b, n, d)
        cross2 = (self._similarity(q2, k2) @ v1).transpose(1, 2).reshape(b, n, d)
        cross1 = F.dropout(self.proj1(cross1), self.proj_drop, self.training)
        cross2 = F.dropout(self.proj2(cross2), self.proj_drop, self.training)
        return x + y + self.depatch((cross1 + cross2) / 2, x.shape[2], x.shape[3])


# --------------------------------------------------------------------------------------------------
# Experts fusion (SFEF, a Soft-MoE)


class _RMSNorm(nn.Module):
    """lucidrains' soft-moe RMSNorm: ``l2-normalise(x) * sqrt(dim) * gamma`` over the last dim."""

    def __init__(self, dim):
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.normalize(x, dim=-1) * self.scale * self.gamma


class _Experts(nn.Module):
    def __init__(self, dim, num_experts, mult):
        super().__init__()
        # Index 2 is the original's Dropout(0.0), an identity; it keeps the second Linear named `.3`.
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, dim * mult), nn.GELU(), nn.Identity(), nn.Linear(dim * mult, dim))
            for _ in range(num_experts))

    def forward(self, slots):
        """(num_experts, slots per expert, dim) -> the same, each expert on its own slots."""
        return torch.stack([expert(s) for expert, s in zip(self.experts, slots)])


class _SoftMoE(nn.Module):
    """The original's ``SpaFreExpFusion`` (from lucidrains' soft-moe) on the pixels of a feature map.

    Tokens x and slot embeddings, both RMS-normalised, give logits ``x . slot``; each slot is the
    softmax-over-all-tokens weighted mean of the normalised tokens (dispatch) and goes through its
    expert's MLP; each token's output is the softmax-over-all-slots weighted mean of the expert outputs
    (combine). 1024 slots (seq_len 1024 / 4 experts), MLP width 4x.
    """

    def __init__(self, dim, num_experts=4, seq_len=1024, expert_mult=4):
        super().__init__()
        self.slot_embeds = nn.Parameter(torch.randn(num_experts, seq_len // num_experts, dim))
        self.norm = _RMSNorm(dim)
        self.slot_norm = _RMSNorm(dim)
        self.experts = _Experts(dim, num_experts, expert_mult)

    def forward(self, parts, window):
        """parts: feature maps (B, C_i, H, W) whose channel concatenation is the input (2C channels)
        -> the output on ``window`` of the H x W grid, (B, 2C, rows, cols).

        Every token enters the dispatch; only the tokens of ``window`` are combined.
        """
        dtype = parts[0].dtype
        device = parts[0].device.type
        compute = _float_at_least_32(dtype)
        rows, cols = slice(window.top, window.bottom), slice(window.left, window.right)
        with torch.autocast(device, enabled=False):
            tokens = torch.cat([p.permute(0, 2, 3, 1).to(compute) for p in parts], dim=-1)  # (B, H, W, 2C)
            # norm(x) = x / |x| * sqrt(d) * gamma. The per-token factor is applied here and gamma is
            # folded into the slot embeddings for the logits and into the slots after the dispatch,
            # which saves two passes over the tokens.
            norm = tokens.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # F.normalize's eps
            tokens = tokens * (self.norm.scale / norm)
            gamma = self.norm.gamma.to(compute)
            slot_embeds = self.slot_norm(self.slot_embeds.to(compute)).flatten(0, 1)  # (E*S, 2C)
            gamma_slots = slot_embeds * gamma
        slots, combines = [], []
        for image in tokens[:, None]:  # one image at a time: the logits are H*W x 1024
            flat = image.view(-1, image.shape[-1])
            with torch.autocast(device, enabled=False):
                logits = _linear_nhwc(image, gamma_slots)  # (1, H, W, E*S)
                # The combine softmax (over slots) for the window's tokens only, taken before the
                # dispatch below overwrites the logits in place.
                combines.append(torch.softmax(logits[:, rows, cols], dim=-1))
                # Dispatch: softmax over all tokens, normalised after the product (one pass fewer).
                weights = logits.view(flat.shape[0], -1)
                weights = weights.sub_(weights.detach().amax(dim=0)).exp_()
                totals = weights.sum(dim=0, keepdim=True).t()
            slots.append((weights.t() @ flat) * (gamma / totals))
        # Each expert once on its slots of all images (larger, faster matrix products).
        num_experts, num_slots, dim = self.slot_embeds.shape
        slots = torch.stack(slots).view(-1, num_experts, num_slots, dim).transpose(0, 1).to(dtype)
        out = self.experts(slots.reshape(num_experts, -1, dim)).view(num_experts, -1, num_slots, dim)
        out = out.transpose(0, 1).reshape(-1, num_experts * num_slots, dim)  # (B, E*S, 2C)
        outputs = [_linear_nhwc(combine, o.t().to(combine.dtype)) for combine, o in zip(combines, out)]
        return torch.cat(outputs).permute(0, 3, 1, 2).to(dtype)


# --------------------------------------------------------------------------------------------------
# Fusion module and network


class _FusionModule(nn.Module):
    def __init__(self, patch_size, dim, num_heads, channels, qk_scale, attn_drop, proj_drop, variant):
        super().__init__()
        self.variant = variant
        self.AFFusion1 = _AdaptiveFrequencyFusion(channels)  # the original applies it to the 2nd input
        self.AFFusion2 = _AdaptiveFrequencyFusion(channels)  # ... and this one to the 1st
        self.CASFusion = _CrossAttentionSpatialFusion(patch_size, dim, num_heads, channels, qk_scale,
                                                      attn_drop, proj_drop)
        self.SFEFusion = _SoftMoE(2 * channels)

    def frequency(self, features):
        """AFFusion2(x) + AFFusion1(y) for features = cat(x, y) along the batch:
        (2B, C, H, W) -> (B, C, H, W)."""
        h, w = features.shape[2:]
        with torch.autocast(features.device.type, enabled=False):
            # The transforms run over H, W of the NHWC view, which keeps C contiguous: the (2B, H, W',
            # C, 2) real view of the spectrum is the original's interleaved channel order, no copy.
            nhwc = features.permute(0, 2, 3, 1).to(_float_at_least_32(features.dtype))
            if self.variant == "fixed":
                x, y = torch.view_as_real(torch.fft.rfft2(nhwc, dim=(1, 2))).chunk(2)
                gated = self.AFFusion2.gated_spectrum(x) + self.AFFusion1.gated_spectrum(y)
                # The inverse is linear: one irFFT2 of the summed spectra is the sum of the two irFFT2s.
                out = torch.fft.irfft2(torch.view_as_complex(gated), s=(h, w), dim=(1, 2))
            else:
                # The original's inverse reads only spectrum rows 0 and 1 (see _faithful_inverse), whose
                # 7x7 gate reads rows 0 to 4; in training BatchNorm needs the statistics of all rows.
                spectrum = (torch.fft.rfft2(nhwc, dim=(1, 2)) if self.training
                            else _rfft2_rows(nhwc, _FAITHFUL_SPECTRUM_ROWS))
                x, y = torch.view_as_real(spectrum).chunk(2)
                gated = self.AFFusion2.gated_spectrum(x) + self.AFFusion1.gated_spectrum(y)
                out = _faithful_inverse(gated[:, 0], gated[:, 1], h, w)
        return out.permute(0, 3, 1, 2).to(features.dtype)

    def forward(self, features, window):
        """features: both inputs' features cat along the batch, (2B, C, H, W) -> fused (B, 2C, window)."""
        x, y = features.chunk(2)
        return self.SFEFusion((self.CASFusion(x, y), self.frequency(features)), window)


class ASFEFusion(nn.Module):
    """ASFE-Fusion with the original's constructor arguments (see the module docstring).

    ``model(x1, x2)``: two co-registered slices (B, 1, H, W), any H, W (zero-padded, centred, to
    multiples of ``size_multiple`` = 8 * patch_size = 128, and cropped back) -> fused (B, 1, H, W),
    unbounded (no output activation). Slices of a batch are independent.

    Args:
        patch_size: patch size of the cross-attention patch embedding and de-patching (16).
        dim: token width of the cross-attention (256).
        num_heads: attention heads (8); ``dim`` must be divisible by it.
        channels: widths of the four fusion scales, even numbers. The original hard-codes its encoder's
            and decoder's widths for the default (112, 160, 208, 256) and fails with any other value;
            here they follow the rule behind those numbers (:func:`_encoder_hidden`,
            :func:`_decoder_widths`), so narrower networks are the project's extension (the demo's;
            the authors' weights need the default).
        fusionblock_depth: accepted for compatibility and ignored, as in the original.
        qk_scale: attention scale; None (or 0) means ``(dim / num_heads) ** -0.5``.
        attn_drop, proj_drop: dropout on the attention maps and after ``proj1``/``proj2`` (training only).
        variant: "faithful" (the original's forward) or "fixed" (the frequency expert's inverse FFT
            corrected); the same parameters either way (see the module docstring).
    """

    def __init__(self, patch_size=16, dim=256, num_heads=8, channels=DEFAULT_CHANNELS,
                 fusionblock_depth=(4, 4, 4, 4), qk_scale=None, attn_drop=0.0, proj_drop=0.0,
                 variant="faithful"):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        channels = tuple(int(c) for c in channels)
        if len(channels) != 4 or any(c < 2 or c % 2 for c in channels):
            raise ValueError(f"channels must be four even widths (the original's: {DEFAULT_CHANNELS}), got {channels}")
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        # fusionblock_depth is ignored, as in the original (one cross-attention layer per scale).
        self.variant = variant
        # The H/8 scale is cut into patch_size x patch_size patches: inputs are padded to this multiple.
        self.size_multiple = 8 * patch_size

        self.encoder = _Encoder(channels)
        up4, up3, up2, up1 = _decoder_widths(channels)
        self.conv_up4 = _DecoderBlock(2 * channels[3], *up4, upsample=True)
        self.conv_up3 = _DecoderBlock(3 * channels[2], *up3, upsample=True)
        self.conv_up2 = _DecoderBlock(3 * channels[1], *up2, upsample=True)
        self.conv_up1 = _DecoderBlock(3 * channels[0], *up1, upsample=False)
        for i, width in enumerate(channels):
            self.add_module(f"fusionnet{i + 1}", _FusionModule(patch_size, dim, num_heads, width, qk_scale,
                                                               attn_drop, proj_drop, variant))
        self.outlayer = nn.Conv2d(16, 1, 1)

    def forward(self, img1, img2):
        if img1.dim() != 4 or img1.shape[1] != 1 or img1.shape != img2.shape:
            raise ValueError(f"expected two (B, 1, H, W) inputs of the same shape, got "
                             f"{tuple(img1.shape)} and {tuple(img2.shape)}")
        h, w = img1.shape[2:]
        m = self.size_multiple
        pad_h, pad_w = -h % m, -w % m
        top, left = pad_h // 2, pad_w // 2
        pair = torch.cat((img1, img2))
        if pad_h or pad_w:
            pair = F.pad(pair, (left, pad_w - left, top, pad_h - top))
        crop = _Window(top, top + h, left, left + w, h + pad_h, w + pad_w)
        return self._fuse(pair, crop).to(img1.dtype)

    def _fuse(self, pair, crop):
        """The network on the padded pair (2B, 1, H, W) (both inputs along the batch), on window ``crop``."""
        features = self.encoder(pair)
        fusion = (self.fusionnet1, self.fusionnet2, self.fusionnet3, self.fusionnet4)
        decoder = (self.conv_up1, self.conv_up2, self.conv_up3, self.conv_up4)

        # Windows, from the output backwards: block l's input window (on scale l's grid) must cover
        # its output window plus the halo of its two 3x3 convolutions; for an upsampling block the
        # output window is first mapped to the source rows and columns the interpolation reads.
        inputs = [crop.grown(_BLOCK_HALO)]
        for level in range(1, 4):
            h, w = features[level].shape[2:]
            inputs.append(inputs[-1].source(h, w).grown(_BLOCK_HALO))
        outputs = [crop, *inputs[:3]]

        x = fusion[3](features[3], inputs[3])
        for level in (3, 2, 1, 0):
            x = decoder[level](x, inputs[level], outputs[level])
            if level:
                x = torch.cat((x, fusion[level - 1](features[level - 1], inputs[level - 1])), dim=1)
        return self.outlayer(x)


def _load_original(path):
    """A state dict of the original code (bare, or under "model"/"state_dict"), default configuration."""
    return load_original_state_dict(path, ASFEFusion(), "ASFE-Fusion")


def _fuse(model, x1, x2, device=None, axis=0, batch_size=4):
    """Slice by slice along ``axis`` (0 = D); the network pads each slice to multiples of 128 itself.
    The output is clipped to [0, 1], the range of the fused volumes of every method."""
    from lpmnet.methods.slicewise import fuse_slicewise

    return {"fused": fuse_slicewise(model, x1, x2, axis=axis, batch_size=batch_size, device=device, clip=True)}


#: The original's recipe (its args_setting.py and train.py): AdamW 2e-4 with its
#: default decoupled weight decay 0.01, constant rate, batch 4 of 256x256 images (here crops of slices),
#: no augmentation, seed 3407, its loss as coded.
RECIPE = dict(iterations=2000, batch_size=4, patch_size=(256, 256), slice_axis=0, lr=2e-4, betas=(0.9, 0.999),
              weight_decay=0.01, optimizer="adamw", schedule="constant", poly_power=0.9, ema_decay=0.0,
              augmentation="none", loss="asfe", loss_settings={}, seed=3407)

METHOD = FusionMethod(name="asfe", description="ASFE-Fusion (Gu et al.): 2D spatial and frequency experts with a "
                      "Soft-MoE fusion, slice by slice", dims=2, build=ASFEFusion, fuse=_fuse, recipe=RECIPE,
                      settings=("axis", "batch_size"), load_original=_load_original)
