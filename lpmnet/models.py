"""LPM-Net's network and checkpoints under the import path the README has always shown
(``from lpmnet.models import LPMNet, load_checkpoint``); they live in :mod:`lpmnet.methods.lpmnet`."""

from lpmnet.methods.lpmnet.network import LPMNet, load_checkpoint

__all__ = ["LPMNet", "load_checkpoint"]
