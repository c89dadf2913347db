"""One training engine for every fusion method: the method's recipe, the project's bookkeeping.

What differs between methods is their recipe (:attr:`lpmnet.methods.FusionMethod.recipe`, the
original's settings of :class:`TrainConfig`): the loss (any loss of :data:`lpmnet.engine.losses.LOSSES` that
supports the network's dimension, so a method can train with another's), the optimiser (Adam or AdamW),
the schedule (cosine annealing or poly stepped per epoch, or constant), an exponential moving average of
the weights, the sampling (3D patches of the volumes, or 2D crops of their slices along ``slice_axis``)
and the augmentation (random flips per axis, or one of the eight flip/rot90 modes of a 2D crop, DC2Fusion's;
ours: ``acquisition``, and a fraction of the patches drawn from their pair normalised inside the head). What
every method gets: patches centred on foreground voxels, an epoch as one pass over the training pairs,
periodic atomic checkpoints, exact resume after a kill, a CSV log of every loss term per iteration with
validation metrics, AMP on CUDA and a progress bar on a terminal.

Determinism: every random draw of iteration i (which pairs, where the patch is, the augmentation, the
reconstruction masks) comes from generators seeded with (seed, i). Resuming from a checkpoint therefore
replays exactly the iterations an uninterrupted run would have made; on the CPU two runs with the same
seed give bit-identical weights.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import logging
import math
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from lpmnet import __version__
from lpmnet.volumes.io import dhw, file_digest, load_volume, to_jsonable
from lpmnet.engine.losses import make_loss
from lpmnet.engine.device import resolve_device
from lpmnet.errors import InputError
from lpmnet.methods import (RECIPE_KEYS, get_method, is_project_checkpoint, load_checkpoint_of, read_payload,
                            save_checkpoint)
from lpmnet.metrics._shared import minmax01 as minmax_tensor
from lpmnet.volumes.normalize import head_windows, in_head, minmax01, unit_range
from lpmnet.methods.pretrained import resolve as resolve_pretrained

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
FINAL_CHECKPOINT = "model.pt"
KEPT_CHECKPOINTS = "checkpoints"
TRAINING_LOG = "training_log.csv"

OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("cosine", "poly", "constant")
AUGMENTATIONS = ("flips", "dihedral", "dc2fusion", "acquisition", "none")


class _FromRecipe:
    """Default of a recipe setting: the method's own value (see :class:`TrainConfig`)."""

    def __repr__(self):
        return "<the method's recipe>"


RECIPE = _FromRecipe()


