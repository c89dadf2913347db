"""Training of LPM-Net on pairs of co-registered volumes.

Random patches (or whole volumes, as the original did on a GPU), random flips on all three axes, Adam +
cosine annealing stepped per epoch (an epoch is one pass over the training pairs), periodic atomic
checkpoints, exact resume after a kill, a CSV log of every loss term per iteration with validation
metrics, and a progress bar on a terminal.

Determinism: every random draw of iteration i (which pairs, where the patch is, flips, the
reconstruction masks) comes from generators seeded with (seed, i). Resuming from a checkpoint therefore
replays exactly the iterations an uninterrupted run would have made; on the CPU two runs with the same
seed give bit-identical weights.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from lpmnet import __version__
from lpmnet.io import dhw, load_volume, to_jsonable
from lpmnet.losses import LOSS_TERMS, FusionLoss
from lpmnet.models import LPMNet, read_checkpoint, save_checkpoint
from lpmnet.normalize import minmax01

log = logging.getLogger("lpmnet.train")

LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
FINAL_CHECKPOINT = "model.pt"
TRAINING_LOG = "training_log.csv"


@dataclass
class TrainConfig:
    """Every parameter that changes the trained model. Defaults follow the paper except the patch size
    (the original trained on whole resized volumes; use ``patch_size=None`` for that)."""

    iterations: int = 3000
    batch_size: int = 1
    patch_size: tuple[int, int, int] | None = (64, 64, 64)
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 3e-4
    seed: int = 2
    flips: bool = True
    loss_mode: str = "faithful"
    alpha: float = 0.05
    beta: float = 1.0
    gamma: float = 0.5
    checkpoint_every: int = 100
    val_every: int = 200
    val_metrics: tuple[str, ...] = ("SSIM", "Qabf", "SF", "PSNR")
    amp: bool = True
    model: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.patch_size is not None:
            self.patch_size = tuple(int(p) for p in self.patch_size)
            if len(self.patch_size) != 3 or any(p <= 0 or p % 16 for p in self.patch_size):
                raise ValueError(f"patch_size must be three positive multiples of 16, not {self.patch_size}")
        if self.iterations < 1 or self.batch_size < 1:
            raise ValueError("iterations and batch_size must be at least 1")
        self.betas = tuple(self.betas)
        self.val_metrics = tuple(self.val_metrics)


def resolve_device(device="auto"):
    """"auto" -> the first visible CUDA device if any, else the CPU (with a warning when CUDA was asked)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        log.warning("CUDA was requested but no GPU is visible; running on the CPU")
        return torch.device("cpu")
    return device


def load_pair(path1, path2):
    """Two co-registered volumes in (D, H, W) layout, min-max normalised to [0, 1] each (the model's input)."""
    v1, v2 = load_volume(path1), load_volume(path2)
    if v1.data.shape != v2.data.shape:
        raise ValueError(f"{path1} and {path2} have different shapes {v1.data.shape} and {v2.data.shape}: "
                         "register them onto one grid first")
    return minmax01(dhw(v1.data)), minmax01(dhw(v2.data))


