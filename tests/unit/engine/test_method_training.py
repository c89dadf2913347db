"""The method layer's training: one engine, each method's recipe, any loss, checkpoints of every method."""

import csv
import warnings

import numpy as np
import pytest
import torch

from helpers import one_thread, write_pair
from lpmnet.errors import InputError
from lpmnet.engine.losses import ASFE_TERMS, LOSSES, MIF_TERMS, ASFELoss, make_loss, structure_tensor
from lpmnet.methods import get_method, load_checkpoint_of, save_checkpoint
from lpmnet.engine.train import PatchSampler, TrainConfig, train
from lpmnet.workflow.config import resolve_methods

TINY_MAMBA = dict(embed_dim=8)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    return [write_pair(folder, f"sub-{i:02d}", seed=i) for i in range(2)]


def test_recipe_defaults_are_each_originals():
    lpm, mamba, asfe = (TrainConfig(method=m) for m in ("lpmnet", "mambadfuse", "asfe"))
    assert (lpm.lr, lpm.weight_decay, lpm.schedule, lpm.loss, lpm.patch_size, lpm.seed) == \
        (1e-4, 3e-4, "cosine", "lpmnet", (64, 64, 64), 2)
    assert (mamba.lr, mamba.batch_size, mamba.patch_size, mamba.ema_decay, mamba.loss, mamba.augmentation,
            mamba.schedule, mamba.iterations) == (2e-4, 12, (64, 64), 0.999, "mif", "dihedral", "constant", 10000)
    assert (asfe.optimizer, asfe.lr, asfe.weight_decay, asfe.batch_size, asfe.patch_size, asfe.loss) == \
        ("adamw", 2e-4, 0.01, 4, (256, 256), "asfe")
    assert TrainConfig(method="mambadfuse", lr=1e-3).ema_decay == 0.999  # one setting changed, the rest kept
    assert TrainConfig(method="mambadfuse", patch_size=[]).patch_size is None  # the config's [] = whole slices


@pytest.mark.parametrize("settings, message", [
    (dict(method="mambadfuse", patch_size=(32, 32, 32)), "patch_size of mambadfuse must be 2 multiples of 1"),
    (dict(method="lpmnet", loss="l2"), "unknown loss 'l2'"),
    (dict(method="mambadfuse", loss="lpmnet"), "loss 'lpmnet' is defined for 3D networks, not 2D"),
    (dict(method="asfe", loss_settings={"ssim_weigth": 1}), "ssim_weigth"),
    (dict(method="lpmnet", schedule="step"), "schedule must be one of cosine, poly, constant"),
    (dict(method="mambadfus"), "unknown fusion method 'mambadfus'"),
])
def test_bad_recipe_settings_are_refused_by_name(settings, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**settings)


def test_2d_sampling_draws_foreground_slices_with_the_eight_flip_rot90_modes():
    rng = np.random.default_rng(0)
    x1 = np.zeros((6, 20, 20), np.float32)
    x1[2, 5:15, 5:15] = rng.random((10, 10))
    sampler = PatchSampler([(x1, x1 * 0.5)], (8, 8), "dihedral", slice_axis=0)
    seen = set()
    for i in range(64):
        a, b = sampler.sample(0, np.random.default_rng([1, i]))
        assert a.shape == (8, 8) and np.array_equal(b, a * 0.5) and a.max() > 0  # from slice 2 only
        seen.add(a.tobytes())
    assert len(seen) > 8
    # A non-square crop keeps its shape (batches stack): rotations by 180 degrees and flips only.
    wide = PatchSampler([(x1, x1)], (4, 8), "dihedral", slice_axis=0)
    assert {wide.sample(0, np.random.default_rng([2, i]))[0].shape for i in range(16)} == {(4, 8)}


def test_mambadfuse_trains_with_its_recipe_and_keeps_the_ema_as_the_model(pairs, tmp_path):
    config = TrainConfig(method="mambadfuse", iterations=3, batch_size=2, patch_size=(16, 16), checkpoint_every=2,
                         model=TINY_MAMBA)
    with one_thread():
        final = train(pairs, tmp_path, config)
    rows = list(csv.DictReader(open(tmp_path / "training_log.csv")))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3] and all(float(r[t]) > 0 for r in rows for t in MIF_TERMS)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    model, card = load_checkpoint_of(get_method("mambadfuse"), final)
    assert card["method"] == "mambadfuse" and card["weights"].startswith("exponential moving average")
    # The final weights are the EMA's, not the last step's: (1 - 0.999) of the way from the start.
    ema, last = state["ema_state_dict"], state["state_dict"]
    key = "conv_last3.weight"
    assert torch.equal(model.state_dict()[key], ema[key]) and not torch.equal(ema[key], last[key])
    fused = get_method("mambadfuse").fuse(model, np.random.rand(3, 12, 10).astype(np.float32),
                                          np.random.rand(3, 12, 10).astype(np.float32))["fused"]
    assert fused.shape == (3, 12, 10) and 0 <= fused.min() and fused.max() <= 1