@dataclass
class TrainConfig:
    """Every parameter that changes the trained model.

    ``method`` names the network (:func:`lpmnet.methods.get_method`); the recipe settings left at their
    default take the method's recipe, the original's (LPM-Net: Adam 1e-4, wd 3e-4, cosine per epoch,
    3000 iterations, 64^3 patches instead of the original's whole resized volumes). They are:

    - ``iterations``, ``batch_size``, ``seed``;
    - ``patch_size``: 3D methods a (D, H, W) patch, 2D methods an (H, W) crop of a slice along
      ``slice_axis`` (0 = D, the files' slice axis); edges multiples of the method's ``patch_multiple``;
      None: whole volumes or slices;
    - ``lr``, ``betas``, ``weight_decay``, ``optimizer`` ("adam", with weight decay as L2, or "adamw");
    - ``schedule``: "cosine" (annealing over the epochs, stepped per epoch), "poly" (lr (1 -
      epoch/epochs)^poly_power) or "constant";
    - ``ema_decay``: 0, or the decay of an exponential moving average of the weights that becomes the
      final model (MambaDFuse: 0.999);
    - ``augmentation``: "flips" (each axis flipped with probability 1/2), "dihedral" (2D: one of the 8
      flip/rot90 modes, rotations only on square crops), "acquisition" (the flips, then what scanners,
      protocols and normalisations vary: :func:`acquisition_augment`; ours) or "none";
    - ``head_fraction``: the probability that a patch is drawn from its pair normalised inside the head,
      background exactly 0, before its augmentation (ours, see :class:`PatchSampler`); 0 (default) never;
    - ``loss`` (a name of :data:`lpmnet.engine.losses.LOSSES`) and ``loss_settings`` (its keyword arguments).

    ``recreate_optimizer=True`` reproduces ASFE-Fusion's training loop, which constructs its AdamW inside
    the per-batch function: every step starts from fresh moments, so each update is about lr * sign(grad)
    (plus the decoupled weight decay). The default keeps one optimiser, as every other original does.
    ``keep_every`` N > 0 keeps the model every N iterations as ``checkpoints/iteration-<n>.pt`` (the
    weights the final model would have at that point, the average when there is an EMA), so that
    metrics can be plotted against iterations; 0 keeps none.
    ``init``: None (random initial weights, seeded), the path of a checkpoint of this method and
    architecture whose weights training starts from (fine-tuning), or a shipped LPM-Net model
    (:mod:`lpmnet.methods.pretrained`): ``mri-mri``, ``mri-pet`` or ``pretrained`` (the kind of the first
    pair's file names).
    ``batch_minmax=True`` reproduces ASFE-Fusion's data loader, which min-max scales each modality's
    batch tensor as a whole to [0, 1] (the samples of a batch are not scaled one by one); by default
    the samples keep the [0, 1] scale of their volumes.
    """

    method: str = "lpmnet"
    iterations: int = RECIPE
    batch_size: int = RECIPE
    patch_size: tuple[int, ...] | None = RECIPE
    slice_axis: int = RECIPE
    lr: float = RECIPE
    betas: tuple[float, float] = RECIPE
    weight_decay: float = RECIPE
    optimizer: str = RECIPE
    schedule: str = RECIPE
    poly_power: float = RECIPE
    ema_decay: float = RECIPE
    augmentation: str = RECIPE
    loss: str = RECIPE
    loss_settings: dict = RECIPE
    seed: int = RECIPE
    head_fraction: float = 0.0
    recreate_optimizer: bool = False
    batch_minmax: bool = False
    checkpoint_every: int = 100
    keep_every: int = 0
    init: str | None = None
    val_every: int = 200
    val_metrics: tuple[str, ...] = ("SSIM", "Qabf", "SF", "PSNR")
    amp: bool = True
    model: dict = field(default_factory=dict)

    def __post_init__(self):
        spec = get_method(self.method)
        for key in RECIPE_KEYS:
            if getattr(self, key) is RECIPE:
                setattr(self, key, copy.deepcopy(spec.recipe[key]))
        if self.patch_size is not None and len(self.patch_size) == 0:
            self.patch_size = None  # the config's [] = whole volumes or slices
        if self.patch_size is not None:
            self.patch_size = tuple(int(p) for p in self.patch_size)
            m = spec.patch_multiple
            if len(self.patch_size) != spec.dims or any(p < spec.min_patch or p % m for p in self.patch_size):
                raise ValueError(f"patch_size of {self.method} must be {spec.dims} multiples of {m} of at least "
                                 f"{max(spec.min_patch, m)}, not {self.patch_size}")
        if self.keep_every < 0:
            raise ValueError(f"keep_every must be 0 (keep none) or a positive number of iterations, not {self.keep_every}")
        if self.iterations < 1 or self.batch_size < 1:
            raise ValueError("iterations and batch_size must be at least 1")
        for key, allowed in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("augmentation", AUGMENTATIONS)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {', '.join(allowed)}, not {getattr(self, key)!r}")
        if self.slice_axis not in (0, 1, 2):
            raise ValueError(f"slice_axis must be 0, 1 or 2, not {self.slice_axis!r}")
        if isinstance(self.head_fraction, bool) or not 0 <= self.head_fraction <= 1:
            raise ValueError(f"head_fraction must be a number in [0, 1], not {self.head_fraction!r}")
        self.head_fraction = float(self.head_fraction)
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), not {self.ema_decay}")
        make_loss(self.loss, spec.dims, self.loss_settings)  # an unknown loss or setting fails here
        self.betas = tuple(self.betas)
        self.val_metrics = tuple(self.val_metrics)

    @classmethod
    def settings(cls):
        """The names of every setting."""
        return tuple(f.name for f in fields(cls))


