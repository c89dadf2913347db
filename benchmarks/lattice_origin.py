"""Where a held-out pair's lattice figure comes from: the model's window grid or the anatomy.

For each held-out pair of one kind in config/pretrained.yaml (raw volumes as the workflow downloaded them,
normalised by --normalisation; by default the head-only one, where the shipped mri-pet model's lattice
figure comes closest to its limit), with the shipped model of that kind or --checkpoint:

- the spectral peak at the window period along each axis (:func:`lpmnet.metrics.artefacts.spectral_peak`) of
  each source, of the mean, max and Laplacian-pyramid fusions and of the model's fusion, and the lattice
  figure of each (its peak over the mean's, at the worst axis), as the held-out table computes it;
- the same for the model's fusion with its window grid moved against the anatomy by --shifts voxels along
  every axis (:func:`lpmnet.evaluation.heldout.fused_with_grid_shift`), for the average of its fusions with
  the grid moved by 0 or half a period along each axis, every combination
  (:func:`lpmnet.evaluation.heldout.grid_cancelled`), in which what is locked to the grid cancels, and, with
  --series, for each of those checkpoints (for instance the ones a training keeps with ``keep_every``), to
  follow the figure along the iterations.

Prints Markdown tables and writes their rows to --out.

    python benchmarks/lattice_origin.py --results results --kind mri-pet --out results/pretrained/lattice_origin.tsv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from pretrained_recipes import held_out_pairs  # noqa: E402

from lpmnet.evaluation.heldout import (NORMALISATIONS, fused_with_grid_shift, grid_cancelled,  # noqa: E402
                                       normalised_pair)
from lpmnet.methods import get_method  # noqa: E402
from lpmnet.methods.classical import fuse_classical  # noqa: E402
from lpmnet.methods.lpmnet.pretrained import pretrained_path  # noqa: E402
from lpmnet.methods.pretrained import KINDS  # noqa: E402
from lpmnet.metrics.artefacts import LATTICE_PERIOD, spectral_peak  # noqa: E402
from lpmnet.metrics.compute import compute_metrics  # noqa: E402


def lattice(a, b, fused) -> float:
    return float(compute_metrics(a, b, np.asarray(fused, np.float32), "artefacts", metrics=["lattice"])
                 .values["lattice"])


def peaks(volume) -> list[float]:
    tensor = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float64))
    return [float(spectral_peak(tensor, axis)) for axis in range(volume.ndim)]


def fusion_of(lpmnet, checkpoint):
    model, _ = lpmnet.load(checkpoint, map_location="cpu")
    return lambda a, b: lpmnet.fuse(model, a, b, device="cpu")["fused"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "config" / "pretrained.yaml"))
    parser.add_argument("--results", default="results")
    parser.add_argument("--kind", choices=KINDS, default="mri-pet")
    parser.add_argument("--checkpoint", help="the model to examine (default: the shipped model of --kind)")
    parser.add_argument("--normalisation", choices=NORMALISATIONS, default="head")
    parser.add_argument("--shifts", type=int, nargs="+", default=[4, 8, 12])
    parser.add_argument("--series", nargs="*", default=[], help="checkpoints whose lattice figure to list")
    parser.add_argument("--out", default="results/pretrained/lattice_origin.tsv")
    args = parser.parse_args(argv)
    if min(args.shifts) < 0:
        parser.error("--shifts: voxel counts >= 0")
    torch.set_num_threads(1)
    config = yaml.safe_load(Path(args.config).read_text())
    lpmnet = get_method("lpmnet")
    fuse = fusion_of(lpmnet, args.checkpoint or pretrained_path(args.kind))
    rows = []
    for label, path1, path2, colour in held_out_pairs(config, args.results)[args.kind]:
        a, b = normalised_pair(path1, path2, args.normalisation, colour=colour)
        fused = fuse(a, b)
        volumes = {"first source": a, "second source": b, "mean": (a + b) / 2, "max": np.maximum(a, b),
                   "laplacian": fuse_classical("laplacian", a, b), "model": fused}
        volumes.update({f"model, grid moved by {shift}": fused_with_grid_shift(fuse, a, b, shift)
                        for shift in args.shifts if shift})
        volumes[f"model, grid-cancelled (moves of 0 and {LATTICE_PERIOD // 2})"] = grid_cancelled(
            fuse, a, b, LATTICE_PERIOD)
        volumes.update({checkpoint: fusion_of(lpmnet, checkpoint)(a, b) for checkpoint in args.series})
        pair_rows = [{"volume": name, **{f"peak axis {axis}": p for axis, p in enumerate(peaks(volume))},
                      "lattice": lattice(a, b, volume)} for name, volume in volumes.items()]
        table = pd.DataFrame(pair_rows)
        print(f"## {label}, {args.normalisation} normalisation (peak at period {LATTICE_PERIOD})\n")
        print(table.to_markdown(index=False, floatfmt=".3f"), end="\n\n", flush=True)
        rows += [{"pair": label, "normalisation": args.normalisation, **row} for row in pair_rows]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(args.out, sep="\t", index=False, float_format="%.4g")


if __name__ == "__main__":
    main()
