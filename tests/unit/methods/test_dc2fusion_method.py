"""DC2Fusion on the method layer: any volume on its own grid, the L1NW scale, the original's preprocessing,
tiles, its loss, its augmentation and its training recipe."""

import csv

import nibabel as nib
import numpy as np
import pytest
import torch

from helpers import one_thread, write_pair
from lpmnet.engine.fuse import fuse_files
from lpmnet.engine.losses import DC2FUSION_TERMS, DC2FusionLoss, local_ncc_loss
from lpmnet.methods import get_method, save_checkpoint
from lpmnet.methods.dc2fusion import TRAINING_SHAPE, DC2Fusion, build
from lpmnet.engine.train import TrainConfig, dc2fusion_augment, train

SMALL = dict(embed_dim=12)


@pytest.fixture(scope="module")
def odd_pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dc2")
    return write_pair(folder, "sub-01", shape=(91, 109, 91), seed=3)


def _random(shape, seed):
    return torch.rand(1, 1, *shape, generator=torch.Generator().manual_seed(seed))


def test_l1_reference_voxels_normalises_the_faithful_output_scale():
    torch.manual_seed(0)
    original = DC2Fusion(**SMALL).double().eval()
    normalised = DC2Fusion(**SMALL, l1_reference_voxels=16 ** 3).double().eval()
    normalised.load_state_dict(original.state_dict())
    with torch.no_grad(), one_thread():
        for shape in ((16, 16, 16), (16, 24, 20)):
            a, b = _random(shape, 1).double(), _random(shape, 2).double()
            expected = original(a, b) * (16 ** 3 / np.prod(shape))  # the norms' scale of a 16^3 pass
            torch.testing.assert_close(normalised(a, b), expected, rtol=1e-10, atol=1e-12)
    # The method layer's default is the authors' training grid: their 128^3 passes stay the original's.
    assert build().l1_reference_voxels == np.prod(TRAINING_SHAPE) and DC2Fusion().l1_reference_voxels is None


def test_an_odd_shaped_volume_is_fused_onto_its_own_grid_in_0_1(odd_pair, tmp_path):
    a, b = odd_pair
    checkpoint = tmp_path / "dc2.pt"
    torch.manual_seed(0)
    save_checkpoint(checkpoint, build(**SMALL), "dc2fusion", SMALL)
    sidecars = []
    for settings in ({}, {"tile": [64], "overlap": 0.25}, {"preprocess": "original"}):
        out = tmp_path / f"fused_{len(settings)}_{settings.get('preprocess', '')}.nii.gz"
        with one_thread():
            sidecar = fuse_files(a, b, out, checkpoint, method="dc2fusion", **settings)
        image, fixed = nib.load(out), nib.load(a)
        assert image.shape == fixed.shape == (91, 109, 91) and np.allclose(image.affine, fixed.affine)
        data = image.get_fdata()
        assert 0 <= data.min() and data.max() <= 1 and data.std() > 0
        assert sidecar["Method"] == "dc2fusion" and sidecar["Preprocess"] == settings.get("preprocess", "pad")
        sidecars.append(sidecar)
    assert sidecars[0]["Tile"] is None and sidecars[1]["Tile"] == [64, 64, 64]
    with pytest.raises(ValueError, match="method dc2fusion has no setting axis"):
        fuse_files(a, b, tmp_path / "x.nii.gz", checkpoint, method="dc2fusion", axis=0)


def test_original_preprocessing_keeps_the_outside_of_the_foreground_box_zero():
    spec = get_method("dc2fusion")
    torch.manual_seed(0)
    model = build(**SMALL).eval()
    x1 = np.zeros((40, 48, 36), np.float32)
    x1[5:30, 10:40, 4:20] = np.random.default_rng(0).random((25, 30, 16))
    x2 = np.random.default_rng(1).random(x1.shape).astype(np.float32)
    with one_thread():
        fused = spec.fuse(model, x1, x2, preprocess="original")["fused"]
    assert fused.shape == x1.shape and fused[:5].max() == 0 and fused[:, :, 20:].max() == 0
    assert fused[5:30, 10:40, 4:20].std() > 0
    with pytest.raises(ValueError, match="foreground"):
        spec.fuse(model, np.zeros_like(x1), x2, preprocess="original")


def test_tiles_align_to_the_networks_downsampling_and_follow_the_memory_budget():
    spec = get_method("dc2fusion")
    torch.manual_seed(0)
    model = build(**SMALL).eval()
    x = np.random.default_rng(0).random((40, 70, 50)).astype(np.float32)
    with one_thread():
        auto = spec.fuse(model, x, x[::-1].copy(), memory_budget_mb=2)
    assert auto["TileChoice"].startswith("auto") and all(t % 32 == 0 for t in auto["Tile"])
    assert auto["fused"].shape == x.shape and 0 <= auto["fused"].min() and auto["fused"].max() <= 1


def test_dc2fusion_loss_terms_and_weights():
    a, b = _random((16, 16, 16), 1), _random((16, 16, 16), 2)
    assert float(local_ncc_loss(a, a)) == pytest.approx(-1.0, abs=1e-3)
    total, terms = DC2FusionLoss()(a, b, a)
    assert set(terms) == {*DC2FUSION_TERMS, "total"}
    # F = A: the first source's terms vanish (LNCC -1, SSIM 1, L1 0); the second's have weight 1.
    assert terms["l1"] == pytest.approx(float((a - b).abs().mean()), rel=1e-5)
    assert terms["lncc"] == pytest.approx(-2 + float(local_ncc_loss(a, b)), rel=1e-4)
    with pytest.raises(ValueError, match="at least 11 voxels"):
        DC2FusionLoss()(a[..., :8], b[..., :8], a[..., :8])


def test_dc2fusion_augmentation_changes_only_the_first_input_besides_rotations():
    x = np.random.default_rng(0).random((16, 16, 16)).astype(np.float32)
    x.flat[0], x.flat[-1] = 0, 1  # already min-max scaled: the final rescaling leaves it as it is
    results = [dc2fusion_augment(x, x, np.random.default_rng([5, i])) for i in range(20)]
    for a, b in results:
        assert a.shape == b.shape == x.shape and a.min() == 0 and a.max() == 1 and b.min() == 0
    assert any(np.array_equal(b, x) and not np.array_equal(a, x) for a, b in results)  # contrast/noise: MRI only
    assert any(not np.array_equal(b, x) for _, b in results)  # a rotation moved both


def test_dc2fusion_trains_with_its_recipe(tmp_path):
    pairs = [write_pair(tmp_path, "sub-0", shape=(56, 60, 52), seed=0)]  # one pair: an epoch per iteration
    with pytest.raises(ValueError, match="multiples of 16 of at least 48"):
        TrainConfig(method="dc2fusion", patch_size=(32, 32, 32))
    config = TrainConfig(method="dc2fusion", iterations=2, patch_size=(48, 48, 48), model=SMALL)
    assert (config.optimizer, config.schedule, config.lr, config.loss, config.augmentation) == \
        ("adam", "poly", 1e-4, "dc2fusion", "dc2fusion")
    with one_thread():
        final = train(pairs, tmp_path / "run", config)
    rows = list(csv.DictReader(open(tmp_path / "run" / "training_log.csv")))
    assert [r["iteration"] for r in rows] == ["1", "2"] and all(r["lncc"] and r["ssim"] and r["l1"] for r in rows)
    assert float(rows[1]["lr"]) < float(rows[0]["lr"])  # poly, stepped per epoch
    model, card = get_method("dc2fusion").load(final)
    assert card["method"] == "dc2fusion" and model.l1_reference_voxels == 128 ** 3