def load_pair(path1, path2, normalize=True):
    """Two co-registered volumes in (D, H, W) layout, in [0, 1] each (the model's input).

    ``normalize`` (:func:`lpmnet.volumes.normalize.unit_range`, the one owner of the convention): True
    (default), raw volumes, each min-max scaled; False, volumes normalised before, used as they are."""
    v1, v2 = load_volume(path1), load_volume(path2)
    if v1.data.shape != v2.data.shape:
        raise ValueError(f"{path1} and {path2} have different shapes {v1.data.shape} and {v2.data.shape}: "
                         "register them onto one grid first")
    return unit_range(dhw(v1.data), normalize), unit_range(dhw(v2.data), normalize)


class PatchSampler:
    """Draws training samples centred on foreground voxels, so that patches are not background.

    3D (``slice_axis`` None): (D, H, W) patches of ``patch_size`` (None: whole volumes). 2D: the slice
    along ``slice_axis`` through a foreground voxel, cropped to ``patch_size`` (H, W) around it (None:
    the whole slice); slices without foreground are never drawn (as the 2D methods' recipe asks). Each
    sample comes with probability ``head_fraction`` from its pair normalised inside the head
    (:func:`lpmnet.volumes.normalize.normalize_in_head`), then goes through ``augmentation``.
    """

    def __init__(self, volumes, patch_size, augmentation, slice_axis=None, head_fraction=0.0):
        self.volumes = volumes
        self.patch_size = patch_size
        self.augmentation = augmentation
        self.slice_axis = slice_axis
        self.head_fraction = head_fraction
        # Inputs normalised inside the head (lpmnet.volumes.normalize.normalize_in_head) meet the network with
        # a step from exactly 0 to the head's edge, which the workflow's normalisation (its background
        # windowed, not cut) rarely gives; a model trained without that step leaves a halo around the head.
        # The mask and windows are kept, not normalised copies (a patch is normalised when drawn: the same
        # values at a quarter of the memory); a pair without a head (a constant volume) is drawn as it is.
        self.heads = [head_windows(x1, x2) for x1, x2 in volumes] if head_fraction > 0 else None
        self.foreground = []
        for x1, x2 in volumes:
            combined = np.maximum(x1, x2)
            self.foreground.append(np.flatnonzero(combined > combined.mean()))

    def sample(self, index, rng):
        x1, x2 = self.volumes[index]
        fg = self.foreground[index]
        centre = np.unravel_index(fg[rng.integers(len(fg))], x1.shape) if len(fg) else \
            [rng.integers(s) for s in x1.shape]
        in_head_of = self.heads[index] if self.heads is not None and rng.random() < self.head_fraction else None
        head = in_head_of[0] if in_head_of is not None else None
        if self.slice_axis is not None:
            x1, x2 = (np.take(x, centre[self.slice_axis], axis=self.slice_axis) for x in (x1, x2))
            if head is not None:
                head = np.take(head, centre[self.slice_axis], axis=self.slice_axis)
            centre = [c for a, c in enumerate(centre) if a != self.slice_axis]
        if self.patch_size is not None:
            size = [min(p, s) for p, s in zip(self.patch_size, x1.shape)]
            starts = [int(np.clip(c - p // 2, 0, s - p)) for c, p, s in zip(centre, size, x1.shape)]
            window = tuple(slice(st, st + p) for st, p in zip(starts, size))
            x1, x2 = x1[window], x2[window]
            # A volume thinner than the patch (thick clinical slices) is padded with background, so that
            # every patch of a batch has the patch's shape.
            padding = [(0, p - s) for p, s in zip(self.patch_size, x1.shape)]
            if any(after for _, after in padding):
                x1, x2 = (np.pad(x, padding) for x in (x1, x2))
            if head is not None:
                head = np.pad(head[window], padding)
        if head is not None:
            x1, x2 = (in_head(x, head, w) for x, w in zip((x1, x2), in_head_of[1]))
        if self.augmentation in ("flips", "acquisition"):
            axes = tuple(a for a in range(x1.ndim) if rng.random() < 0.5)
            if axes:
                x1, x2 = np.flip(x1, axes), np.flip(x2, axes)
            if self.augmentation == "acquisition":
                x1, x2 = acquisition_augment(x1, x2, rng)
        elif self.augmentation == "dihedral":
            # The 8 modes of KAIR's augment_img (MambaDFuse's training data): rot90 k times, then a
            # flip; a non-square crop keeps its shape (batches stack) with k in {0, 2} only.
            mode = int(rng.integers(8))
            turns = mode % 4 if x1.shape[0] == x1.shape[1] else 2 * (mode % 2)
            x1, x2 = np.rot90(x1, turns), np.rot90(x2, turns)
            if mode >= 4:
                x1, x2 = np.flipud(x1), np.flipud(x2)
        elif self.augmentation == "dc2fusion":
            x1, x2 = dc2fusion_augment(x1, x2, rng)
        return np.ascontiguousarray(x1), np.ascontiguousarray(x2)


#: :func:`acquisition_augment`'s draws: (probability, range) of each change.
ACQUISITION_GAMMA = (0.5, (0.6, 1.6))        # intensity non-linearity: x ** gamma, log-uniform gamma
ACQUISITION_BIAS = (0.5, 0.25)               # smooth multiplicative field exp(quadratic), up to +-25 %
ACQUISITION_BLUR = (0.3, (0.5, 2.0))         # thick slices: Gaussian blur along one axis, sigma in voxels
ACQUISITION_NOISE = (0.5, (0.0, 0.03))       # Gaussian noise in the tissue, sigma in units of the [0, 1] range
ACQUISITION_PEDESTAL = (0.3, (0.0, 0.4))     # a window set inside the head: the head raised, the rest kept 0


def acquisition_augment(x1, x2, rng):
    """A training pair as other scanners, protocols and normalisations might have given it. Each input is
    changed on its own (:func:`acquisition_change`); then, with the probability of ``ACQUISITION_PEDESTAL``
    for each input, the head (where either input is above 0) is raised by a pedestal while the rest stays 0:
    the step at the head's edge that a normalisation taking its percentiles inside the head gives. The
    synthetic and the few real training volumes have one contrast curve, no bias, one resolution and one
    normalisation each; real inputs do not. Ours (no original uses it)."""
    x1, x2 = acquisition_change(x1, rng), acquisition_change(x2, rng)
    head = (x1 > 0) | (x2 > 0)
    p, (low, high) = ACQUISITION_PEDESTAL
    pedestals = [np.float32(rng.uniform(low, high)) if rng.random() < p else None for _ in range(2)]
    return tuple(x if pedestal is None else np.where(head, pedestal + (1 - pedestal) * x, np.float32(0))
                 for x, pedestal in zip((x1, x2), pedestals))


def acquisition_change(x, rng):
    """One input as another scanner or protocol might have given it: with the probabilities of
    ``ACQUISITION_*``, an intensity non-linearity (a gamma curve), a smooth bias field, a lower resolution
    along one axis (a Gaussian blur) and noise in the tissue, then clipped to [0, 1]."""
    from scipy import ndimage

    x = np.asarray(x, np.float32)
    p, (low, high) = ACQUISITION_GAMMA
    if rng.random() < p:
        x = np.clip(x, 0.0, 1.0) ** np.float32(np.exp(rng.uniform(np.log(low), np.log(high))))
    p, amplitude = ACQUISITION_BIAS
    if rng.random() < p:
        grid = np.meshgrid(*(np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in x.shape), indexing="ij")
        field = sum(rng.uniform(-1, 1) * g + rng.uniform(-1, 1) * g * g for g in grid) / (2 * x.ndim)
        x = x * np.exp(np.float32(amplitude) * field).astype(np.float32)
    p, (low, high) = ACQUISITION_BLUR
    if rng.random() < p:
        x = ndimage.gaussian_filter1d(x, rng.uniform(low, high), axis=int(rng.integers(x.ndim)), mode="nearest")
    p, (low, high) = ACQUISITION_NOISE
    if rng.random() < p:
        # Normalised inputs have their background clipped to 0: the noise is the tissue's.
        noise = rng.normal(0.0, rng.uniform(low, high), x.shape).astype(np.float32)
        x = np.where(x > 0, x + noise, np.float32(0))
    return np.clip(x, 0.0, 1.0).astype(np.float32)


#: DC2Fusion's MONAI training transforms (its train_diff.py), with their probabilities.
DC2_ROTATION_RAD, DC2_ROTATION_P = 0.2, 0.1
DC2_GAMMA, DC2_CONTRAST_P = (0.1, 2.0), 0.5
DC2_NOISE_MEAN, DC2_NOISE_STD, DC2_NOISE_P = 0.5, 0.1, 0.5


def dc2fusion_augment(x1, x2, rng):
    """DC2Fusion's augmentation of a 3D pair: both rotated about each axis by U(-0.2, 0.2) rad with
    probability 0.1 (linear, border values), then on x1 (the MRI) only a random gamma in (0.1, 2) with
    probability 0.5 and Gaussian noise of mean 0.5 (sic: the original's) and std 0.1 with probability
    0.5, then each min-max scaled to [0, 1] (MONAI's ScaleIntensity). Applied to the patch, where the
    original transformed the whole 128^3 volume."""
    from scipy import ndimage

    x1, x2 = np.asarray(x1, np.float32), np.asarray(x2, np.float32)
    for plane in ((1, 2), (0, 2), (0, 1)):
        if rng.random() < DC2_ROTATION_P:
            degrees = float(np.degrees(rng.uniform(-DC2_ROTATION_RAD, DC2_ROTATION_RAD)))
            x1, x2 = (ndimage.rotate(x, degrees, axes=plane, reshape=False, order=1, mode="nearest") for x in (x1, x2))
    if rng.random() < DC2_CONTRAST_P:
        low, span = x1.min(), x1.max() - x1.min()
        x1 = ((x1 - low) / (span + 1e-7)) ** rng.uniform(*DC2_GAMMA) * span + low
    if rng.random() < DC2_NOISE_P:
        x1 = x1 + rng.normal(DC2_NOISE_MEAN, DC2_NOISE_STD, x1.shape).astype(np.float32)
    return tuple(minmax01(x).astype(np.float32) for x in (x1, x2))


def _iteration_rng(seed, iteration):
    return np.random.default_rng([seed, iteration])


def _autocast(device, enabled):
    if device.type != "cuda" or not enabled:
        return contextlib.nullcontext(), None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return torch.autocast("cuda", dtype=dtype), scaler


def _fusion_metrics(spec, model, x1, x2, metric_names, device, **settings):
    """The lpmnet-convention metrics of the method's fusion of one pair (whole volume, or as ``settings`` say)."""
    from lpmnet.metrics import compute_metrics

    fused = np.clip(spec.fuse(model, x1, x2, device=device, **settings)["fused"], 0, 1)
    return compute_metrics(x1, x2, fused, convention="lpmnet", metrics=metric_names).values


def validate(spec, model, val_volumes, metric_names, device):
    """Fuse each validation pair (whole volume, with the method's fusion) and average the lpmnet-convention
    metrics."""
    totals = dict.fromkeys(metric_names, 0.0)
    for x1, x2 in val_volumes:
        values = _fusion_metrics(spec, model, x1, x2, metric_names, device)
        for name in metric_names:
            totals[name] += values[name] / len(val_volumes)
    return totals


#: The metrics of a learning curve: the paper's headline ones.
LEARNING_CURVE_METRICS = ("SSIM", "Qabf", "VIF", "MI")


def learning_curve(checkpoints, pairs, method="lpmnet", metrics=LEARNING_CURVE_METRICS, device="cpu",
                   normalize=True, **fusion_settings):
    """Rows ``{iteration, x1, x2, <metric>: value}``: every checkpoint (``keep_every``'s
    ``checkpoints/iteration-<n>.pt``) fuses every pair with the method's fusion (``fusion_settings``), scored in
    the lpmnet convention, so that the metrics can be plotted against the training iterations. ``normalize``:
    how the volumes reach [0, 1] (:func:`load_pair`)."""
    spec = get_method(method)
    device = resolve_device(device)
    volumes = [load_pair(a, b, normalize) for a, b in pairs]
    rows = []
    for path in checkpoints:
        model, card = spec.load(path, map_location=device)
        if "iteration" not in card:
            raise InputError(path, "not a checkpoint kept during training (its model card has no iteration)")
        for (a, b), (x1, x2) in zip(pairs, volumes):
            values = _fusion_metrics(spec, model, x1, x2, metrics, device, **fusion_settings)
            rows.append({"iteration": int(card["iteration"]), "x1": str(a), "x2": str(b), **values})
    return rows


class _CsvLog:
    """Per-iteration CSV log whose rows also travel in every resumable checkpoint.

    The workflow declares ``training_log.csv`` as an output, so Snakemake deletes it before it reruns a
    killed training job; the checkpoint ``last.pt`` is not an output and survives. Keeping the rows up to
    the checkpoint's iteration inside it (and rewriting the CSV from them on resume) means that after
    any number of kills the log holds every iteration exactly once; rows after the checkpoint are
    replayed by the resumed run.
    """

    def __init__(self, path, columns, rows=()):
        self.path = Path(path)
        self.columns = columns
        self.rows = [dict(row) for row in rows]
        self.file = open(self.path, "w", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=columns)
        self.writer.writeheader()
        self.writer.writerows(self.rows)

    def write(self, row):
        # Plain Python numbers only: checkpoints load with torch.load(weights_only=True).
        row = to_jsonable({k: row.get(k, "") for k in self.columns})
        self.rows.append(row)
        self.writer.writerow(row)

    def flush(self):
        self.file.flush()

    def close(self):
        self.file.close()


def _optimizer(config, parameters):
    kind = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return kind(parameters, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)


@contextlib.contextmanager
def _rate_lent_to_fresh_optimisers():
    """Quiets PyTorch's warning that the schedule stepped before its optimiser: with ``recreate_optimizer``
    that optimiser never steps, by design; it only holds the scheduled rate that each fresh one copies, so
    no scheduled rate is skipped."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)` before", UserWarning)
        yield


def _scheduler(config, optimizer, max_epoch):
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_epoch)
    if config.schedule == "poly":
        # DC2Fusion's lr (1 - epoch / epochs)^0.9, set per epoch; never exactly 0 before the last epoch.
        return torch.optim.lr_scheduler.LambdaLR(optimizer, _PolyFactor(max_epoch, config.poly_power))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _constant_factor)


def _constant_factor(epoch):
    return 1.0


@dataclass(frozen=True)
class _PolyFactor:
    epochs: int
    power: float

    def __call__(self, epoch):
        return max(0.0, 1 - epoch / self.epochs) ** self.power


@torch.no_grad()
def _update_ema(ema, model, decay):
    # KAIR's update (MambaDFuse's netE): parameters averaged, buffers copied.
    for average, current in zip(ema.parameters(), model.parameters()):
        average.mul_(decay).add_(current.detach(), alpha=1 - decay)
    for average, current in zip(ema.buffers(), model.buffers()):
        average.copy_(current)


def _start_from(model, spec, path):
    """Load the weights of checkpoint ``path`` into ``model`` (same method and architecture)."""
    initial, _ = load_checkpoint_of(spec, path)
    try:
        model.load_state_dict(initial.state_dict(), strict=True)
    except RuntimeError as err:
        raise InputError(path, f"its network is not the one being trained ({spec.name}{dict(getattr(model, 'config', {}))}): "
                               f"{str(err).splitlines()[0]}") from None


def _to_batch(arrays, device):
    return torch.from_numpy(np.stack(arrays)[:, None]).to(device)


def _training_identity(config, pairs, val_pairs, init_path, normalize):
    """What a resumable state must share with a training to be resumed by it: the package version, the
    settings, the bytes of every training and validation volume, how they are scaled and the initial weights."""
    return {"lpmnet_version": __version__, "train_config": asdict(config), "normalize": normalize,
            "data_sha256": [[file_digest(a), file_digest(b)] for a, b in pairs],
            "validation_sha256": [[file_digest(a), file_digest(b)] for a, b in val_pairs],
            "initial_weights_sha256": file_digest(init_path) if init_path else None}


def _discard_training_state(out_dir):
    for path in (out_dir / LAST_CHECKPOINT, out_dir / BEST_CHECKPOINT, out_dir / FINAL_CHECKPOINT,
                 *(out_dir / KEPT_CHECKPOINTS).glob("*.pt")):
        path.unlink(missing_ok=True)


def train(pairs, out_dir, config=None, val_pairs=(), device="auto", model_card=None, progress=None, normalize=True,
          restart_stale=False):
    """Train ``config.method`` on ``pairs`` [(x1_path, x2_path), ...]; returns the final checkpoint's path.

    ``out_dir`` receives ``last.pt`` (resumable state, rewritten every ``checkpoint_every`` iterations),
    ``best.pt`` (best validation SSIM, when validating), ``model.pt`` (final weights + model card; the
    averaged weights when the recipe keeps an EMA), ``training_log.csv`` and, with ``keep_every``,
    ``checkpoints/iteration-<n>.pt``. If ``last.pt`` exists,
    training resumes from it, if it was written by this very training (same lpmnet version, settings, bytes of
    every volume, ``normalize`` and initial weights); the state of another training raises ValueError naming
    it, or, with ``restart_stale`` (the workflow, which retrains exactly when settings or data changed), is
    deleted and training starts again. A training that starts from the beginning first deletes the folder's
    ``best.pt``, ``model.pt`` and kept checkpoints. ``normalize``: how the volumes reach
    [0, 1] (:func:`load_pair`).
    """
    config = config or TrainConfig()
    spec = get_method(config.method)
    out_dir = Path(out_dir)
    device = resolve_device(device)
    if not pairs:
        raise ValueError("no training pairs given")

    volumes = [load_pair(a, b, normalize) for a, b in pairs]
    val_volumes = [load_pair(a, b, normalize) for a, b in val_pairs]
    if config.patch_size is None and config.batch_size > 1:
        shapes = {v[0].shape if spec.dims == 3 else v[0].shape[:config.slice_axis] + v[0].shape[config.slice_axis + 1:]
                  for v in volumes}
        if len(shapes) > 1:
            raise ValueError("whole-volume (or whole-slice) training with batch_size > 1 needs volumes of one shape")
    # Only once the inputs are known to be good: bad input leaves no (empty) output folder behind.
    out_dir.mkdir(parents=True, exist_ok=True)
    sampler = PatchSampler(volumes, config.patch_size, config.augmentation,
                           slice_axis=config.slice_axis if spec.dims == 2 else None,
                           head_fraction=config.head_fraction)

    torch.manual_seed(config.seed)
    model = spec.build(**config.model).to(device)
    init_path = None
    if config.init:
        init_path, _ = resolve_pretrained(spec, config.init, *pairs[0])
        _start_from(model, spec, init_path)
    ema = copy.deepcopy(model).requires_grad_(False) if config.ema_decay else None
    optimizer = _optimizer(config, model.parameters())
    iters_per_epoch = math.ceil(len(volumes) / config.batch_size)
    max_epoch = config.iterations // iters_per_epoch + 1
    scheduler = _scheduler(config, optimizer, max_epoch)
    loss_fn, loss_terms = make_loss(config.loss, spec.dims, config.loss_settings)
    autocast, scaler = _autocast(device, config.amp)

    start, best_ssim, log_rows = 0, -math.inf, []
    last_path = out_dir / LAST_CHECKPOINT
    identity = _training_identity(config, pairs, val_pairs, init_path, normalize)
    state = read_payload(last_path, map_location=device) if last_path.exists() else None
    if state is not None and (not is_project_checkpoint(state) or state.get("resumes") != identity):
        if not restart_stale:
            raise ValueError(f"{last_path}: it was written by another training (other settings, data or initial "
                             "weights, or an older lpmnet); delete it to start again")
        log.warning("%s is the state of another training (other settings, data or initial weights, or an older "
                    "lpmnet): training starts again", last_path)
        state = None
    if state is None:
        # What an earlier training left (a run killed before its first last.pt, another's best and kept
        # models) must not pass for this one's.
        _discard_training_state(out_dir)
    else:
        model.load_state_dict(state["state_dict"])
        if ema is not None:
            ema.load_state_dict(state["ema_state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start, best_ssim = state["iteration"], state.get("best_val_ssim", -math.inf)
        log_rows = state.get("log_rows", [])
        log.info("resuming from %s at iteration %d", last_path, start)

    val_columns = [f"val_{m}" for m in config.val_metrics] if val_volumes else []
    columns = ["iteration", "epoch", "lr", "total", *loss_terms, "seconds", *val_columns]
    csv_log = _CsvLog(out_dir / TRAINING_LOG, columns, log_rows)
    card = {
        "method": spec.name,
        "network": spec.description,
        "weights": f"exponential moving average (decay {config.ema_decay})" if ema is not None else "final",
        "lpmnet_version": __version__,
        "torch_version": str(torch.__version__),
        "device": str(device),
        "train_config": asdict(config),
        "data": [{"x1": str(a), "x2": str(b), "shape_dhw": list(v[0].shape)}
                 for (a, b), v in zip(pairs, volumes)],
        "validation_data": [{"x1": str(a), "x2": str(b)} for a, b in val_pairs],
        **({"initial_weights": {"path": str(init_path), "sha256": identity["initial_weights_sha256"]}}
           if config.init else {}),
        **(model_card or {}),
    }
    if start:
        card["final_loss"] = state["model_card"].get("final_loss")
    evaluated = ema if ema is not None else model

    def checkpoint(path, iteration, **extra):
        save_checkpoint(path, model, spec.name, config.model, model_card=card, iteration=iteration,
                        train_config=asdict(config), optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict(), scaler=scaler.state_dict() if scaler is not None else None,
                        ema_state_dict=ema.state_dict() if ema is not None else None,
                        best_val_ssim=best_ssim, log_rows=csv_log.rows, resumes=identity, **extra)

    show_bar = sys.stderr.isatty() if progress is None else progress
    try:
        from tqdm import tqdm

        bar = tqdm(total=config.iterations, initial=start, disable=not show_bar, unit="it", dynamic_ncols=True)
    except ImportError:  # tqdm is a dependency, but training must not fail for a progress bar
        bar = None
    model.train()
    try:
        for iteration in range(start, config.iterations):
            tic = time.perf_counter()
            epoch, step = divmod(iteration, iters_per_epoch)
            rng = _iteration_rng(config.seed, iteration)
            torch.manual_seed(int(rng.integers(2**62)))  # reconstruction masks, dropout of this iteration
            order = np.random.default_rng([config.seed, epoch, 1]).permutation(len(volumes))
            picks = [order[(step * config.batch_size + k) % len(volumes)] for k in range(config.batch_size)]
            patches = [sampler.sample(i, rng) for i in picks]
            x1 = _to_batch([p[0] for p in patches], device)
            x2 = _to_batch([p[1] for p in patches], device)
            if config.batch_minmax:
                x1, x2 = minmax_tensor(x1), minmax_tensor(x2)

            with autocast:
                output = model(x1, x2)
            total, terms = loss_fn(x1, x2, output, dict(iteration=iteration, iterations=config.iterations,
                                                        step_in_epoch=step, max_epoch=max_epoch))
            if not math.isfinite(terms["total"]):
                raise FloatingPointError(f"loss became {terms['total']} at iteration {iteration}; "
                                         f"the last good state is in {last_path}")
            optimizer.zero_grad(set_to_none=True)
            stepped = optimizer
            if config.recreate_optimizer:
                stepped = _optimizer(config, model.parameters())
                for group in stepped.param_groups:
                    group["lr"] = optimizer.param_groups[0]["lr"]  # the schedule still applies
            if scaler is not None:
                scaler.scale(total).backward()
                scaler.step(stepped)
                scaler.update()
            else:
                total.backward()
                stepped.step()
            if ema is not None:
                _update_ema(ema, model, config.ema_decay)
            row = {"iteration": iteration + 1, "epoch": epoch, "lr": optimizer.param_groups[0]["lr"], **terms}
            card["final_loss"] = terms
            if step == iters_per_epoch - 1:
                with _rate_lent_to_fresh_optimisers() if config.recreate_optimizer else contextlib.nullcontext():
                    scheduler.step()
            done = iteration + 1
            if val_volumes and (done % config.val_every == 0 or done == config.iterations):
                model.eval()
                evaluated.eval()
                values = validate(spec, evaluated, val_volumes, config.val_metrics, device)
                model.train()
                row.update({f"val_{k}": v for k, v in values.items()})
                if "SSIM" in values and values["SSIM"] > best_ssim:
                    best_ssim = values["SSIM"]
                    save_checkpoint(out_dir / BEST_CHECKPOINT, evaluated, spec.name, config.model,
                                    model_card={**card, "iteration": done})
            row["seconds"] = time.perf_counter() - tic
            csv_log.write(row)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{terms['total']:.4f}")
            if config.keep_every and done % config.keep_every == 0:
                save_checkpoint(out_dir / KEPT_CHECKPOINTS / f"iteration-{done:06d}.pt", evaluated, spec.name,
                                config.model, model_card={**card, "iteration": done})
            if done % config.checkpoint_every == 0 or done == config.iterations:
                csv_log.flush()
                checkpoint(last_path, done)
    finally:
        csv_log.close()
        if bar is not None:
            bar.close()

    final = out_dir / FINAL_CHECKPOINT
    save_checkpoint(final, evaluated, spec.name, config.model, model_card=card)
    return final