def test_asfe_trains_with_its_recipe_and_fuses_volumes_of_any_size(pairs, tmp_path):
    """ASFE-Fusion (a narrow network) through the engine: AdamW, its loss as coded, 2D crops; the
    checkpoint rebuilds the narrow network and fuses a volume whose slices are not multiples of 128."""
    narrow = dict(dim=8, num_heads=2, channels=(8, 8, 8, 8))
    config = TrainConfig(method="asfe", iterations=2, batch_size=2, patch_size=(24, 24), model=narrow)
    assert (config.optimizer, config.loss, config.weight_decay) == ("adamw", "asfe", 0.01)
    with one_thread():
        final = train(pairs, tmp_path, config, progress=False)
    rows = list(csv.DictReader(open(tmp_path / "training_log.csv")))
    assert len(rows) == 2 and all(np.isfinite(float(r[t])) for r in rows for t in ASFE_TERMS)
    model, card = get_method("asfe").load(final)
    assert card["method"] == "asfe" and card["train_config"]["model"]["channels"] == [8, 8, 8, 8]
    volumes = np.random.default_rng(0).random((2, 3, 20, 30), dtype=np.float32)
    with one_thread():
        fused = get_method("asfe").fuse(model, *volumes, batch_size=2)["fused"]
    assert fused.shape == (3, 20, 30) and fused.dtype == np.float32 and 0 <= fused.min() and fused.max() <= 1


def test_lpmnet_trains_with_mambadfuses_loss(pairs, tmp_path):
    config = TrainConfig(iterations=2, patch_size=(16, 16, 16), loss="mif", model=dict(base_c=4, depth_c=1))
    with one_thread():
        train(pairs, tmp_path, config)
    rows = list(csv.DictReader(open(tmp_path / "training_log.csv")))
    assert set(MIF_TERMS) <= set(rows[0]) and "sf" not in rows[0]
    model, card = get_method("lpmnet").load(tmp_path / "model.pt")
    assert card["train_config"]["loss"] == "mif" and model.config["base_c"] == 4


def test_asfe_loss_as_coded_and_its_ssim_gradient_option():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 1, 16, 16, generator=g), torch.rand(2, 1, 16, 16, generator=g)
    fused = torch.rand(2, 1, 16, 16, generator=g, requires_grad=True)
    total, terms = ASFELoss()(a, b, fused)
    assert set(terms) == {*ASFE_TERMS, "total"}
    assert terms["intensity"] == pytest.approx(0.5 * float(torch.linalg.norm((fused.detach() - (a + b) / 2).flatten())),
                                               rel=1e-6)
    # Forward differences, zero in the last column/row, the two inputs' tensors added.
    st = structure_tensor(torch.cat([a, b], dim=1))
    assert st.shape == (2, 4, 16, 16) and float(st[0, 0, 3, 15]) == 0.0
    expected = (a[0, 0, 3, 5] - a[0, 0, 3, 4]) ** 2 + (b[0, 0, 3, 5] - b[0, 0, 3, 4]) ** 2
    assert float(st[0, 0, 3, 4]) == pytest.approx(float(expected), rel=1e-6)
    (grad_faithful,) = torch.autograd.grad(total, fused)
    (grad_no_ssim,) = torch.autograd.grad(ASFELoss(ssim_weight=0.0)(a, b, fused)[0], fused)
    assert torch.equal(grad_faithful, grad_no_ssim)  # the original's SSIM term has no gradient
    total_fixed, _ = ASFELoss(ssim_gradient=True)(a, b, fused)
    (grad_fixed,) = torch.autograd.grad(total_fixed, fused)
    assert not torch.allclose(grad_fixed, grad_faithful)


def test_every_loss_is_registered_with_its_dimensions():
    assert LOSSES["lpmnet"].dims == (3,) and LOSSES["mif"].dims == (2, 3) and LOSSES["asfe"].dims == (2,)
    compute, terms = make_loss("mif", 3)
    x = torch.rand(1, 1, 8, 8, 8)
    total, logged = compute(x, x, x, {})
    assert terms == MIF_TERMS and set(logged) == {*MIF_TERMS, "total"}


def test_checkpoints_name_their_method_and_architecture(tmp_path):
    lpm = get_method("lpmnet")
    mamba = get_method("mambadfuse")
    path = tmp_path / "mamba.pt"
    save_checkpoint(path, mamba.build(**TINY_MAMBA), "mambadfuse", TINY_MAMBA, {"note": "test"})
    model, card = mamba.load(path)
    assert card == {"note": "test"} and model.low_level_feature_extraction2.out_channels == 8
    with pytest.raises(InputError, match="mamba.pt: a checkpoint of method mambadfuse, not of lpmnet"):
        lpm.load(path)
    other = tmp_path / "other.pt"  # weights of another architecture under the kwargs of this one
    save_checkpoint(other, mamba.build(embed_dim=12), "mambadfuse", TINY_MAMBA)
    with pytest.raises(InputError, match=r"other.pt: not a mambadfuse\{'embed_dim': 8\} state dict .*shape"):
        mamba.load(other)
    broken = tmp_path / "broken.pt"
    save_checkpoint(broken, mamba.build(**TINY_MAMBA), "mambadfuse", {"embed_dims": 8})
    with pytest.raises(InputError, match="broken.pt: its model_kwargs do not build mambadfuse"):
        mamba.load(broken)


