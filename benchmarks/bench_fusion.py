"""Fusion throughput and training speed of LPM-Net on the available devices and scan backends.

For each device (cpu, and cuda when visible) and each selective-scan backend usable there, fuses one
pair of random volumes per shape in eval mode (no reconstruction branch) and reports seconds per
volume, volumes/s and voxels/s. "cpu" is the fused C++ kernel of a whole windowed Mamba layer
(lpmnet.methods.lpmnet.layers.fused_window_mamba); "composed" the same layer composed in PyTorch around the C++ scan and
conv1d kernels (the implementation before the fused layer); "torch" the simple implementation
(F.conv1d and the pure-PyTorch scan); "reference" the plain sequential scan that the tests compare
every backend against. The fusion rows come from two fresh
processes: one with glibc's default malloc thresholds (what ``LPMNet()(x1, x2)`` meets in a user's
notebook) and one with the thresholds the ``lpmnet`` command and the workflow's jobs raise
(:func:`lpmnet.runtime.keep_freed_memory_for_reuse`), each with its peak resident memory. Then times training iterations (forward,
backward with the reconstruction branch, Adam step) per patch size and backend, the same rows.

    python benchmarks/bench_fusion.py                       # defaults below
    python benchmarks/bench_fusion.py --shapes 96x160x160 --backends cpu composed torch reference
    python benchmarks/bench_fusion.py --shapes --train-patch 32 64 --threads 2   # training only
    python benchmarks/bench_fusion.py --train-patch --malloc default             # fusion, one process
"""

import argparse
import contextlib
import resource
import subprocess
import sys
import time
from unittest import mock

import torch

import lpmnet.methods.mamba  # noqa: E402
import lpmnet.methods.lpmnet.network  # noqa: E402
from lpmnet.engine.losses import FusionLoss  # noqa: E402
from lpmnet.methods.lpmnet.network import LPMNet  # noqa: E402
from lpmnet.runtime import keep_freed_memory_for_reuse  # noqa: E402
from lpmnet.ops.backends import available_backends  # noqa: E402
from lpmnet.ops.selective_scan import selective_scan_ref as reference_selective_scan  # noqa: E402


def backends_for(device):
    """Scan backends that run on ``device``: the CUDA kernels only on CUDA, the C++ kernels only on CPU."""
    native = ["cuda"] if device.type == "cuda" else ["cpu", "composed"]
    return [b for b in [*available_backends(), "composed"] if b in (*native, "torch")
            and (b != "composed" or "cpu" in available_backends())]


def backend_patch(backend):
    """What stands in for a benchmark-only backend while it is timed ("reference", "composed"), or None."""
    if backend == "reference":
        return mock.patch.object(lpmnet.methods.mamba, "selective_scan", _reference_scan)
    if backend == "composed":
        return mock.patch.object(lpmnet.methods.lpmnet.network, "fused_window_mamba_usable", lambda *args: False)
    return None


def model_backend(backend):
    return {"composed": "cpu", "reference": "torch"}.get(backend, backend)


def parse_shape(text):
    return tuple(int(v) for v in text.lower().split("x"))


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _reference_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, backend=None):
    return reference_selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                                    delta_softplus=delta_softplus)


def time_fusion(model, shape, device, backend, repeats):
    x1 = torch.rand(1, 1, *shape, device=device)
    x2 = torch.rand(1, 1, *shape, device=device)
    patch = backend_patch(backend)
    if patch:
        patch.start()
    model.set_scan_backend(model_backend(backend))
    try:
        with torch.no_grad():
            # The first pass pays for kernel selection (GPU) and for growing the heap (CPU): it is what a
            # single `lpmnet fuse` costs. Later passes show the steady state of a batch of volumes.
            synchronize(device)
            tic = time.perf_counter()
            model(x1, x2)
            synchronize(device)
            cold = time.perf_counter() - tic
            tic = time.perf_counter()
            for _ in range(repeats):
                model(x1, x2)
            synchronize(device)
    finally:
        if patch:
            patch.stop()
    return cold, (time.perf_counter() - tic) / repeats


