"""lpmnet.methods.mambadfuse.load_released_checkpoint: the authors' released weight files."""

import pytest
import torch

from lpmnet.errors import InputError
from lpmnet.methods.mambadfuse import MambaDFuse, load_released_checkpoint
from lpmnet.methods.lpmnet.network import LPMNet

# Where the authors' repository keeps a medical-fusion model (EMA generator after 10,000 iterations).
RELEASED = "Model/Medical_Fusion-PET-MRI/Medical_Fusion/models/10000_E.pth"


@pytest.fixture(scope="module")
def reference():
    """A freshly built default model's state dict (its random initialisation tells files apart)."""
    torch.manual_seed(0)
    return MambaDFuse().state_dict()


def write(tmp_path, payload, name=RELEASED):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return path


def assert_same_weights(model, state_dict):
    loaded = model.state_dict()
    assert list(loaded) == list(state_dict)
    for key, value in state_dict.items():
        assert torch.equal(loaded[key], value), key


@pytest.mark.parametrize("wrapper", [None, "params", "params_ema"])
@pytest.mark.parametrize("prefix", ["", "module."])
def test_loads_bare_wrapped_and_dataparallel_state_dicts(tmp_path, reference, wrapper, prefix):
    state_dict = {prefix + k: v for k, v in reference.items()}
    path = write(tmp_path, state_dict if wrapper is None else {wrapper: state_dict})
    model = load_released_checkpoint(path)
    assert isinstance(model, MambaDFuse) and not model.training
    assert model.variant == "faithful"
    assert sum(p.numel() for p in model.parameters()) == 1_347_271  # the count the docstring promises
    assert_same_weights(model, reference)


def test_prefers_the_ema_weights_when_both_are_stored(tmp_path, reference):
    plain = {k: torch.zeros_like(v) for k, v in reference.items()}
    path = write(tmp_path, {"params": plain, "params_ema": reference})
    assert_same_weights(load_released_checkpoint(path), reference)


def test_keyword_arguments_reach_the_constructor(tmp_path, reference):
    model = load_released_checkpoint(write(tmp_path, reference), scan_backend="torch", variant="fixed")
    assert model.variant == "fixed"
    assert model.feature_re[0].encoder.scan_backend == "torch"
    assert_same_weights(model, reference)


def test_another_architecture_is_refused_naming_the_file(tmp_path):
    path = write(tmp_path, LPMNet().state_dict(), name="lpmnet.pth")
    with pytest.raises(InputError, match="not a MambaDFuse state dict") as err:
        load_released_checkpoint(path)
    assert err.value.path == str(path)
    assert "missing key(s): 'patch_embed.norm.weight'" in str(err.value)
    assert "unexpected key(s): 'Conv_in.weight'" in str(err.value)


def test_a_wrong_shape_is_refused_naming_the_key(tmp_path):
    path = write(tmp_path, MambaDFuse(embed_dim=30).state_dict(), name="narrow.pth")
    with pytest.raises(InputError) as err:
        load_released_checkpoint(path)
    assert err.value.path == str(path)
    # The first mis-shaped entry in state-dict order.
    assert str(err.value).endswith("'patch_embed.norm.weight' has shape (30,), expected (60,)")


def test_a_missing_key_alone_is_named(tmp_path, reference):
    partial = dict(reference)
    del partial["conv_last3.bias"]
    with pytest.raises(InputError, match=r"1 missing key\(s\): 'conv_last3.bias'$"):
        load_released_checkpoint(write(tmp_path, partial))


def test_missing_unreadable_and_non_state_dict_files(tmp_path):
    with pytest.raises(InputError, match="not found") as err:
        load_released_checkpoint(tmp_path / "10000_E.pth")
    assert err.value.path == str(tmp_path / "10000_E.pth")
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(InputError, match="not a readable PyTorch checkpoint"):
        load_released_checkpoint(text)
    with pytest.raises(InputError, match="expected a dict of tensors"):
        load_released_checkpoint(write(tmp_path, {"params": {"iteration": 10000}}, name="odd.pth"))
