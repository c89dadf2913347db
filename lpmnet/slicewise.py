"""Slice-wise fusion with a 2D network under the import path of the README's own-method example
(``from lpmnet.slicewise import fuse_slicewise``); it lives in :mod:`lpmnet.methods.slicewise`."""

from lpmnet.methods.slicewise import fuse_slicewise

__all__ = ["fuse_slicewise"]
