"""Fusion methods behind one interface: the project's LPM-Net and the published networks.

Each method is one module that defines ``METHOD``, a :class:`FusionMethod`: how to build its network
from keyword arguments, how to fuse a co-registered pair of volumes with it, its training recipe (the
original's loss, optimiser, schedule, patch or crop sampling and augmentation, as
:class:`lpmnet.engine.train.TrainConfig` settings) and how to read its checkpoints. The volumes come in the
original LPM-Net code's (D, H, W) layout, normalised to [0, 1] (:func:`lpmnet.engine.fuse.fuse_files` does that
and writes the result on the fixed input's grid), so a method only maps two arrays to a fused array.
2D networks fuse slice by slice (:func:`lpmnet.methods.slicewise.fuse_slicewise`). One training engine
(:func:`lpmnet.engine.train.train`) serves every method; only the recipe differs.

:func:`get_method` looks a method up by its registered name or, for a method of your own, by the dotted
name of the module that defines its METHOD (README, "Add your own method"); modules are imported only
when asked for. :func:`registry` lists every method by kind: the networks of :data:`MODULES` ("learned")
and the classical rules of :data:`CLASSICAL` (:mod:`lpmnet.methods.classical`, no network). Checkpoints of
every method share one format (:func:`save_checkpoint`, :func:`read_checkpoint`, :func:`load_checkpoint_of`):
the network's constructor arguments, its weights, the method's name and a model card; a method's own reader
(LPM-Net's :func:`lpmnet.methods.lpmnet.network.load_checkpoint`) builds on them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lpmnet.errors import InputError

CHECKPOINT_FORMAT = "lpmnet-checkpoint"
CHECKPOINT_VERSION = 1

#: Learned method name -> the module that defines its METHOD.
MODULES = {
    "lpmnet": "lpmnet.methods.lpmnet",
    "mambadfuse": "lpmnet.methods.mambadfuse",
    "asfe": "lpmnet.methods.asfe",
    "dc2fusion": "lpmnet.methods.dc2fusion",
}

#: Names of the classical reference rules (voxel-wise, nothing learnt), fused by
#: :func:`lpmnet.methods.classical.fuse_classical_files`.
CLASSICAL = ("mean", "max", "pca", "laplacian")

#: The kinds of fusion method that :func:`registry` tells apart.
LEARNED, CLASSICAL_KIND = "learned", "classical"


def registry():
    """Every registered method name -> its kind: the networks of :data:`MODULES` ("learned", built and
    loaded by :func:`get_method`), then the rules of :data:`CLASSICAL` ("classical")."""
    return {**{name: LEARNED for name in MODULES}, **{name: CLASSICAL_KIND for name in CLASSICAL}}


def is_classical(name):
    """Whether ``name`` is a classical rule (:data:`CLASSICAL`) rather than a network."""
    return name in CLASSICAL

#: mem_mb of the jobs of a method that does not estimate its own.
DEFAULT_JOB_MB = 8000

#: The settings of :class:`lpmnet.engine.train.TrainConfig` that make up a method's training recipe.
RECIPE_KEYS = ("iterations", "batch_size", "patch_size", "slice_axis", "lr", "betas", "weight_decay", "optimizer",
               "schedule", "poly_power", "ema_decay", "augmentation", "loss", "loss_settings", "seed")


@dataclass(frozen=True)
class FusionMethod:
    """One fusion method.

    ``build(**kwargs)`` -> the network (defaults: the configuration the authors trained); its
    ``forward(x1, x2)`` takes two (B, 1, H, W) slices (``dims`` 2) or (B, 1, D, H, W) volumes
    (``dims`` 3) in [0, 1] and returns the fused tensor or an object with ``.fused``.
    ``fuse(model, x1, x2, device, **settings)`` -> dict with at least ``"fused"`` ((D, H, W) float32
    in [0, 1]; LPM-Net adds ``"base"`` and ``"detail"``) fuses two (D, H, W) arrays in [0, 1];
    ``settings`` names the keyword arguments ``fuse`` takes (so that callers can refuse others).
    ``recipe``: the original's training recipe, a value for every key of :data:`RECIPE_KEYS`.
    ``patch_multiple``, ``min_patch``: training patch (3D) or crop (2D) edges must be multiples of the
    one and at least the other.
    ``load_original(path)`` -> network in eval mode: reads a state dict saved by the original code
    (None: the method has no original weights to read); project checkpoints are read by
    :func:`load_checkpoint_of`. ``fusion_mem_mb(fixed_path, model_kwargs, settings)`` and
    ``training_mem_mb(volume_paths, train_config)``: the megabytes a fusion job on the grid of
    ``fixed_path`` or a training job on those volumes needs (the workflow's ``mem_mb``; None:
    :data:`DEFAULT_JOB_MB`). ``pretrained(kind)`` -> the path of the checkpoint the method ships for a
    kind of modality pair (:mod:`lpmnet.methods.pretrained`; None: it ships none).
    """

    name: str
    description: str
    dims: int
    build: Callable
    fuse: Callable
    recipe: dict
    settings: tuple[str, ...] = ()
    patch_multiple: int = 1
    min_patch: int = 1
    load_original: Callable | None = None
    fusion_mem_mb: Callable | None = None
    training_mem_mb: Callable | None = None
    pretrained: Callable | None = None

    def __post_init__(self):
        missing = [k for k in RECIPE_KEYS if k not in self.recipe]
        if missing:
            raise ValueError(f"method {self.name}: its recipe lacks {', '.join(missing)}")

    def load(self, path, map_location="cpu"):
        """(network in eval mode, model card) from a checkpoint of this method (see :func:`load_checkpoint_of`)."""
        return load_checkpoint_of(self, path, map_location)


def get_method(name) -> FusionMethod:
    """The method registered as ``name``, or the METHOD of the module with dotted name ``name``.

    An unknown name, a module that cannot be imported or one without a METHOD raises ValueError
    naming it (and the registered methods)."""
    if name in MODULES:
        return importlib.import_module(MODULES[name]).METHOD
    known = f"registered methods: {', '.join(MODULES)}; or the dotted name of a module that defines METHOD"
    if "." not in str(name):
        raise ValueError(f"unknown fusion method {name!r}; {known}")
    try:
        module = importlib.import_module(name)
    except ImportError as err:
        raise ValueError(f"fusion method module {name!r} cannot be imported ({err}); {known}") from None
    method = getattr(module, "METHOD", None)
    if not isinstance(method, FusionMethod):
        raise ValueError(f"module {name!r} defines no METHOD (a lpmnet.methods.FusionMethod)")
    return method


def fused_of(output):
    """The fused tensor of a network's output (a tensor, or an object with ``.fused``)."""
    return getattr(output, "fused", output)


