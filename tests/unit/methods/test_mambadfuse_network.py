"""MambaDFuse (lpmnet.methods.mambadfuse) against the original code's outputs.

The fixture (../shared/fixtures/baselines/mambadfuse, see its README) holds a perturbed state dict
of the original network (Lizhe1228/MambaDFuse @0c2a117e, the authors' test-script arguments), two
input pairs and the original's float64 eval-mode outputs. A re-implementation that loads the state
dict strictly and reproduces the outputs to round-off is numerically the same network.
"""

from contextlib import contextmanager, nullcontext
from unittest import mock

import pytest
import torch

from baseline_fixtures import read_cases, read_config, read_keys, read_state_dict_float64
from helpers import one_thread
from lpmnet.methods.mamba import Mamba  # noqa: E402
from lpmnet.methods import mambadfuse  # noqa: E402
from lpmnet.methods.mambadfuse import MambaDFuse  # noqa: E402
from lpmnet.ops.backends import available_backends  # noqa: E402
from lpmnet.ops.selective_scan import selective_scan_ref as reference_selective_scan  # noqa: E402

# The fixture README's acceptance bound; a float64 re-implementation lands near 1e-15.
FIXTURE_TOL = 1e-6
# Backends differ only in the scan's operation order (float64).
BACKEND_TOL = 1e-10


@pytest.fixture(scope="module")
def fixture_dir(baseline_fixtures):
    return baseline_fixtures / "mambadfuse"


@pytest.fixture(scope="module")
def config(fixture_dir):
    return read_config(fixture_dir)


@pytest.fixture(scope="module")
def state_dict(fixture_dir):
    return read_state_dict_float64(fixture_dir)


@pytest.fixture(scope="module")
def cases(fixture_dir, config):
    return read_cases(fixture_dir, config)


@pytest.fixture(scope="module")
def backends():
    """The scan backends usable here: "torch" always, "cpu" when the C++ kernel builds."""
    return [b for b in ("cpu", "torch") if b in available_backends()]


@pytest.fixture(params=["cpu", "torch"])
def backend(request, backends):
    if request.param not in backends:
        pytest.skip("the C++ selective-scan kernel could not be built here")
    return request.param


@contextmanager
def float64_default():
    """As the fixtures were computed: tensors the forward creates itself are float64 too."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _reference_scan(*args, backend=None, **kwargs):
    return reference_selective_scan(*args, **kwargs)


@pytest.fixture(scope="module")
def fused(config, state_dict, cases):
    """fused(backend, variant) -> the model's outputs for every case (computed once per module).

    backend "reference" routes every scan of the network through lpmnet.ops.selective_scan.selective_scan_ref.
    """
    cache = {}

    def get(name, variant="faithful"):
        if (name, variant) not in cache:
            model = MambaDFuse(**config["constructor_kwargs"], variant=variant,
                               scan_backend="torch" if name == "reference" else name)
            model.double().load_state_dict(state_dict, strict=True)
            model.eval()
            patch = (mock.patch.object(mambadfuse, "selective_scan", _reference_scan)
                     if name == "reference" else nullcontext())
            with patch, one_thread(), float64_default(), torch.no_grad():
                cache[name, variant] = [model(c["x1"], c["x2"]) for c in cases]
        return cache[name, variant]

    return get


def rel_err(actual, expected):
    return ((actual - expected).abs().max() / expected.abs().max()).item()




def test_default_model_has_the_originals_state_dict_names_and_shapes(fixture_dir, config):
    expected = read_keys(fixture_dir / "keys_default.txt")
    for variant in mambadfuse.VARIANTS:
        model = MambaDFuse(variant=variant)
        got = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
        assert got == expected  # names, shapes and order
    assert sum(p.numel() for p in model.parameters()) == config["n_parameters"]


def test_fixture_state_dict_loads_strictly_and_reproduces_the_original(fused, cases, config, backend):
    outputs = fused(backend)
    for case, meta, out in zip(cases, config["cases"], outputs):
        assert tuple(case["x1"].shape) == tuple(meta["x1_shape"])
        assert out.dtype == torch.float64
        assert tuple(out.shape) == tuple(meta["fused_shape"])
        err = rel_err(out, case["fused"])
        print(f"\n{backend} {meta['file']}: max|d|/max|expected| = {err:.2e}")
        assert err <= FIXTURE_TOL, meta["file"]
    assert torch.get_default_dtype() == torch.float32


def test_scan_backends_and_reference_scan_agree(fused, backends):
    torch_out = fused("torch")
    for other in [b for b in backends if b != "torch"] + ["reference"]:
        for i, (a, b) in enumerate(zip(torch_out, fused(other))):
            err = rel_err(b, a)
            print(f"\ncase_{i}: torch vs {other}: {err:.2e}")
            assert err <= BACKEND_TOL, (other, i)


def test_fixed_variant_loads_the_same_weights_and_differs(fused, backends):
    for faithful, fixed in zip(fused(backends[0]), fused(backends[0], "fixed")):
        assert fixed.shape == faithful.shape
        assert torch.isfinite(fixed).all()
        # Removing the M3 blocks' second LayerNorm moves the output by ~0.6 % here.
        assert rel_err(fixed, faithful) > 1e-4


@pytest.mark.parametrize("size", [(23, 37), (1, 5)])
def test_any_image_size_and_independent_batch_samples(size):
    torch.manual_seed(0)
    model = MambaDFuse().eval()
    x1, x2 = torch.rand(2, 2, 1, *size).unbind(0)
    with one_thread(), torch.no_grad():
        out = model(x1, x2)
        alone = torch.cat([model(x1[i:i + 1], x2[i:i + 1]) for i in range(2)])
    assert out.shape == (2, 1, *size)
    assert torch.isfinite(out).all()
    assert rel_err(alone, out) <= 1e-5  # float32


def test_absolute_position_embedding_fixes_the_image_size():
    model = MambaDFuse(img_size=8, ape=True).eval()
    assert model.absolute_pos_embed.shape == (1, 64, 60)
    x = torch.rand(1, 1, 8, 8)
    with one_thread(), torch.no_grad():
        assert model(x, x).shape == (1, 1, 8, 8)
        with pytest.raises(ValueError, match="img_size"):
            model(x[..., :7], x[..., :7])


def test_set_scan_backend_reaches_every_mamba():
    model = MambaDFuse()
    model.set_scan_backend("torch")
    mambas = [m for m in model.modules() if isinstance(m, Mamba)]
    assert len(mambas) == 16 + 4 + 5 + 8
    assert {m.scan_backend for m in mambas} == {"torch"}
    with pytest.raises(ValueError, match="scan_backend"):
        model.set_scan_backend("gpu")


def test_invalid_arguments():
    with pytest.raises(ValueError, match="variant"):
        MambaDFuse(variant="paper")
    with pytest.raises(ValueError, match="scan_backend"):
        MambaDFuse(scan_backend="gpu")
