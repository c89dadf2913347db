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


def model_card(checkpoints: dict, training_logs: dict, dataset_config: dict) -> str:
    """The model card (Markdown) of the pretrained models ``{kind: checkpoint path}`` with their
    ``{kind: training_log.csv}``: what each fuses,
    its file and digest, the data it was trained and validated on, its recipe, its last validation
    figures and the licences."""
    import csv
    import json

    from lpmnet import __version__
    from lpmnet.volumes.demo import TEMPLATE_NOTE
    from lpmnet.volumes.io import file_digest
    from lpmnet.methods import read_payload

    lines = ["# Pretrained LPM-Net models", "",
             f"Trained by the workflow's `pretrained` target (`make pretrained`, config/pretrained.yaml) with lpmnet "
             f"{__version__}. `lpmnet fuse` without `--checkpoint` uses the model of the pair's kind; the workflow's "
             "`training: {init: pretrained}` fine-tunes from it and `checkpoint: pretrained` fuses with it.", "",
             "| model | fuses | file | sha256 | parameters | training pairs | iterations | final validation |",
             "|---|---|---|---|---|---|---|---|"]
    recipes = {}
    for kind, path in checkpoints.items():
        payload = read_payload(path)
        card = payload["model_card"]
        recipes[kind] = card["train_config"]
        parameters = sum(v.numel() for v in payload["state_dict"].values())
        with open(training_logs[kind], newline="") as f:
            validation = _last_validation(list(csv.DictReader(f)))
        lines.append(f"| {kind} | {KINDS[kind]} | lpmnet_{kind}.pt | `{file_digest(path)[:16]}...` | {parameters:,} | "
                     f"{len(card['data'])} ({', '.join('-'.join(p) for p in card['pairs'])}) | "
                     f"{card['train_config']['iterations']} | {validation} |")
    lines += ["", "## Data", "",
              f"Synthetic subjects of the project's generator (`lpmnet.volumes.demo`, dataset `{dataset_config.get('source')}` "
              f"source): {dataset_config['subjects']} subjects, seed {dataset_config['seed']} (the demo dataset uses "
              f"seed 0), modalities {', '.join(dataset_config['modalities'])}, {dataset_config['voxel_mm']} mm "
              "isotropic, generated co-registered; normalised as the workflow normalises every volume "
              "(percentile window over an Otsu mask, then [0, 1]). The training subjects train, the test "
              "subjects of the dataset's split validate. Anatomy: " + TEMPLATE_NOTE["name"] + ".", "",
              "## Recipe", "", "Every setting of `lpmnet.engine.train.TrainConfig` (network: LPM-Net's defaults):", ""]
    for kind, recipe in recipes.items():
        lines += [f"- {kind}: `{json.dumps(recipe, sort_keys=True)}`"]
    lines += ["", "## Limitations", "",
              "Trained on synthetic contrasts of one template's anatomy, deformed: real scans with lesions, other "
              "field strengths or CT are outside what these models saw. Fine-tune on your data "
              "(`training: {init: pretrained}`) and check the tables' artefact rows (background, lattice).", "",
              "## Licences", "",
              "The weights: MIT, as the project. The template the data is synthesised from: " + TEMPLATE_NOTE["licence"],
              "", "References of the template: " + " ".join(TEMPLATE_NOTE["references"]), ""]
    return "\n".join(lines)


def _last_validation(rows) -> str:
    """The last validation figures of a training log ("SSIM 0.89, Qabf 0.56" at iteration n)."""
    for row in reversed(rows):
        values = {k.removeprefix("val_"): v for k, v in row.items() if k.startswith("val_") and v not in ("", None)}
        if values:
            return ", ".join(f"{k} {float(v):.3f}" for k, v in values.items()) + f" (iteration {row['iteration']})"
    return "none"
