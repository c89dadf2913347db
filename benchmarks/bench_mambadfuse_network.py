"""Slice-wise fusion speed of the MambaDFuse re-implementation (lpmnet.methods.mambadfuse).

Fuses random image pairs of one slice size in float32, eval mode, under torch.inference_mode, in
batches of slices, and reports seconds per slice and per volume of --slices slices (default: the
96 slices of a 96x160x160 volume). Wall time is what a user waits; the process CPU time divided
by the thread count is shown too, since wall time on a shared machine includes other processes'
load (there, set OMP_WAIT_POLICY=PASSIVE: threads waiting for a descheduled peer otherwise spin,
and the spinning counts as CPU time). The first batch warms up (and builds the C++ scan kernel, if
it is not cached yet).

    python benchmarks/bench_mambadfuse_network.py [--size 160x160] [--batch 8] [--threads 2]
        [--repeats 2] [--backends cpu] [--profile]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lpmnet.methods.mambadfuse import MambaDFuse  # noqa: E402
from lpmnet.runtime import keep_freed_memory_for_reuse  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="160x160", help="slice size HxW")
    ap.add_argument("--batch", type=int, default=8, help="slices per forward pass")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="timed batches after the warm-up")
    ap.add_argument("--slices", type=int, default=96, help="slices per volume, for the per-volume figure")
    ap.add_argument("--backends", default="cpu", help="comma-separated scan backends")
    ap.add_argument("--profile", action="store_true", help="print torch.profiler's op table of one batch")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    # As the lpmnet command and the workflow's jobs do: reuse freed blocks instead of fresh pages.
    keep_freed_memory_for_reuse()
    h, w = (int(v) for v in args.size.lower().split("x"))
    g = torch.Generator().manual_seed(0)
    x1 = torch.rand(args.batch, 1, h, w, generator=g)
    x2 = torch.rand(args.batch, 1, h, w, generator=g)

    for backend in args.backends.split(","):
        model = MambaDFuse(scan_backend=backend).eval()
        with torch.inference_mode():
            model(x1, x2)  # warm-up
            walls, cpus = [], []
            for _ in range(args.repeats):
                t0, c0 = time.perf_counter(), time.process_time()
                model(x1, x2)
                walls.append(time.perf_counter() - t0)
                cpus.append((time.process_time() - c0) / args.threads)
            if args.profile:
                from torch.profiler import profile

                with profile() as prof:
                    model(x1, x2)
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
        wall = min(walls) / args.batch
        cpu = min(cpus) / args.batch
        print(f"backend={backend} size={h}x{w} batch={args.batch} threads={args.threads}: "
              f"{wall:.2f} s/slice wall ({cpu:.2f} s/slice CPU/threads), "
              f"{wall * args.slices:.0f} s per {args.slices}-slice volume "
              f"({cpu * args.slices:.0f} s CPU/threads); peak RSS "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB")


if __name__ == "__main__":
    main()
