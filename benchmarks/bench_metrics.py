"""Time the fusion metrics: each metric alone and all of them together, per convention.

Requirement: ``compute_all`` of both conventions on a 128x192x192 triple takes under 10 s on a 2-core
CPU. The volumes are smoothed noise in [0, 1] (image-like gradients and histograms) and F is a blend
of A and B, as a fusion output would be. Each time is the best of ``--repeats`` runs, as wall seconds
and, in parentheses, CPU seconds of the process: on a shared machine the CPU time shows how much work
the metrics do whatever else is running (wall can be lower than CPU when both cores work).

    python benchmarks/bench_metrics.py [--shape 128 192 192] [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lpmnet.metrics import CONVENTIONS, METRIC_NAMES, compute_all, compute_metrics  # noqa: E402


def volumes(shape, seed):
    """A and B: box-smoothed uniform noise rescaled to [0, 1]; F a random blend of them."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(2):
        x = torch.rand((1, 1, *shape), generator=generator, dtype=torch.float64)
        x = torch.nn.functional.avg_pool3d(x, 5, stride=1, padding=2)[0, 0]
        out.append((x - x.min()) / (x.max() - x.min()))
    weight = float(torch.rand((), generator=generator, dtype=torch.float64))
    return out[0].numpy(), out[1].numpy(), (weight * out[0] + (1 - weight) * out[1]).numpy()


def best_of(repeats, fn):
    """Smallest wall time and smallest process CPU time over ``repeats`` runs of ``fn``."""
    best_wall = best_cpu = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return best_wall, best_cpu


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(128, 192, 192), metavar=("D", "H", "W"))
    parser.add_argument("--repeats", type=int, default=3, help="report the best of this many runs")
    parser.add_argument("--device", default=None, help="torch device to compute on (default: CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--skip-per-metric", action="store_true", help="time only the complete runs")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    a, b, f = volumes(tuple(args.shape), args.seed)
    print(f"shape {tuple(args.shape)}, device {args.device or 'cpu'}, torch threads {torch.get_num_threads()}, "
          f"best of {args.repeats}; seconds: wall (process CPU)")
    if not args.skip_per_metric:
        print(f"{'metric':6s}" + "".join(f"{c:>18s}" for c in CONVENTIONS) + "   (one metric, input checks included)")
        for name in METRIC_NAMES:
            row = [best_of(args.repeats, lambda c=c: compute_metrics(a, b, f, convention=c, device=args.device,
                                                                      metrics=[name]))
                   for c in CONVENTIONS]
            print(f"{name:6s}" + "".join(f"{wall:10.3f} ({cpu:5.2f})" for wall, cpu in row))
    for convention in CONVENTIONS:
        wall, cpu = best_of(args.repeats, lambda c=convention: compute_metrics(a, b, f, convention=c,
                                                                               device=args.device))
        print(f"all metrics, {convention:8s}      : {wall:7.3f} ({cpu:.2f})")
    wall, cpu = best_of(args.repeats, lambda: compute_all(a, b, f, device=args.device))
    print(f"compute_all, both conventions: {wall:7.3f} ({cpu:.2f})")


if __name__ == "__main__":
    main()
