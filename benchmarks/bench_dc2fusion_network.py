"""Seconds and peak memory of one DC2Fusion forward (eval, float32, ``torch.inference_mode``) on CPU.

The CPU time (``time.process_time``, all threads) is printed beside the wall time: on a machine shared
with other work the wall time of small parallel operations is dominated by waiting for descheduled
threads, and one thread's CPU time is the better estimate of the idle-machine cost.

Builds the default (as trained) model, ``embed_dim=96``, with random weights and fuses one pair of
random volumes per shape; one warm-up forward on a small volume first. Peak memory is the process's
maximum resident set size (``resource.getrusage``), so it covers everything up to that point.

    python benchmarks/bench_dc2fusion_network.py                          # 128^3 and 96x160x160, 2 threads
    python benchmarks/bench_dc2fusion_network.py --shapes 64x64x64 --variant fixed --threads 4
"""

import argparse
import resource
import sys
import time

import torch

from lpmnet.methods.dc2fusion import DC2Fusion


def parse_shape(text):
    return tuple(int(v) for v in text.lower().split("x"))


def peak_rss_gib():
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2 ** 30


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["128x128x128", "96x160x160"])
    parser.add_argument("--embed-dim", type=int, default=96)
    parser.add_argument("--variant", choices=["faithful", "fixed"], default="faithful")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = DC2Fusion(embed_dim=args.embed_dim, variant=args.variant).eval()
    print(f"DC2Fusion embed_dim={args.embed_dim} variant={args.variant}: "
          f"{sum(p.numel() for p in model.parameters()):,} parameters, {args.threads} threads, "
          f"peak RSS after build {peak_rss_gib():.2f} GiB")
    with torch.inference_mode():
        model(torch.rand(1, 1, 32, 32, 32), torch.rand(1, 1, 32, 32, 32))
        for text in args.shapes:
            shape = parse_shape(text)
            x1, x2 = torch.rand(1, 1, *shape), torch.rand(1, 1, *shape)
            walls, cpus = [], []
            for _ in range(args.repeats):
                wall, cpu = time.perf_counter(), time.process_time()
                fused = model(x1, x2)
                walls.append(time.perf_counter() - wall)
                cpus.append(time.process_time() - cpu)
            assert fused.shape == x1.shape and torch.isfinite(fused).all()
            print(f"{text}: {min(walls):.1f} s per volume (best of {args.repeats}; "
                  f"{min(cpus):.1f} s of CPU time over all threads), peak RSS so far {peak_rss_gib():.2f} GiB")


if __name__ == "__main__":
    main()
