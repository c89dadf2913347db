"""The method layer: one interface for LPM-Net and the published networks, from the API and the CLI."""

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from helpers import write_pair
from lpmnet.errors import InputError
from lpmnet.volumes.io import dhw, load_volume
from lpmnet.methods import MODULES, get_method
from lpmnet.volumes.normalize import minmax01


def test_methods_are_found_by_name_and_lpmnet_keeps_its_old_home():
    import lpmnet.methods.lpmnet.network
    from lpmnet.methods.lpmnet import LPMNet

    assert LPMNet is lpmnet.methods.lpmnet.network.LPMNet
    assert {get_method(name).name for name in MODULES} == set(MODULES)
    assert get_method("mambadfuse").dims == 2 and get_method("asfe").dims == 2 and get_method("lpmnet").dims == 3
    with pytest.raises(ValueError, match="unknown fusion method .mambadfus.; registered methods: lpmnet, mambadfuse, asfe"):
        get_method("mambadfus")


def test_the_registry_lists_the_networks_and_the_classical_rules():
    from lpmnet.methods import CLASSICAL, is_classical, registry
    from lpmnet.methods.classical import CLASSICAL_METHODS

    assert tuple(CLASSICAL_METHODS) == CLASSICAL
    kinds = registry()
    assert [n for n, k in kinds.items() if k == "learned"] == list(MODULES)
    assert [n for n, k in kinds.items() if k == "classical"] == list(CLASSICAL)
    assert is_classical("pca") and not is_classical("lpmnet")


@pytest.fixture(scope="module")
def released_mambadfuse(tmp_path_factory):
    """A file laid out as the authors' released 10000_E.pth (a bare state dict of the default network)."""
    from lpmnet.methods.mambadfuse import MambaDFuse

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("released") / "10000_E.pth"
    torch.save(MambaDFuse().state_dict(), path)
    return path


def _lpmnet(args):
    return subprocess.run([sys.executable, "-m", "lpmnet.cli", *map(str, args)], capture_output=True, text=True)


def test_cli_fuses_with_released_mambadfuse_weights_onto_the_fixed_grid(tmp_path, released_mambadfuse):
    from lpmnet.methods.mambadfuse import load_released_checkpoint
    from lpmnet.methods.slicewise import fuse_slicewise

    a, b = write_pair(tmp_path)
    out = tmp_path / "fused.nii.gz"
    result = _lpmnet(["fuse", a, b, "-o", out, "--method", "mambadfuse", "--checkpoint", released_mambadfuse,
                      "--batch-size", "7", "--device", "cpu"])
    assert result.returncode == 0, result.stderr
    image, fixed = nib.load(out), nib.load(a)
    assert image.shape == fixed.shape and np.allclose(image.affine, fixed.affine)
    fused = image.get_fdata(dtype=np.float32)
    assert 0 <= fused.min() <= fused.max() <= 1
    sidecar = json.loads(out.with_suffix("").with_suffix(".json").read_text())
    assert sidecar["Method"] == "mambadfuse" and sidecar["Settings"]["batch_size"] == 7
    model = load_released_checkpoint(released_mambadfuse)
    x1, x2 = (minmax01(dhw(load_volume(p).data)) for p in (a, b))
    expected = dhw(fuse_slicewise(model, x1, x2, axis=0, batch_size=3))
    np.testing.assert_allclose(fused, expected, atol=1e-5)


def test_cli_refuses_a_setting_of_another_method_and_a_checkpoint_of_another_network(tmp_path, released_mambadfuse):
    from lpmnet.methods import save_checkpoint
    from lpmnet.methods.lpmnet.network import LPMNet

    a, b = write_pair(tmp_path)
    out = tmp_path / "fused.nii.gz"
    result = _lpmnet(["fuse", a, b, "-o", out, "--method", "mambadfuse", "--checkpoint", released_mambadfuse,
                      "--tile", "32"])
    assert result.returncode == 2 and "method mambadfuse has no setting tile" in result.stderr
    lpm = tmp_path / "lpmnet.pt"
    network = LPMNet()
    save_checkpoint(lpm, network, "lpmnet", network.config, model_card={})
    result = _lpmnet(["fuse", a, b, "-o", out, "--method", "mambadfuse", "--checkpoint", lpm])
    assert result.returncode == 2 and "lpmnet.pt" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".*tmp*"))


def test_asfe_fuses_a_volume_from_a_state_dict_of_the_original(tmp_path):
    """A reduced-width ASFE-Fusion (the original's dim argument) saved as its training code would."""
    from lpmnet.engine.fuse import fuse_files
    from lpmnet.methods import load_original_state_dict
    from lpmnet.methods.asfe import ASFEFusion

    torch.manual_seed(0)
    saved = tmp_path / "asfe.pth"
    torch.save({"model": ASFEFusion(dim=32, num_heads=4).state_dict()}, saved)
    with pytest.raises(InputError, match="asfe.pth: not a ASFE-Fusion state dict of this configuration"):
        load_original_state_dict(saved, ASFEFusion(), "ASFE-Fusion", ("model",))
    model = load_original_state_dict(saved, ASFEFusion(dim=32, num_heads=4), "ASFE-Fusion", ("model",))
    a, b = write_pair(tmp_path, shape=(20, 24, 3))
    x1, x2 = (minmax01(dhw(load_volume(p).data)) for p in (a, b))
    from lpmnet.methods.slicewise import fuse_slicewise

    fused = fuse_slicewise(model, x1, x2, batch_size=2)
    assert fused.shape == x1.shape and 0 <= fused.min() <= fused.max() <= 1
    with pytest.raises(InputError, match="asfe.pth"):  # the CLI's default configuration is the full width
        fuse_files(a, b, tmp_path / "f.nii.gz", saved, method="asfe")
    assert not (tmp_path / "f.nii.gz").exists()


def test_a_checkpoint_saved_twice_is_the_same_bytes(tmp_path):
    """make pretrained states the sha256 of the models it writes: one model saved again (by another run, to
    another file) must give the same file."""
    from lpmnet.methods import save_checkpoint
    from lpmnet.methods.lpmnet.network import LPMNet

    torch.manual_seed(0)
    network = LPMNet()
    for name in ("first.pt", "second.pt"):
        save_checkpoint(tmp_path / name, network, "lpmnet", network.config, model_card={"data": [1, 2]})
    assert (tmp_path / "first.pt").read_bytes() == (tmp_path / "second.pt").read_bytes()
