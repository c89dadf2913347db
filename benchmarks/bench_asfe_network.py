"""CPU inference speed and peak memory of the ASFE-Fusion network (lpmnet.methods.asfe).

Fuses batches of random slice pairs with the default-width network (175.7M parameters, random
weights) under ``torch.inference_mode`` and reports seconds per slice, the projected time of a
96-slice volume and the process's peak resident memory. One configuration per run, so that the peak
belongs to it:

    python benchmarks/bench_asfe_network.py                               # 160x160 slices, batch 4, float32
    python benchmarks/bench_asfe_network.py --bf16 --variant fixed --size 256x256 --threads 2
"""

import argparse
import resource
import time

import torch

from lpmnet.methods.asfe import ASFEFusion
from lpmnet.runtime import keep_freed_memory_for_reuse


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="160x160", help="slice H x W (padded to multiples of 128 inside)")
    parser.add_argument("--batch", type=int, default=4, help="slices per forward")
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards (after one warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variant", default="faithful", choices=("faithful", "fixed"))
    parser.add_argument("--bf16", action="store_true", help="run under torch.autocast(cpu, bfloat16)")
    parser.add_argument("--slices", type=int, default=96, help="slices of the projected volume")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    keep_freed_memory_for_reuse()  # as the pipeline's own processes do
    h, w = (int(v) for v in args.size.lower().split("x"))
    torch.manual_seed(0)
    model = ASFEFusion(variant=args.variant).eval()
    x1, x2 = torch.rand(2, args.batch, 1, h, w).unbind(0)
    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20

    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16)
    times, cpu_times = [], []
    with torch.inference_mode(), autocast:
        for _ in range(args.repeats + 1):
            start, cpu_start = time.perf_counter(), time.process_time()
            out = model(x1, x2)
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    assert out.shape == x1.shape and torch.isfinite(out).all()
    per_slice = min(times[1:]) / args.batch
    # On a shared machine the wall time includes waiting for the cores; CPU time / threads is the
    # wall time the same work takes on idle cores (assuming the threads keep all cores busy).
    cpu_per_slice = min(cpu_times[1:]) / args.batch / args.threads
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    minutes = args.slices / 60
    precision = "bf16" if args.bf16 else "fp32"
    print(f"{args.variant} {precision} {h}x{w} batch {args.batch}, {args.threads} threads: "
          f"{per_slice:.2f} s/slice (best of {args.repeats}; all {', '.join(f'{t:.1f}' for t in times)} s), "
          f"{per_slice * minutes:.1f} min per {args.slices}-slice volume; CPU time / threads "
          f"{cpu_per_slice:.2f} s/slice ({cpu_per_slice * minutes:.1f} min per volume); "
          f"peak RSS {peak:.2f} GiB ({rss_model:.2f} GiB after building the model)")


if __name__ == "__main__":
    main()
