"""Shipped weights, for any method that ships them: the kinds of modality pair, and which checkpoint a
setting such as ``init: pretrained`` or ``lpmnet fuse --pretrained mri-pet`` names.

A method ships weights by giving its :class:`~lpmnet.methods.FusionMethod` a ``pretrained`` function
(kind -> checkpoint path), as LPM-Net does (:mod:`lpmnet.methods.lpmnet.pretrained`). A pair's kind comes
from its modality names or file names: a pair with a PET or SPECT modality is ``mri-pet``, any other MRI
pair ``mri-mri``; CT has no shipped model.
"""

from __future__ import annotations

import re
from pathlib import Path

#: kind -> what its models fuse.
KINDS = {
    "mri-mri": "a T1-weighted MRI with a T2-weighted, FLAIR or PD MRI",
    "mri-pet": "an MRI with a PET or SPECT volume",
}
#: Modality names (or file-name words) of functional images: a pair with one of them is mri-pet.
FUNCTIONAL = ("PET", "SPECT", "FDG")
#: Modalities no shipped model was trained for.
UNSUPPORTED = ("CT",)
#: Names of shipped models where a checkpoint is asked for: a kind, or the kind of the pair at hand.
CHOICES = ("pretrained", *KINDS)

_WORD = re.compile(r"[A-Za-z0-9]+")


def kind_of_modalities(first: str, second: str) -> str:
    """The kind of pretrained model for a pair of modality names (``T1``, ``FLAIR``, ``PET``, ...).

    A pair with a PET or SPECT modality is ``mri-pet``, any other MRI pair ``mri-mri``; CT has no
    pretrained model (ValueError: train one).
    """
    words = {w.upper() for name in (first, second) for w in _WORD.findall(str(name))}
    unsupported = sorted(words.intersection(UNSUPPORTED))
    if unsupported:
        raise ValueError(f"no pretrained model fuses {unsupported[0]} ({first}, {second}): the shipped models are "
                         f"{', '.join(KINDS)}; train one with `lpmnet train`")
    return "mri-pet" if words.intersection(FUNCTIONAL) else "mri-mri"


def kind_of_files(path1, path2) -> str:
    """The kind for two files, from the words of their names (``sub-01_pet.nii.gz`` -> mri-pet)."""
    name = lambda p: Path(p).name.split(".")[0]  # noqa: E731 - the stem without .nii.gz
    return kind_of_modalities(name(path1), name(path2))


def ships_weights(method) -> bool:
    return method.pretrained is not None


def shipped_checkpoint(method, kind: str) -> Path:
    """The checkpoint of ``kind`` that ``method`` (a FusionMethod) ships; ValueError when it ships none."""
    if not ships_weights(method):
        raise ValueError(f"{method.name} ships no pretrained model; give a checkpoint")
    if kind not in KINDS:
        raise ValueError(f"no pretrained model {kind!r}; the shipped ones: {', '.join(KINDS)}")
    return method.pretrained(kind)


def resolve(method, value, path1, path2):
    """(checkpoint path, kind) of ``value`` for ``method``: a kind, ``pretrained`` (the kind of the two files'
    names), or the path of any checkpoint (kind None)."""
    if value not in CHOICES:
        return Path(value), None
    kind = kind_of_files(path1, path2) if value == "pretrained" else value
    return shipped_checkpoint(method, kind), kind
