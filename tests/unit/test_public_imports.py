"""The import paths users were shown (the README's examples and its method list) keep working after the
package's layout changed: each name is the object that the layered package defines."""

import importlib

import pytest

PUBLISHED = [
    ("lpmnet.models", "LPMNet", "lpmnet.methods.lpmnet.network"),
    ("lpmnet.models", "load_checkpoint", "lpmnet.methods.lpmnet.network"),
    ("lpmnet.slicewise", "fuse_slicewise", "lpmnet.methods.slicewise"),
    ("lpmnet.methods", "FusionMethod", "lpmnet.methods"),
    ("lpmnet.methods.dc2fusion", "DC2Fusion", "lpmnet.methods.dc2fusion"),
    ("lpmnet.methods.mambadfuse", "MambaDFuse", "lpmnet.methods.mambadfuse"),
    ("lpmnet.methods.asfe", "ASFEFusion", "lpmnet.methods.asfe"),
]


@pytest.mark.parametrize("module, name, home", PUBLISHED, ids=lambda v: v if isinstance(v, str) else None)
def test_published_import_paths(module, name, home):
    assert getattr(importlib.import_module(module), name) is getattr(importlib.import_module(home), name)


def test_the_readme_shows_the_published_paths():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "from lpmnet.models import LPMNet, load_checkpoint" in readme
    assert "from lpmnet.slicewise import fuse_slicewise" in readme
    assert "from lpmnet.methods import FusionMethod" in readme
