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
from pathlib import Path
from typing import Callable

from lpmnet.errors import InputError

#: Method name -> the module that defines its METHOD.
MODULES = {
    "lpmnet": "lpmnet.methods.lpmnet",
    "mambadfuse": "lpmnet.methods.mambadfuse",
    "asfe": "lpmnet.methods.asfe",
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


def _describe_keys(kind, keys):
    shown = ", ".join(repr(k) for k in keys[:3])
    more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
    return f"{len(keys)} {kind} key(s): {shown}{more}"


def load_original_state_dict(path, model, name, wrappers=("model", "state_dict")):
    """Load a state dict saved by an original code into ``model`` (strict), in eval mode, on the CPU.

    The file holds the dict bare or under one of ``wrappers`` (the first present wins), its keys
    possibly with DataParallel's ``module.`` prefix. Anything else (not a file, not a dict of
    tensors, missing, unexpected or mis-shaped keys) raises an InputError naming ``path`` and, for
    keys, which ones, so that a checkpoint of another network or configuration is caught at once.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"{name} checkpoint file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or foreign files
        raise InputError(path, f"not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from None
    state_dict = payload
    if isinstance(payload, dict):
        state_dict = next((payload[k] for k in wrappers if isinstance(payload.get(k), dict)), payload)
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise InputError(path, f"not a {name} state dict (expected a dict of tensors, bare or under "
                               f"{' or '.join(map(repr, wrappers))})")
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}  # DataParallel saves
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        found = "; ".join(_describe_keys(kind, keys) for kind, keys in (("missing", missing),
                                                                       ("unexpected", unexpected)) if keys)
        raise InputError(path, f"not a {name} state dict of this configuration: {found}")
    for key, tensor in expected.items():
        if state_dict[key].shape != tensor.shape:
            raise InputError(path, f"not a {name} state dict of this configuration: {key!r} has shape "
                                   f"{tuple(state_dict[key].shape)}, expected {tuple(tensor.shape)}")
    model.load_state_dict(state_dict, strict=True)
    return model.eval()