class PatchSampler:
    """Draws training patches; crops are centred on foreground voxels so that patches are not background."""

    def __init__(self, volumes, patch_size, flips):
        self.volumes = volumes
        self.patch_size = patch_size
        self.flips = flips
        self.foreground = []
        for x1, x2 in volumes:
            combined = np.maximum(x1, x2)
            self.foreground.append(np.flatnonzero(combined > combined.mean()))

    def sample(self, index, rng):
        x1, x2 = self.volumes[index]
        if self.patch_size is not None:
            size = [min(p, s) for p, s in zip(self.patch_size, x1.shape)]
            fg = self.foreground[index]
            centre = np.unravel_index(fg[rng.integers(len(fg))], x1.shape) if len(fg) else \
                [rng.integers(s) for s in x1.shape]
            starts = [int(np.clip(c - p // 2, 0, s - p)) for c, p, s in zip(centre, size, x1.shape)]
            window = tuple(slice(st, st + p) for st, p in zip(starts, size))
            x1, x2 = x1[window], x2[window]
        if self.flips:
            axes = tuple(a for a in range(3) if rng.random() < 0.5)
            if axes:
                x1, x2 = np.flip(x1, axes), np.flip(x2, axes)
        return np.ascontiguousarray(x1), np.ascontiguousarray(x2)


def _iteration_rng(seed, iteration):
    return np.random.default_rng([seed, iteration])


def _autocast(device, enabled):
    if device.type != "cuda" or not enabled:
        return contextlib.nullcontext(), None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return torch.autocast("cuda", dtype=dtype), scaler


def validate(model, val_volumes, metric_names, device):
    """Fuse each validation pair (whole volume) and average the lpmnet-convention metrics."""
    from lpmnet.fuse import fuse_arrays
    from lpmnet.metrics import compute_metrics

    totals = dict.fromkeys(metric_names, 0.0)
    for x1, x2 in val_volumes:
        fused = fuse_arrays(model, x1, x2, device=device)["fused"]
        values = compute_metrics(x1, x2, fused, convention="lpmnet", metrics=metric_names).values
        for name in metric_names:
            totals[name] += values[name] / len(val_volumes)
    return totals


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


def train(pairs, out_dir, config=None, val_pairs=(), device="auto", model_card=None, progress=None):
    """Train LPM-Net on ``pairs`` [(x1_path, x2_path), ...]; returns the path of the final checkpoint.

    ``out_dir`` receives ``last.pt`` (resumable state, rewritten every ``checkpoint_every`` iterations),
    ``best.pt`` (best validation SSIM, when validating), ``model.pt`` (final weights + model card) and
    ``training_log.csv``. If ``last.pt`` exists, training resumes from it.
    """
    config = config or TrainConfig()
    out_dir = Path(out_dir)
    device = resolve_device(device)
    if not pairs:
        raise ValueError("no training pairs given")

    volumes = [load_pair(a, b) for a, b in pairs]
    val_volumes = [load_pair(a, b) for a, b in val_pairs]
    if config.patch_size is None and config.batch_size > 1 and len({v[0].shape for v in volumes}) > 1:
        raise ValueError("whole-volume training with batch_size > 1 needs volumes of one shape")
    # Only once the inputs are known to be good: bad input leaves no (empty) output folder behind.
    out_dir.mkdir(parents=True, exist_ok=True)
    sampler = PatchSampler(volumes, config.patch_size, config.flips)

    torch.manual_seed(config.seed)
    model = LPMNet(**config.model).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas,
                                 weight_decay=config.weight_decay)
    iters_per_epoch = math.ceil(len(volumes) / config.batch_size)
    max_epoch = config.iterations // iters_per_epoch + 1
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_epoch)
    loss_fn = FusionLoss(mode=config.loss_mode, alpha=config.alpha, beta=config.beta, gamma=config.gamma)
    autocast, scaler = _autocast(device, config.amp)

    start, best_ssim, log_rows = 0, -math.inf, []
    last_path = out_dir / LAST_CHECKPOINT
    if last_path.exists():
        state = read_checkpoint(last_path, map_location=device)
        if state.get("train_config") != asdict(config):
            raise ValueError(f"{last_path}: it was written with other training settings; delete it to "
                             "start again")
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start, best_ssim = state["iteration"], state.get("best_val_ssim", -math.inf)
        log_rows = state.get("log_rows", [])
        log.info("resuming from %s at iteration %d", last_path, start)

    val_columns = [f"val_{m}" for m in config.val_metrics] if val_volumes else []
    columns = ["iteration", "epoch", "lr", "total", *LOSS_TERMS, "lambda", "seconds", *val_columns]
    csv_log = _CsvLog(out_dir / TRAINING_LOG, columns, log_rows)
    card = {
        "method": "LPM-Net",
        "lpmnet_version": __version__,
        "torch_version": str(torch.__version__),
        "device": str(device),
        "train_config": asdict(config),
        "data": [{"x1": str(a), "x2": str(b), "shape_dhw": list(v[0].shape)}
                 for (a, b), v in zip(pairs, volumes)],
        "validation_data": [{"x1": str(a), "x2": str(b)} for a, b in val_pairs],
        **(model_card or {}),
    }
    if start:
        card["final_loss"] = state["model_card"].get("final_loss")

    def checkpoint(path, iteration, **extra):
        save_checkpoint(path, model, model_card=card, iteration=iteration, train_config=asdict(config),
                        optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                        scaler=scaler.state_dict() if scaler is not None else None,
                        best_val_ssim=best_ssim, log_rows=csv_log.rows, **extra)

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
            torch.manual_seed(int(rng.integers(2**62)))  # reconstruction masks of this iteration
            order = np.random.default_rng([config.seed, epoch, 1]).permutation(len(volumes))
            picks = [order[(step * config.batch_size + k) % len(volumes)] for k in range(config.batch_size)]
            patches = [sampler.sample(i, rng) for i in picks]
            x1 = torch.from_numpy(np.stack([p[0] for p in patches])[:, None]).to(device)
            x2 = torch.from_numpy(np.stack([p[1] for p in patches])[:, None]).to(device)

            with autocast:
                output = model(x1, x2)
            total, terms = loss_fn(x1, x2, output, iteration=iteration, iterations=config.iterations,
                                   step_in_epoch=step, max_epoch=max_epoch)
            if not math.isfinite(terms["total"]):
                raise FloatingPointError(f"loss became {terms['total']} at iteration {iteration}; "
                                         f"the last good state is in {last_path}")
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(total).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                total.backward()
                optimizer.step()
            row = {"iteration": iteration + 1, "epoch": epoch, "lr": optimizer.param_groups[0]["lr"], **terms}
            card["final_loss"] = terms
            if step == iters_per_epoch - 1:
                scheduler.step()
            done = iteration + 1
            if val_volumes and (done % config.val_every == 0 or done == config.iterations):
                model.eval()
                values = validate(model, val_volumes, config.val_metrics, device)
                model.train()
                row.update({f"val_{k}": v for k, v in values.items()})
                if "SSIM" in values and values["SSIM"] > best_ssim:
                    best_ssim = values["SSIM"]
                    checkpoint(out_dir / BEST_CHECKPOINT, done)
            row["seconds"] = time.perf_counter() - tic
            csv_log.write(row)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{terms['total']:.4f}")
            if done % config.checkpoint_every == 0 or done == config.iterations:
                csv_log.flush()
                checkpoint(last_path, done)
    finally:
        csv_log.close()
        if bar is not None:
            bar.close()

    final = out_dir / FINAL_CHECKPOINT
    save_checkpoint(final, model, model_card=card)
    return final
