"""Fusion methods behind one interface: the project's LPM-Net and the published networks.

Each method is one module of this package that defines ``METHOD``, a :class:`FusionMethod`: how to
load its network from a checkpoint and how to fuse a co-registered pair of volumes with it. The
volumes come in the original LPM-Net code's (D, H, W) layout, normalised to [0, 1]
(:func:`lpmnet.fuse.fuse_files` does that and writes the result on the fixed input's grid), so a
method only maps two arrays to a fused array. 2D networks fuse slice by slice
(:func:`lpmnet.slicewise.fuse_slicewise`).

:func:`get_method` looks a method up by name; the modules are imported only when asked for.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

#: Method name -> the module that defines its METHOD.
MODULES = {
    "lpmnet": "lpmnet.methods.lpmnet",
    "mambadfuse": "lpmnet.methods.mambadfuse",
}


@dataclass(frozen=True)
class FusionMethod:
    """One fusion method.

    ``load(path, map_location)`` -> (network in eval mode, model card dict) reads its checkpoints;
    ``fuse(model, x1, x2, device, **settings)`` -> dict with at least ``"fused"`` ((D, H, W) float32
    in [0, 1]; LPM-Net adds ``"base"`` and ``"detail"``) fuses two (D, H, W) arrays in [0, 1].
    ``settings`` names the keyword arguments ``fuse`` takes (so that callers can refuse others).
    """

    name: str
    description: str
    dims: int
    load: Callable
    fuse: Callable
    settings: tuple[str, ...] = ()


def get_method(name) -> FusionMethod:
    """The method called ``name``; an unknown name raises ValueError listing the known ones."""
    if name not in MODULES:
        raise ValueError(f"unknown fusion method {name!r}; known methods: {', '.join(MODULES)}")
    return importlib.import_module(MODULES[name]).METHOD
