"""Peak memory of the workflow's heavy steps against the memory their rules declare (``mem_mb``).

Each step runs in a fresh process with the settings of ``config/config.yaml`` (as its job would: the
job's malloc settings, 2 threads) on a pair of synthetic head-like volumes of each shape (NIfTI voxel
order i x j x k), and reports its peak resident memory (``ru_maxrss``) beside the ``mem_mb`` that
:mod:`lpmnet.memory` (and each method's estimate) derives for that rule from the same input files.

    python benchmarks/bench_memory.py                          # the three shapes below, every step
    python benchmarks/bench_memory.py --shapes 182x218x182 --steps fuse fuse_whole
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "support"))

STEPS = ("fuse", "fuse_whole", "train", "metrics", "register")
SHAPES = ("96x160x160", "182x218x182", "240x240x155")


def workflow_config():
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def lpmnet_config():
    """The workflow's settings of the lpmnet method: model, training recipe, fusion settings."""
    cfg = workflow_config()["methods"]["lpmnet"]
    training = {k: v for k, v in cfg.get("training", {}).items() if k != "init"}
    if "patch_size" in training:
        training["patch_size"] = tuple(training["patch_size"]) or None
    return cfg.get("model", {}), training, cfg.get("fusion", {})


def write_inputs(folder, shape):
    """A pair of volumes of ``shape`` and an untrained LPM-Net checkpoint (fusion costs the same)."""
    import torch

    from helpers import write_pair
    from lpmnet.methods import save_checkpoint
    from lpmnet.methods.lpmnet.network import LPMNet

    x1, x2 = write_pair(folder, shape=shape)
    torch.manual_seed(0)
    model = LPMNet(**lpmnet_config()[0])
    save_checkpoint(folder / "model.pt", model, "lpmnet", model.config, model_card={})
    return x1, x2


def run_step(step, folder):
    """The work of one job (what its script calls), in this process."""
    import torch

    from lpmnet.runtime import keep_freed_memory_for_reuse

    keep_freed_memory_for_reuse()
    torch.set_num_threads(2)
    config = workflow_config()
    model, training, fusion = lpmnet_config()
    x1, x2 = folder / "sub-01_T1.nii.gz", folder / "sub-01_FLAIR.nii.gz"
    if step in ("fuse", "fuse_whole"):
        from lpmnet.engine.fuse import fuse_files

        budget = fusion.get("memory_budget_mb") if step == "fuse" else None
        fuse_files(x1, x2, folder / "fused.nii.gz", folder / "model.pt", device="cpu", memory_budget_mb=budget)
    elif step == "train":
        from lpmnet.engine.train import TrainConfig, train

        settings = {**training, "iterations": 3, "model": model}
        train([(x1, x2)], folder / "train", TrainConfig(checkpoint_every=3, **settings), device="cpu", progress=False)
    elif step == "metrics":
        import numpy as np

        from lpmnet.volumes.io import dhw, load_volume
        from lpmnet.metrics import compute_all
        from lpmnet.volumes.normalize import minmax01

        a, b = (minmax01(dhw(load_volume(p).data)) for p in (x1, x2))
        compute_all(a, b, np.maximum(a, b), conventions=config["metrics"]["conventions"],
                    axis=config["metrics"]["axis"])
    elif step == "register":
        from lpmnet.volumes.registration import register

        register(x1, x2, folder / "registered.nii.gz", str(folder / "xfm"),
                 transform=config["registration"]["transform"], seed=config["registration"]["seed"],
                 threads=config["registration"]["threads"])
    else:
        raise ValueError(f"unknown step {step!r}")


def declared_mem_mb(step, folder):
    from lpmnet import memory
    from lpmnet.methods import get_method
    from lpmnet.engine.train import TrainConfig

    model, training, fusion = lpmnet_config()
    method = get_method("lpmnet")
    x1, x2 = folder / "sub-01_T1.nii.gz", folder / "sub-01_FLAIR.nii.gz"
    if step == "fuse":
        return method.fusion_mem_mb(x1, model, fusion)
    if step == "fuse_whole":
        return method.fusion_mem_mb(x1, model, {**fusion, "memory_budget_mb": None})
    if step == "train":
        return method.training_mem_mb([x1], TrainConfig(**training, model=model))
    if step == "metrics":
        return memory.metrics_mem_mb(x1)
    return memory.registration_mem_mb(x1, x2)


def child(step, folder):
    tic = time.perf_counter()
    run_step(step, Path(folder))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mb": peak, "seconds": time.perf_counter() - tic}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES))
    parser.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS)
    parser.add_argument("--child", nargs=2, metavar=("STEP", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)

    print(f"{'shape':>12} {'step':>10} {'peak MB':>9} {'mem_mb':>8} {'declared/peak':>13} {'seconds':>8}")
    for text in args.shapes:
        shape = tuple(int(v) for v in text.split("x"))
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            write_inputs(folder, shape)
            for step in args.steps:
                out = subprocess.run([sys.executable, __file__, "--child", step, str(folder)], check=True,
                                     capture_output=True, text=True).stdout
                measured = json.loads(out.strip().splitlines()[-1])
                declared = declared_mem_mb(step, folder)
                print(f"{text:>12} {step:>10} {measured['peak_mb']:9.0f} {declared:8d} "
                      f"{declared / measured['peak_mb']:13.2f} {measured['seconds']:8.1f}", flush=True)


if __name__ == "__main__":
    main()
