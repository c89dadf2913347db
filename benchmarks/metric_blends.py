"""Where the paper's eight metrics put the mean and the max fusion, on the held-out real pairs.

For each held-out pair of config/pretrained.yaml (raw volumes as the workflow downloaded them, normalised as the
workflow does), every metric is computed along the blends (1 - t) * mean + t * max, t = 0 .. 1
(:func:`lpmnet.evaluation.heldout.blend_profile`), and for the Laplacian pyramid, PCA and the shipped model
of the pair's kind: its value and whether it beats both the mean and the max fusion. A metric whose best
blend is t = 0 rewards mean-like volumes, t = 1 max-like ones; a metric on which no fusion beats both ends is
one that the tables cannot show any method winning against both.

    python benchmarks/metric_blends.py --results results --out results/pretrained/metric_blends.tsv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from pretrained_recipes import held_out_pairs  # noqa: E402

from lpmnet.evaluation.heldout import blend_profile, normalised_pair  # noqa: E402
from lpmnet.methods import get_method  # noqa: E402
from lpmnet.methods.classical import fuse_classical  # noqa: E402
from lpmnet.methods.lpmnet.pretrained import pretrained_path  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "config" / "pretrained.yaml"))
    parser.add_argument("--results", default="results")
    parser.add_argument("--out", default="results/pretrained/metric_blends.tsv")
    args = parser.parse_args(argv)
    config = yaml.safe_load(Path(args.config).read_text())
    lpmnet = get_method("lpmnet")
    rows = []
    for kind, pairs in held_out_pairs(config, args.results).items():
        model, _ = lpmnet.load(pretrained_path(kind), map_location="cpu")
        for label, path1, path2, colour in pairs:
            a, b = normalised_pair(path1, path2, "workflow", colour=colour)
            others = {rule: fuse_classical(rule, a, b) for rule in ("laplacian", "pca")}
            others["lpmnet"] = lpmnet.fuse(model, a, b, device="cpu")["fused"]
            for metric, entry in blend_profile(a, b, others).items():
                rows.append({"pair": label, "metric": metric, "mean": entry["blend"][0.0], "max": entry["blend"][1.0],
                             "best_t": entry["best_t"],
                             **{name: f["value"] for name, f in entry["fusions"].items()},
                             "beat_mean_and_max": ",".join(n for n, f in entry["fusions"].items()
                                                           if f["beats_mean_and_max"])})
                print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, sep="\t", index=False, float_format="%.4g")
    print(table.to_markdown(index=False, floatfmt=".4g"))


if __name__ == "__main__":
    main()