def time_training(device, backend, patch, iterations):
    with backend_patch(backend) or contextlib.nullcontext():
        return _time_training(device, backend, patch, iterations)


def _time_training(device, backend, patch, iterations):
    torch.manual_seed(0)
    model = LPMNet(scan_backend=model_backend(backend)).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = FusionLoss()
    x1 = torch.rand(1, 1, patch, patch, patch, device=device)
    x2 = torch.rand(1, 1, patch, patch, patch, device=device)

    def step():
        out = model(x1, x2)
        loss, _ = loss_fn(x1, x2, out, iteration=0, iterations=1, step_in_epoch=0, max_epoch=1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()  # warm-up (and the kernel build on first use)
    synchronize(device)
    tic = time.perf_counter()
    for _ in range(iterations):
        step()
    synchronize(device)
    return iterations / (time.perf_counter() - tic)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="*", default=["96x160x160", "128x192x192"])
    parser.add_argument("--backends", nargs="+", default=None,
                        help="scan backends to time (default: all available here plus 'reference')")
    parser.add_argument("--reference-shapes", nargs="+", default=["96x160x160"],
                        help="shapes on which the slow reference scan also runs")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--gpu-repeats", type=int, default=10)
    parser.add_argument("--train-patch", type=int, nargs="*", default=[32, 64], help="training patch edges")
    parser.add_argument("--train-iterations", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--malloc", choices=["default", "raised"], default=None,
                        help="time fusion only, in this process, with glibc's default or the raised malloc "
                             "thresholds (without it: both, each in a fresh process, then training)")
    args = parser.parse_args()
    if args.malloc == "raised" or args.malloc is None:  # training runs in the jobs' setting
        keep_freed_memory_for_reuse()
    if args.threads:
        torch.set_num_threads(args.threads)

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    if args.malloc:
        time_fusions(args, devices)
        return
    print(f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}, "
          f"GPU {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
    print(f"{'malloc':7} {'device':6} {'backend':9} {'shape':12} {'first s':>8} {'s/volume':>9} {'volumes/s':>10} "
          f"{'Mvoxel/s':>9}", flush=True)
    if args.shapes:
        for malloc in ("default", "raised"):
            subprocess.run([sys.executable, __file__, *sys.argv[1:], "--malloc", malloc], check=True)
    print("\ntraining, batch 1, with the reconstruction branch (peak RSS: of the process so far)")
    for patch in args.train_patch:
        for device in devices:
            for backend in args.backends or backends_for(device):
                if backend == "reference" or backend not in backends_for(device):
                    continue
                rate = time_training(device, backend, patch, args.train_iterations)
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
                print(f"{device.type:6} {backend:9} {patch:3d}^3 {rate:8.3f} it/s  peak RSS {peak:5.2f} GiB", flush=True)


def time_fusions(args, devices):
    """One row per device, scan backend and shape, in this process's malloc setting."""
    for device in devices:
        backends = args.backends or [*backends_for(device), "reference"]
        torch.manual_seed(0)
        model = LPMNet().to(device).eval()
        for shape_text in args.shapes:
            shape = parse_shape(shape_text)
            for backend in backends:
                if backend == "reference" and shape_text not in args.reference_shapes:
                    continue
                if backend != "reference" and backend not in backends_for(device):
                    continue
                repeats = args.gpu_repeats if device.type == "cuda" and backend != "reference" else args.repeats
                cold, seconds = time_fusion(model, shape, device, backend, repeats)
                voxels = shape[0] * shape[1] * shape[2]
                print(f"{args.malloc:7} {device.type:6} {backend:9} {shape_text:12} {cold:8.3f} {seconds:9.3f} "
                      f"{1 / seconds:10.2f} {voxels / seconds / 1e6:9.2f}", flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{args.malloc:7} peak RSS of these fusions: {peak:.2f} GiB", flush=True)


if __name__ == "__main__":
    main()
