"""Choose the shipped models' recipe by evidence: train recipe variants on the pretrained models' own training
pairs and score each on the held-out real pairs against the mean, max and Laplacian-pyramid fusions.

Run after the `pretrained` target (`make pretrained`, or snakemake with config/pretrained.yaml): the training
pairs are read from each shipped model's card in results/pretrained/<kind>/model.pt (the workflow's
normalised volumes) and the held-out pairs from the raw volumes the workflow downloaded. Every variant trains
with the shipped recipe (config/pretrained.yaml) with its own loss, augmentation and loss settings, for
--iterations iterations, then
:func:`lpmnet.evaluation.heldout.evaluate_model` scores it under both normalisations. Writes one TSV row per
variant, pair and normalisation (the number of metrics won, the background and the lattice) and prints a
Markdown table.

    python benchmarks/pretrained_recipes.py --iterations 400 --out results/pretrained/recipes.tsv
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lpmnet.engine.train import TrainConfig, train  # noqa: E402
from lpmnet.evaluation.heldout import evaluate_model  # noqa: E402
from lpmnet.methods import read_payload  # noqa: E402
from lpmnet.methods.pretrained import kind_of_modalities  # noqa: E402
from lpmnet.volumes.sources import url_nifti_extension  # noqa: E402
from lpmnet.workflow.config import held_out_files, resolve_pretraining  # noqa: E402
from lpmnet.workflow.index import with_defaults  # noqa: E402
from lpmnet.workflow.paths import Paths  # noqa: E402

def variant(kind, loss="mif", augmentation="flips", real=True, head_fraction=0.0, **loss_settings):
    """(kind, its loss, augmentation, head fraction and loss settings, whether the real training datasets are
    used)."""
    return kind, {"loss": loss, "augmentation": augmentation, "head_fraction": head_fraction,
                  "loss_settings": loss_settings}, real


#: name -> variant: the shipped recipe with these loss, augmentation, head fraction and loss settings
#: ("flips+head": flips with head_fraction 0.5, half the patches normalised inside the head).
VARIANTS = {
    "mif, synthetic only": variant("mri-mri", real=False),
    "mif": variant("mri-mri"),
    "lpmnet faithful": variant("mri-mri", "lpmnet"),
    "lpmnet fixed": variant("mri-mri", "lpmnet", mode="fixed"),
    "mif, gradient x2": variant("mri-mri", gradient_weight=200.0),
    "mif + acquisition": variant("mri-mri", augmentation="acquisition"),
    "lpmnet+mif": variant("mri-mri", "lpmnet+mif"),
    "mif, flips+head": variant("mri-mri", head_fraction=0.5),
    "mif+background, flips+head": variant("mri-mri", "mif+background", head_fraction=0.5),
    "mif+background, intensity x2, flips+head": variant("mri-mri", "mif+background", head_fraction=0.5,
                                                        intensity_weight=40.0),
    "pet: mif": variant("mri-pet"),
    "pet: lpmnet faithful": variant("mri-pet", "lpmnet"),
    "pet: mif + acquisition": variant("mri-pet", augmentation="acquisition"),
    "pet: lpmnet+mif": variant("mri-pet", "lpmnet+mif"),
    "pet: mif, flips+head": variant("mri-pet", head_fraction=0.5),
    "pet: mif, intensity x2, flips+head": variant("mri-pet", head_fraction=0.5, intensity_weight=40.0),
    "pet: mif+background, flips+head": variant("mri-pet", "mif+background", head_fraction=0.5),
    "pet: mif+background x3, intensity x2, flips+head": variant("mri-pet", "mif+background", head_fraction=0.5,
                                                                intensity_weight=40.0, background_weight=300.0),
}


def held_out_pairs(config, results):
    """kind -> [(label, first raw volume, second raw volume, colour map or None)] of the held-out datasets, where
    the workflow downloaded them under ``results``."""
    datasets = {name: with_defaults(cfg) for name, cfg in config["datasets"].items()}
    paths = Paths(results)
    pairs = {}
    for name, subject, first, second, file1, file2, colour in held_out_files(config["pretrained"], datasets):
        path1, path2 = (paths.nifti_download(name, subject, modality, url_nifti_extension(entry["url"]))
                        for modality, entry in ((first, file1), (second, file2)))
        pairs.setdefault(kind_of_modalities(first, second), []).append(
            (f"{name} {subject} {first}-{second}", path1, path2, colour))
    return pairs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "config" / "pretrained.yaml"))
    parser.add_argument("--results", default="results")
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), help="names of VARIANTS to run")
    parser.add_argument("--work", default="results/pretrained/recipes")
    parser.add_argument("--out", default="results/pretrained/recipes.tsv")
    args = parser.parse_args(argv)
    config = yaml.safe_load(Path(args.config).read_text())
    synthetic = [name for name, cfg in config["datasets"].items() if cfg["source"] == "demo"]
    held_out = held_out_pairs(config, args.results)
    recipes = resolve_pretraining(config["pretrained"], {n: with_defaults(c) for n, c in config["datasets"].items()})
    rows = []
    for name in args.variants:
        kind, changes, real = VARIANTS[name]
        card = read_payload(Path(args.results) / "pretrained" / kind / "model.pt")["model_card"]
        # The shipped model's training pairs (results/<dataset>/...), the real ones dropped where asked.
        pairs = [(d["x1"], d["x2"]) for d in card["data"]
                 if real or Path(d["x1"]).relative_to(args.results).parts[0] in synthetic]
        recipe = {**recipes[kind], **changes, "iterations": args.iterations, "val_every": args.iterations + 1}
        tic = time.perf_counter()
        model = train(pairs, Path(args.work) / name.replace(" ", "_").replace(":", "").replace(",", ""),
                      TrainConfig(**recipe), device="cpu", progress=False, normalize=False, restart_stale=True)
        seconds = time.perf_counter() - tic
        for label, path1, path2, colour in held_out[kind]:
            for result in evaluate_model(model, path1, path2, colour=colour):
                rows.append({"variant": name, "kind": kind, "pairs": len(pairs), "iterations": args.iterations,
                             "train_seconds": round(seconds, 1), "pair": label,
                             "normalisation": result.normalisation, "wins": len(result.won),
                             "won": ",".join(result.won), "background": result.model["background"],
                             "lattice": result.model["lattice"]})
                print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, sep="\t", index=False, float_format="%.4g")
    print(table.pivot_table(index="variant", columns=["pair", "normalisation"], values="wins").to_markdown())


if __name__ == "__main__":
    main()
