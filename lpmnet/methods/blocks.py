"""Network building blocks that more than one method uses, defined once.

Their attribute names are the originals' (``fc1``/``fc2`` of timm's ``Mlp``), so that the state dicts
of the original codes still load strictly into the methods that use them. Blocks that only look alike
stay with their method: the LayerNorms of DC2Fusion (``ChannelsFirstLayerNorm``, ``.norm`` over the
channels of a (B, C, D, H, W) tensor), of MambaDFuse (``LayerNorm``, ``.body`` over channel-major
tokens, computed with bmm) and ASFE's RMSNorm (``gamma``) differ in computation and parameter names.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["StochasticDepth", "ChannelsLastMlp"]


class StochasticDepth(nn.Module):
    """Stochastic depth per sample (training only), as timm's ``DropPath`` with ``scale_by_keep``:
    each sample of the batch is zeroed with probability ``drop_prob`` and the kept ones are scaled by
    ``1 / (1 - drop_prob)``. The identity in eval mode or for ``drop_prob`` 0. No parameters."""

    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class ChannelsLastMlp(nn.Module):
    """Linear(dim -> hidden) -> GELU -> Linear(hidden -> dim) over the last (channel) axis: the
    transformer MLP of timm's ``Mlp`` without dropout (state-dict keys ``fc1.*``, ``fc2.*``)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))