def model_device(model, device=None):
    """The device a fusion runs on: ``device`` when given, else the one of the model's first parameter
    (CPU for a parameterless callable)."""
    import torch

    if device is not None:
        return torch.device(device)
    parameters = getattr(model, "parameters", None)
    first = next(parameters(), None) if callable(parameters) else None
    return first.device if first is not None else torch.device("cpu")


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())


def save_checkpoint(path, model, method, model_kwargs, model_card=None, **training_state):
    """Write a checkpoint of ``method`` (its name) atomically, in the project's one format.

    It stores the method, the constructor arguments ``model_kwargs`` (``method.build(**model_kwargs)``
    rebuilds the network), the weights, a model card (plain JSON: data, shapes, recipe, versions) and
    any extra training state (optimiser, scheduler, iteration) needed to resume.
    """
    import json

    import torch

    from lpmnet.volumes.io import atomic_output, to_jsonable

    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "method": method,
        "model_kwargs": json.loads(json.dumps(to_jsonable(dict(model_kwargs)))),
        "state_dict": model.state_dict(),
        # Plain JSON types only, so that the file loads with torch.load(weights_only=True).
        "model_card": json.loads(json.dumps(to_jsonable(model_card or {}))),
        **training_state,
    }
    # Saved through a stream: torch.save names the archive inside the file after a path's stem (here the
    # temporary file's random one), which would make two saves of one model differ in their sha256.
    with atomic_output(path) as tmp, open(tmp, "wb") as stream:
        torch.save(payload, stream)


