"""Mamba-1 block with the parameterisation and state-dict names of mamba-ssm's ``mamba_simple.Mamba``.

Only the selective scan and the causal depthwise convolution differ between devices; both go through
:mod:`lpmnet.ops.backends`, which picks the mamba-ssm / causal-conv1d CUDA kernels when they are installed and
the tensors are on CUDA, and the project's own kernels otherwise. Keeping the parameter names identical
to mamba-ssm is what lets checkpoints of the original LPM-Net code load with ``strict=True``.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from lpmnet.precision import at_least_float32
from lpmnet.ops.causal_conv1d import causal_conv1d
from lpmnet.ops.selective_scan import selective_scan


class Mamba(nn.Module):
    """Selective state-space block (Gu & Dao 2023), sequences in (batch, length, d_model) layout.

    Args:
        d_model: token width.
        d_state: SSM state size N per channel.
        d_conv: width of the causal depthwise convolution.
        expand: d_inner = expand * d_model.
        dt_rank: rank of the input-dependent step size; "auto" = ceil(d_model / 16) as in mamba-ssm.
        dt_min, dt_max, dt_init_floor, dt_scale: initialisation of the step size (log-uniform in
            [dt_min, dt_max]), exactly mamba-ssm's, so a freshly initialised model trains like the original.
        conv_bias, bias: biases of the depthwise convolution and of the in/out projections.
        scan_backend: "auto", "cuda", "cpu" or "torch" (see :mod:`lpmnet.ops.backends`).
    """

    def __init__(
        self,
        d_model,
        d_state=16,
        d_conv=4,
        expand=2,
        dt_rank="auto",
        dt_min=0.001,
        dt_max=0.1,
        dt_init_floor=1e-4,
        dt_scale=1.0,
        conv_bias=True,
        bias=False,
        scan_backend="auto",
    ):
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.scan_backend = scan_backend

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.conv1d = nn.Conv1d(
            self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner,
            padding=d_conv - 1, bias=conv_bias,
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

        # The step-size projection starts small so that early training neither forgets nor explodes.
        dt_init_std = self.dt_rank ** -0.5 * dt_scale
        nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        dt = torch.exp(
            torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        ).clamp(min=dt_init_floor)
        with torch.no_grad():
            # Inverse of softplus, so that softplus(bias) == dt at initialisation.
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

        # S4D-real initialisation: A = -(1..N) per channel, stored as log for positivity.
        a = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(a))
        self.D = nn.Parameter(torch.ones(self.d_inner))

    def forward(self, hidden_states):
        """hidden_states: (batch, length, d_model) -> (batch, length, d_model)."""
        # The fused projections (in_proj to x and z, x_proj to dt, B and C) run as one product per
        # part: each result is then a contiguous (batch, length, width) tensor, and the backward
        # needs no concatenation of strided gradient halves (about a fifth of the layer's time on a
        # CPU). The numbers are those of the fused products.
        d, r, n = self.d_inner, self.dt_rank, self.d_state
        w_in, b_in = self.in_proj.weight, self.in_proj.bias
        x = F.linear(hidden_states, w_in[:d], None if b_in is None else b_in[:d])
        z = F.linear(hidden_states, w_in[d:], None if b_in is None else b_in[d:])
        # (batch, d_inner, length) views from here; the CPU conv kernel keeps the (batch, length, d)
        # layout, so x_proj below reads its output without a copy.
        x = causal_conv1d(x.transpose(1, 2), self.conv1d.weight, self.conv1d.bias, activation="silu",
                          backend=self.scan_backend)
        tokens = x.transpose(1, 2)
        w_x = self.x_proj.weight
        dt, b, c = (F.linear(tokens, w) for w in (w_x[:r], w_x[r:r + n], w_x[r + n:]))
        # The dt bias is applied inside the scan (delta_bias) exactly as mamba-ssm does.
        delta = F.linear(dt, self.dt_proj.weight).transpose(1, 2)
        y = selective_scan(
            x,
            delta,
            -torch.exp(at_least_float32(self.A_log)),
            b.transpose(1, 2),
            c.transpose(1, 2),
            D=at_least_float32(self.D),
            z=z.transpose(1, 2),
            delta_bias=at_least_float32(self.dt_proj.bias),
            delta_softplus=True,
            backend=self.scan_backend,
        )
        return self.out_proj(y.transpose(1, 2))