def test_resolve_methods_fills_in_the_recipes_and_names_a_bad_key():
    resolved = resolve_methods({"lpmnet": {}, "lpmnet-mif": {"network": "lpmnet", "training": {"loss": "mif"}},
                                "mambadfuse": {"checkpoint": "weights.pth"}}, {"checkpoint_every": 7})
    assert resolved["lpmnet"]["training"]["loss"] == "lpmnet" and resolved["lpmnet"]["training"]["checkpoint_every"] == 7
    assert resolved["lpmnet-mif"]["training"]["loss"] == "mif" and resolved["lpmnet-mif"]["network"] == "lpmnet"
    assert resolved["mambadfuse"]["training"] is None and resolved["mambadfuse"]["checkpoint"] == "weights.pth"
    for methods, message in [
        ({"Mine": {}}, "methods.Mine: a method name is lower-case"),
        ({"mean": {"network": "lpmnet"}}, "methods.mean: mean is a classical rule"),
        ({"lpmnet": {"modle": {}}}, "methods.lpmnet.modle: unknown key"),
        ({"lpmnet": {"model": {"base_ch": 4}}}, "methods.lpmnet.model: .*base_ch"),
        ({"x": {"network": "no.such.module"}}, "methods.x.network: fusion method module 'no.such.module' cannot"),
        ({"lpmnet": {"training": {"iterations": 0}}}, "methods.lpmnet.training: iterations and batch_size"),
        ({"lpmnet": {"training": {"checkpoint_every": 3}}}, "methods.lpmnet.training.checkpoint_every: unknown"),
        ({"mambadfuse": {"checkpoint": "w.pth", "training": {"lr": 1}}}, "methods.mambadfuse.training: a method"),
        ({}, "methods: list at least one"),
        ({f"lpmnet-{i}": {"network": "lpmnet"} for i in range(14)}, "methods: 14 methods and 1 classical rules; a "
                                                                     "viewer page shows at most 14 fusions"),
    ]:
        with pytest.raises(ValueError, match=message):
            resolve_methods(methods, {}, classical=("mean",))


def test_recreating_the_optimizer_every_step_makes_each_update_a_signed_step(pairs, tmp_path):
    from lpmnet.methods import read_payload

    settings = dict(iterations=2, patch_size=(16, 16, 16), lr=1e-3, weight_decay=0.0, augmentation="none",
                    schedule="constant",
                    model=dict(base_c=4, depth_c=1, reconstruction=False))
    with one_thread():
        train(pairs[:1], tmp_path / "first", TrainConfig(**{**settings, "iterations": 1}), progress=False)
        with warnings.catch_warnings():
            warnings.filterwarnings("error", r"Detected call of `lr_scheduler", UserWarning)
            train(pairs[:1], tmp_path / "fresh", TrainConfig(**settings, recreate_optimizer=True), progress=False)
        train(pairs[:1], tmp_path / "kept", TrainConfig(**settings), progress=False)
    first, fresh, kept = (read_payload(tmp_path / d / "model.pt")["state_dict"] for d in ("first", "fresh", "kept"))
    key = "Conv_in.weight"
    # Adam's first step from fresh moments moves every weight by lr (times the sign of its gradient).
    step = (fresh[key] - first[key]).abs()
    assert float((step - 1e-3).abs().median()) < 1e-7 and float(step.max()) <= 1e-3 * (1 + 1e-5)
    assert not torch.equal(fresh[key], kept[key])


def test_batch_minmax_scales_each_modalitys_batch_as_a_whole(pairs, tmp_path, monkeypatch):
    """ASFE-Fusion's loader: every batch tensor of a modality spans exactly [0, 1]; off, the patches keep
    their volume's scale."""
    from lpmnet.engine.losses import TrainingLoss

    seen = []

    def build():
        def compute(x1, x2, output, schedule):
            seen.append([float(v) for x in (x1, x2) for v in (x.min(), x.max())])
            total = (output.fused - x1).abs().mean()
            return total, {"total": float(total.detach())}

        return compute

    monkeypatch.setitem(LOSSES, "recorded", TrainingLoss("records its inputs", (), (3,), build))
    settings = dict(iterations=3, batch_size=2, patch_size=(16, 16, 16), loss="recorded", model=dict(base_c=4, depth_c=1))
    with one_thread():
        train(pairs, tmp_path / "kept", TrainConfig(**settings), progress=False)
        train(pairs, tmp_path / "scaled", TrainConfig(**settings, batch_minmax=True), progress=False)
    kept, scaled = np.array(seen[:3]), np.array(seen[3:])
    assert np.allclose(scaled, [0, 1, 0, 1], atol=1e-6)
    assert (kept[:, [1, 3]] < 1 - 1e-3).any() and (kept >= 0).all() and (kept <= 1).all()
