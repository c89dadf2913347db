"""Where the networks run: one device switch for training and fusion (config ``training.device``,
``fusion.device``, the command line's ``--device``)."""

import logging

import torch

log = logging.getLogger(__name__)


def resolve_device(device="auto"):
    """"auto" -> the first visible CUDA device if any, else the CPU (with a warning when CUDA was asked)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        log.warning("CUDA was requested but no GPU is visible; running on the CPU")
        return torch.device("cpu")
    return device
