"""Every fusion method side by side: parameters, fusion seconds per volume, training iterations/s, peak memory.

Each method runs in its own process (so that its peak resident memory is its own) through the method
layer as the workflow runs it: ``METHOD.fuse`` on a random (D, H, W) pair in [0, 1] (2D methods slice by
slice along D), and the training engine (``lpmnet.engine.train.train``) with the method's recipe as its original
codes it (batch, patch or crop size, loss, optimiser) for a few iterations on a random pair. The first
iteration warms up and is not timed. ``--simple`` also fuses with each method's pure-PyTorch scan
(``scan_backend="torch"``; methods without a Mamba scan are skipped; 2D methods on one slice, scaled to
the volume), the simple implementation the compiled CPU kernel is measured against. On CUDA (when present, or ``--devices cuda``) the same runs
with the GPU's peak allocated memory.

    python benchmarks/bench_methods.py [--methods lpmnet,mambadfuse,asfe] [--shape 96x160x160]
        [--threads 2] [--train-iterations 3] [--devices cpu,cuda] [--simple] [--model mambadfuse='{"embed_dim": 16}']

A 2D method's fusion time with ``--slices N`` is measured on the first N slices of the volume and
scaled to the whole volume (slices are independent and all the same size, so the time is linear in
their number); the output says so.
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_METHODS = "lpmnet,mambadfuse,dc2fusion,asfe"
#: Slices of a 2D method timed with the pure-PyTorch scan (--simple), scaled to the volume.
SIMPLE_SLICES = 1


def _peak_rss_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _shape(text):
    return tuple(int(v) for v in text.lower().split("x"))


def _random_pair(shape, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    # Smooth-ish random anatomy: a bright ellipsoid with noise, so that patches have foreground.
    grid = np.stack(np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij"))
    inside = (grid ** 2).sum(0) < 0.8
    x1 = (inside * (0.6 + 0.4 * rng.random(shape))).astype(np.float32)
    x2 = (inside * (0.3 + 0.7 * rng.random(shape)) ** 2).astype(np.float32)
    return x1, x2


def measure_one(method, shape, threads, device, iterations, slices, simple, model_kwargs):
    """The figures of one method in this process (called in a child process per method and device)."""
    import numpy as np
    import torch

    from lpmnet.volumes.io import dhw, save_volume
    from lpmnet.methods import count_parameters, get_method
    from lpmnet.runtime import keep_freed_memory_for_reuse
    from lpmnet.engine.train import TrainConfig, train

    torch.set_num_threads(threads)
    keep_freed_memory_for_reuse()  # as the lpmnet command and the workflow's jobs do
    spec = get_method(method)
    x1, x2 = _random_pair(shape)
    model = spec.build(**model_kwargs).eval().to(device)
    result = {"method": method, "device": device, "parameters": count_parameters(model), "shape": list(shape)}

    def fuse_seconds(slices=slices, warm_up=True, **settings):
        a, b = (x1, x2) if spec.dims == 3 or not slices else (x1[:slices], x2[:slices])
        if warm_up:  # the first call builds the CPU scan kernel (if not cached) and touches the allocator
            spec.fuse(model, a[: max(1, len(a) // 8)], b[: max(1, len(b) // 8)], device=device, **settings)
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        tic = time.perf_counter()
        spec.fuse(model, a, b, device=device, **settings)
        if device == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - tic) * (len(x1) / len(a))

    result["fusion_s_per_volume"] = fuse_seconds()
    result["fusion_extrapolated_from_slices"] = slices if spec.dims == 2 and slices else None
    if device == "cuda":
        result["fusion_peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if simple and "scan_backend" in spec.settings:
        # The pure-PyTorch scan takes minutes per 160x160 slice: a 2D method is timed on SIMPLE_SLICES.
        result["fusion_s_per_volume_torch_scan"] = fuse_seconds(slices=SIMPLE_SLICES if spec.dims == 2 else 0,
                                                                warm_up=spec.dims == 3, scan_backend="torch")
    result["fusion_peak_rss_gib"] = _peak_rss_gib()
    del model

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        save_volume(folder / "a.nii.gz", dhw(x1), np.eye(4))
        save_volume(folder / "b.nii.gz", dhw(x2), np.eye(4))
        config = TrainConfig(method=method, iterations=iterations, checkpoint_every=10**9, model=model_kwargs)
        train([(folder / "a.nii.gz", folder / "b.nii.gz")], folder / "run", config, device=device, progress=False)
        with open(folder / "run" / "training_log.csv", newline="") as f:
            seconds = [float(r["seconds"]) for r in csv.DictReader(f)][1:]  # the first iteration warms up
    result["train_recipe"] = {"batch_size": config.batch_size, "patch_size": config.patch_size, "loss": config.loss,
                              "optimizer": config.optimizer}
    result["train_it_per_s"] = len(seconds) / sum(seconds) if seconds else None
    result["peak_rss_gib"] = _peak_rss_gib()
    if device == "cuda":
        result["train_peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=DEFAULT_METHODS, help="comma-separated method names")
    ap.add_argument("--shape", default="96x160x160", help="volume D x H x W")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--devices", default=None, help="comma-separated; default cpu, and cuda when present")
    ap.add_argument("--train-iterations", type=int, default=3, help="training iterations (the first is not timed)")
    ap.add_argument("--slices", type=int, default=0, help="2D methods: time this many slices and scale (0: all)")
    ap.add_argument("--simple", action="store_true", help="also fuse with the pure-PyTorch scan")
    ap.add_argument("--model", action="append", default=[], metavar="METHOD=JSON",
                    help="constructor arguments of a method (default: the authors' configuration)")
    ap.add_argument("--json", help="also write the results to this JSON file")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # child process: one method, one device
    args = ap.parse_args()
    models = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.model)}

    if args.one:
        method, device = args.one.split("@")
        print(json.dumps(measure_one(method, _shape(args.shape), args.threads, device, args.train_iterations,
                                     args.slices, args.simple, models.get(method, {}))))
        return

    import torch

    devices = args.devices.split(",") if args.devices else ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
    rows = []
    for device in devices:
        for method in args.methods.split(","):
            command = [sys.executable, __file__, "--one", f"{method}@{device}", "--shape", args.shape,
                       "--threads", str(args.threads), "--train-iterations", str(args.train_iterations),
                       "--slices", str(args.slices), *(["--simple"] if args.simple else []),
                       *(f"--model={item}" for item in args.model)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                print(f"{method} on {device} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            scaled = f" (from {row['fusion_extrapolated_from_slices']} slices)" if row["fusion_extrapolated_from_slices"] else ""
            simple = (f", torch scan {row['fusion_s_per_volume_torch_scan']:.1f} s"
                      if "fusion_s_per_volume_torch_scan" in row else "")
            train_rate = f"{row['train_it_per_s']:.3g} it/s" if row["train_it_per_s"] else "-"
            gpu = (f", GPU peak fusion {row['fusion_peak_gpu_gib']:.2f} / training {row['train_peak_gpu_gib']:.2f} GiB"
                   if device == "cuda" else "")
            print(f"{method:12s} {device:4s} {row['parameters']:>11,d} params | fusion {args.shape}: "
                  f"{row['fusion_s_per_volume']:.1f} s/volume{scaled}{simple} (peak RSS "
                  f"{row['fusion_peak_rss_gib']:.2f} GiB) | training {train_rate} at batch "
                  f"{row['train_recipe']['batch_size']} x {row['train_recipe']['patch_size']}, loss "
                  f"{row['train_recipe']['loss']} (peak RSS {row['peak_rss_gib']:.2f} GiB){gpu}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
