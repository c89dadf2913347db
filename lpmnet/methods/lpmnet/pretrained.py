"""The pretrained LPM-Net models that ship with the package (``lpmnet/methods/lpmnet/weights/``).

Two models, one per kind of modality pair, trained by the workflow's ``pretrained`` target (``make
pretrained``; recipe and data in ``config/pretrained.yaml``, the model card in
``lpmnet/methods/lpmnet/weights/MODEL_CARD.md``):

- ``mri-mri``: a T1-weighted MRI with a T2-weighted, FLAIR or PD one;
- ``mri-pet``: an MRI with a PET (or SPECT) volume.

``lpmnet fuse`` without ``--checkpoint`` fuses with the model of the pair's kind, and the workflow's
``training: {init: pretrained}`` fine-tunes from it (:mod:`lpmnet.methods.pretrained` resolves those names
for any method that ships weights; LPM-Net's ``METHOD.pretrained`` is :func:`pretrained_path`).
"""

from __future__ import annotations

from pathlib import Path

from lpmnet.methods.pretrained import KINDS

PRETRAINED_DIR = Path(__file__).parent / "weights"
MODEL_CARD = PRETRAINED_DIR / "MODEL_CARD.md"


def pretrained_path(kind: str) -> Path:
    """The shipped checkpoint of ``kind`` (``mri-mri`` or ``mri-pet``)."""
    if kind not in KINDS:
        raise ValueError(f"no pretrained model {kind!r}; the shipped ones: {', '.join(KINDS)}")
    path = PRETRAINED_DIR / f"lpmnet_{kind}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the pretrained {kind} model is missing from this installation; "
                                "`make pretrained` trains it")
    return path


def model_card(checkpoints: dict, training_logs: dict, datasets: dict, held_out: dict, held_out_names=()) -> str:
    """The model card (Markdown) of the pretrained models ``{kind: checkpoint path}`` with their
    ``{kind: training_log.csv}`` and ``{kind: rows of its held-out table}``
    (:func:`lpmnet.evaluation.heldout.held_out_rows`): what each fuses, its file and sha256, the data it was
    trained on and validated on (``datasets``: name -> dataset config; those of ``held_out_names`` held out),
    with their addresses, checksums and licences, its recipe, its validation figures and the licences."""
    import csv
    import json

    from lpmnet import __version__
    from lpmnet.volumes.io import file_digest
    from lpmnet.methods import read_payload

    lines = ["# Pretrained LPM-Net models", "",
             f"Trained by the workflow's `pretrained` target (`make pretrained`, config/pretrained.yaml) with lpmnet "
             f"{__version__}. `lpmnet fuse` without `--checkpoint` uses the model of the pair's kind; the workflow's "
             "`training: {init: pretrained}` fine-tunes from it and `checkpoint: pretrained` fuses with it.", "",
             "| model | fuses | file | parameters | training pairs | iterations | final validation (training datasets' test subjects) |",
             "|---|---|---|---|---|---|---|"]
    recipes, digests = {}, {}
    for kind, path in checkpoints.items():
        payload = read_payload(path)
        card = payload["model_card"]
        recipes[kind] = card["train_config"]
        digests[kind] = file_digest(path)
        parameters = sum(v.numel() for v in payload["state_dict"].values())
        with open(training_logs[kind], newline="") as f:
            validation = _last_validation(list(csv.DictReader(f)))
        lines.append(f"| {kind} | {KINDS[kind]} | lpmnet_{kind}.pt | {parameters:,} | "
                     f"{len(card['data'])} ({', '.join('-'.join(p) for p in card['pairs'])}) | "
                     f"{card['train_config']['iterations']} | {validation} |")
    lines += ["", "sha256 of the files:", ""] + [f"- `lpmnet_{kind}.pt`: `{digest}`" for kind, digest in digests.items()]
    lines += ["", "## Validation on held-out real pairs", ""]
    if not any(held_out.values()):
        lines += ["Nothing was held out (config `pretrained.held_out`): these models were not validated on data they "
                  "did not train on.", ""]
    lines += ["Each model fused the pairs of its kind of the held-out datasets, which no model trained on, under the "
              "workflow's normalisation (`workflow`: percentile window over each volume's Otsu foreground) and under "
              "one that takes the percentiles inside the head and sets everything outside it to exactly 0 (`head`). "
              "Scores: the paper's eight metrics in the lpmnet convention and the artefact checks "
              "(`lpmnet.evaluation.heldout`). *Wins*: the metrics on which the model beats the mean, the max and the "
              "Laplacian-pyramid fusion together (rSFe: closer to 0).", ""]
    for kind, rows in held_out.items():
        lines += _held_out_section(kind, rows)
    lines += ["## Data", ""]
    for name, cfg in datasets.items():
        lines += _dataset_section(name, cfg, held=name in held_out_names)
    lines += ["## Recipe", "", "Every setting of `lpmnet.engine.train.TrainConfig` (network: LPM-Net's defaults):", ""]
    for kind, recipe in recipes.items():
        lines += [f"- {kind}: `{json.dumps(recipe, sort_keys=True)}`"]
    real = sum(len(cfg.get("files", {})) for name, cfg in datasets.items() if name not in held_out_names)
    lines += ["", "## Limitations", "",
              f"The models saw {real} real subject(s) (Data above) next to synthetic contrasts of one template's "
              "anatomy, and the held-out validation is only as varied as the held-out datasets. Scanners, contrasts "
              "and tracers outside what they saw, and CT, need fine-tuning on your data "
              "(`training: {init: pretrained}`); check the tables' artefact rows (background, lattice).", "",
              "## Licences", "", "The weights: MIT, as the project. The training and validation data keep their "
              "licences, listed with each dataset above.", ""]
    return "\n".join(lines)


