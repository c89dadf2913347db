"""Benchmark the selective-scan backends against the plain sequential reference scan.

Times, for each backend, the forward pass in inference mode (no grad) and forward + backward,
on LPM-Net's real shapes: batch = number of 16x16 windows (9600 for one view of one layer of a
96x160x160 volume), d = 24, N = 8, L = 256, with D, z, delta_bias and softplus as the Mamba block
calls it. The reference is the Python loop over time (lpmnet.ops.selective_scan.selective_scan_ref), run in batch
blocks (--ref-block) so its autograd graph fits in memory.

    python benchmarks/bench_scan.py [--batch 9600] [--repeats 3] [--backends cpu,torch,reference]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lpmnet.ops import backends, cpu  # noqa: E402
from lpmnet.ops import selective_scan as scan  # noqa: E402
from lpmnet.ops.selective_scan import selective_scan_ref as reference_selective_scan  # noqa: E402


def make_inputs(batch, dim, L, N, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    dt = torch.exp(torch.rand(dim, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    t = dict(
        u=torch.randn(batch, dim, L, generator=g),
        delta=0.3 * torch.randn(batch, dim, L, generator=g),
        A=-torch.arange(1, N + 1, dtype=torch.float32).repeat(dim, 1),
        B=torch.randn(batch, N, L, generator=g),
        C=torch.randn(batch, N, L, generator=g),
        D=torch.ones(dim),
        z=torch.randn(batch, dim, L, generator=g),
        delta_bias=dt + torch.log(-torch.expm1(-dt)),
    )
    return {k: v.to(device) for k, v in t.items()}


def reference_blocked(ref_block, grad, **kw):
    """The sequential reference over batch blocks (backward per block when grad is True)."""
    batch = kw["u"].shape[0]
    outs = []
    for s in range(0, batch, ref_block):
        part = {k: (v[s:s + ref_block] if v.dim() == 3 else v) for k, v in kw.items()}
        y = reference_selective_scan(**part, delta_softplus=True)
        if grad:
            y.backward(torch.ones_like(y))
            y = y.detach()
        outs.append(y)
    return torch.cat(outs)


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(fn, repeats, device, warmup=True):
    """min wall seconds (and the process CPU seconds of that run) over `repeats`, after a warm-up."""
    if warmup:
        fn()
        sync(device)
    best = (math.inf, math.inf)
    for _ in range(repeats):
        c0, t0 = cpu_seconds(), time.perf_counter()
        fn()
        sync(device)
        run = (time.perf_counter() - t0, cpu_seconds() - c0)
        best = min(best, run)
    return best


def bench(name, inputs, args):
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
    if name == "reference":
        def fwd():
            with torch.no_grad():
                reference_blocked(args.ref_block, False, **inputs)

        def fwd_bwd():
            for v in leaves.values():
                v.grad = None
            reference_blocked(args.ref_block, True, **leaves)
    else:
        def fwd():
            with torch.no_grad():
                scan.selective_scan(**inputs, delta_softplus=True, backend=name)

        def fwd_bwd():
            for v in leaves.values():
                v.grad = None
            y = scan.selective_scan(**leaves, delta_softplus=True, backend=name)
            y.backward(torch.ones_like(y))

    # The slow reference runs --ref-repeats times without warm-up (its loop is warm after a step).
    reps, warm = (args.ref_repeats, False) if name == "reference" else (args.repeats, True)
    f = timed(fwd, reps, args.device, warm)
    fb = timed(fwd_bwd, reps, args.device, warm) if not args.no_backward else (math.nan, math.nan)
    return f, fb


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=9600, help="number of sequences (16x16 windows)")
    p.add_argument("--dim", type=int, default=24, help="channels d (d_model * expand)")
    p.add_argument("--state", type=int, default=8, help="state size N")
    p.add_argument("--length", type=int, default=256, help="sequence length L")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (min is kept)")
    p.add_argument("--backends", default=None,
                   help="comma-separated: cuda,cpu,torch,reference (default: all available)")
    p.add_argument("--device", default="cpu", help="device of the tensors (cpu or cuda)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--ref-block", type=int, default=1200,
                   help="batch block of the sequential reference (bounds its autograd memory)")
    p.add_argument("--ref-repeats", type=int, default=1, help="timed runs of the reference")
    p.add_argument("--no-backward", action="store_true", help="time the forward pass only")
    p.add_argument("--same-process", action="store_true",
                   help="run all backends in this process (default: one fresh process each, so "
                        "one backend's memory-allocator state cannot slow down the next)")
    p.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    names = args.backends.split(",") if args.backends else [
        n for n in backends.available_backends() if n != ("cpu" if device.type == "cuda" else "cuda")
    ] + ["reference"]
    info = cpu.cpu_kernel_info() if "cpu" in names else None
    if args._child:
        inputs = make_inputs(args.batch, args.dim, args.length, args.state, device)
        print("RESULT " + json.dumps(bench(names[0], inputs, args)), flush=True)
        return None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    if info:
        print(f"C++ kernel {info['name']}: build/load {info['seconds'] or 0:.1f} s"
              + (f" (error: {info['error']})" if info["error"] else ""))
    print(f"shape: batch={args.batch} d={args.dim} N={args.state} L={args.length} float32, "
          f"D + z + delta_bias + softplus; min of {args.repeats} runs\n")

    results = {}
    inputs = None
    for name in names:
        if args.same_process:
            if inputs is None:
                inputs = make_inputs(args.batch, args.dim, args.length, args.state, device)
            results[name] = bench(name, inputs, args)
        else:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", "--backends", name,
                   "--batch", str(args.batch), "--dim", str(args.dim), "--state", str(args.state),
                   "--length", str(args.length), "--repeats", str(args.repeats),
                   "--device", args.device, "--ref-block", str(args.ref_block),
                   "--ref-repeats", str(args.ref_repeats)]
            cmd += ["--threads", str(args.threads)] if args.threads else []
            cmd += ["--no-backward"] if args.no_backward else []
            out = subprocess.run(cmd, capture_output=True, text=True)
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if out.returncode != 0 or not line:
                print(f"  {name}: failed\n{out.stdout}{out.stderr}")
                continue
            results[name] = json.loads(line[0][len("RESULT "):])
        (f, fc), (fb, fbc) = results[name]
        print(f"  measured {name}: fwd {f:.3f} s (cpu {fc:.2f} s), fwd+bwd {fb:.3f} s (cpu {fbc:.2f} s)",
              flush=True)

    base = results.get("reference")
    print()
    header = f"{'backend':<10} {'fwd s':>9} {'fwd+bwd s':>10} {'fwd speed-up':>13} {'fwd+bwd speed-up':>17}"
    print(header)
    print("-" * len(header))
    for name, ((f, _), (fb, _)) in results.items():
        su_f = f"{base[0][0] / f:.1f}x" if base else "-"
        su_fb = f"{base[1][0] / fb:.1f}x" if base and not math.isnan(fb) else "-"
        print(f"{name:<10} {f:>9.3f} {fb:>10.3f} {su_f:>13} {su_fb:>17}")
    return results


if __name__ == "__main__":
    main()