def read_payload(path, map_location="cpu"):
    """What a checkpoint file holds (any pickle-free PyTorch file); InputError naming it otherwise."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint file not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or foreign files
        raise InputError(path, f"not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from None


def is_project_checkpoint(payload):
    return isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT


def read_checkpoint(path, name, map_location="cpu"):
    """(payload, is_project) of the checkpoint file ``path`` for the method named ``name``.

    A project checkpoint (:func:`save_checkpoint`) must be one of ``name`` (files written before
    checkpoints named their method are LPM-Net's): ``(payload, True)``; another method's raises InputError.
    Any other readable file is returned as it is, ``(payload, False)``, for the method's reader of
    original state dicts (:func:`original_state_dict`). An unreadable file raises InputError naming it.
    """
    payload = read_payload(path, map_location)
    if not is_project_checkpoint(payload):
        return payload, False
    found = payload.get("method", "lpmnet")
    if found != name:
        raise InputError(path, f"a checkpoint of method {found}, not of {name}")
    return payload, True


def load_checkpoint_of(method, path, map_location="cpu"):
    """(network of ``method`` in eval mode on ``map_location``, model card) from ``path``.

    A project checkpoint must be one of this method (files written before checkpoints named their
    method are LPM-Net's) and its weights must fit ``method.build(**model_kwargs)`` exactly; any
    other file is read by the method's ``load_original`` (a state dict of the original code). A
    checkpoint of another method, of another architecture, or an unreadable file raises InputError
    naming the file and the problem. The network's ``model_kwargs`` attribute holds its constructor
    arguments (an original's: those its ``load_original`` says, else {}, the method's defaults).
    """
    payload, is_project = read_checkpoint(path, method.name, map_location)
    if not is_project:
        if method.load_original is None:
            raise InputError(path, f"not a checkpoint of method {method.name} (and {method.name} reads no "
                                   "original state dicts)")
        model = method.load_original(path).to(map_location)
        model.__dict__.setdefault("model_kwargs", {})
        return model, {"method": method.name, "source": str(path)}
    kwargs = payload["model_kwargs"]
    try:
        model = method.build(**kwargs)
    except (TypeError, ValueError) as err:
        raise InputError(path, f"its model_kwargs do not build {method.name}: {err}") from None
    check_state_dict(path, payload["state_dict"], model, f"{method.name}{kwargs}")
    model.load_state_dict(payload["state_dict"], strict=True)
    model.model_kwargs = dict(kwargs)
    return model.to(map_location).eval(), payload.get("model_card", {})


def _describe_keys(kind, keys):
    shown = ", ".join(repr(k) for k in keys[:3])
    more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
    return f"{len(keys)} {kind} key(s): {shown}{more}"


def original_state_dict(path, payload, name, wrappers=("model", "state_dict")):
    """The state dict that an original code saved (``payload``, read from ``path``): bare or under one of
    ``wrappers`` (the first present wins), DataParallel's ``module.`` prefixes removed. Anything that is not
    a dict of tensors raises an InputError naming ``path`` and saying it is no ``name`` state dict."""
    import torch

    state_dict = payload
    if isinstance(payload, dict):
        state_dict = next((payload[k] for k in wrappers if isinstance(payload.get(k), dict)), payload)
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise InputError(path, f"not a {name} state dict (expected a dict of tensors, bare or under "
                               f"{' or '.join(map(repr, wrappers))})")
    return {k.removeprefix("module."): v for k, v in state_dict.items()}  # DataParallel saves


def load_original_state_dict(path, model, name, wrappers=("model", "state_dict")):
    """Load a state dict saved by an original code (:func:`original_state_dict`) into ``model`` (strict), in
    eval mode, on the CPU. Missing, unexpected or mis-shaped keys raise an InputError naming ``path`` and
    the keys, so that a checkpoint of another network or configuration is caught at once.
    """
    state_dict = original_state_dict(path, read_payload(path), name, wrappers)
    check_state_dict(path, state_dict, model, name)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def check_state_dict(path, state_dict, model, name):
    """InputError naming ``path`` and the keys when ``state_dict`` does not fit ``model`` exactly."""
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