def _held_out_section(kind, rows) -> list[str]:
    """The held-out figures of one model: per pair and normalisation, its wins and every method's scores."""
    from lpmnet.metrics import ARTEFACT_NAMES, PAPER_METRICS

    columns = [*PAPER_METRICS, *ARTEFACT_NAMES]
    lines = [f"### {kind}", ""]
    groups = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["subject"], row["pair"], row["normalisation"]), []).append(row)
    for (dataset, subject, pair, normalisation), group in groups.items():
        model = next(r for r in group if r["method"] == "model")
        won = [w for w in str(model["wins"] or "").split(",") if w]
        lines += [f"{dataset} {subject} {pair}, `{normalisation}` normalisation: wins {len(won)} of {len(PAPER_METRICS)}"
                  f"{' (' + ', '.join(won) + ')' if won else ''}; background {float(model['background']):.4f}, "
                  f"lattice {float(model['lattice']):.3f}.", "",
                  "| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        lines += ["| " + " | ".join([r["method"] if r["method"] != "model" else f"lpmnet_{kind}"]
                                    + [f"{float(r[c]):.4g}" for c in columns]) + " |" for r in group]
        lines.append("")
    return lines


def _dataset_section(name, cfg, held) -> list[str]:
    """One dataset of the card: where its volumes come from, their checksums and licence."""
    from lpmnet.volumes.demo import TEMPLATE_NOTE

    role = "held out, validation only" if held else "training"
    if cfg["source"] == "demo":
        return [f"### {name} ({role})", "",
                f"Synthetic subjects of the project's generator (`lpmnet.volumes.demo`): {cfg['subjects']} subjects, "
                f"seed {cfg['seed']} (the demo dataset uses seed 0), modalities {', '.join(cfg['modalities'])}, "
                f"{cfg['voxel_mm']} mm isotropic, generated co-registered. Anatomy: {TEMPLATE_NOTE['name']}. Its "
                f"licence: {TEMPLATE_NOTE['licence']} References: {' '.join(TEMPLATE_NOTE['references'])}", ""]
    lines = [f"### {name} ({role})", "", f"Licence: {cfg.get('licence', 'not stated in the config')}.", "",
             "| subject | modality | address | sha256 |", "|---|---|---|---|"]
    lines += [f"| {subject} | {modality} | {entry['url']} | `{entry['sha256']}` |"
              for subject, files in cfg.get("files", {}).items() for modality, entry in files.items()]
    return lines + [""]


def _last_validation(rows) -> str:
    """The last validation figures of a training log ("SSIM 0.89, Qabf 0.56" at iteration n)."""
    for row in reversed(rows):
        values = {k.removeprefix("val_"): v for k, v in row.items() if k.startswith("val_") and v not in ("", None)}
        if values:
            return ", ".join(f"{k} {float(v):.3f}" for k, v in values.items()) + f" (iteration {row['iteration']})"
    return "none"
