import json

import nibabel as nib
import numpy as np
import pytest
import torch

from helpers import TEST_AFFINE, smooth_pair, write_pair
from lpmnet.errors import InputError
from lpmnet.engine.fuse import fuse_files
from lpmnet.methods.lpmnet.network import WINDOW
from lpmnet.methods.tiling import fuse_arrays
from lpmnet.volumes.io import save_volume
from lpmnet.methods import save_checkpoint
from lpmnet.methods.lpmnet.network import FusionOutput, LPMNet, load_checkpoint
from lpmnet.volumes.normalize import minmax01


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    model = LPMNet()
    save_checkpoint(path, model, "lpmnet", model.config,
                    model_card={"method": "LPM-Net", "note": "untrained, for tests"})
    return path


def test_fused_nifti_has_fixed_geometry_and_sidecar(tmp_path, checkpoint):
    a, b = write_pair(tmp_path)
    out = tmp_path / "fused" / "sub-01_space-T1_desc-lpmnet_fused.nii.gz"
    sidecar = fuse_files(a, b, out, checkpoint, components=True)
    img, fixed = nib.load(out), nib.load(a)
    assert img.shape == fixed.shape and np.allclose(img.affine, fixed.affine, atol=1e-6)
    assert img.get_data_dtype() == np.float32 and int(img.header["sform_code"]) > 0
    data = img.get_fdata()
    assert 0 <= data.min() and data.max() <= 1 and data.std() > 0
    on_disk = json.loads((tmp_path / "fused" / "sub-01_space-T1_desc-lpmnet_fused.json").read_text())
    assert on_disk == json.loads(json.dumps(sidecar))
    assert on_disk["SourceFiles"][0]["path"] == str(a) and len(on_disk["SourceFiles"][0]["sha256"]) == 64
    assert "min-max" in on_disk["Normalization"] and on_disk["Checkpoint"]["sha256"]
    for name in ("base", "detail"):
        assert nib.load(tmp_path / "fused" / f"sub-01_space-T1_desc-lpmnet_fused_{name}.nii.gz").shape == fixed.shape


def test_inputs_on_different_grids_are_refused(tmp_path, checkpoint):
    a, b = smooth_pair()
    pa = save_volume(tmp_path / "a.nii.gz", a, TEST_AFFINE)
    shifted = TEST_AFFINE.copy()
    shifted[0, 3] += 3.0
    pb = save_volume(tmp_path / "b.nii.gz", b, shifted)
    pc = save_volume(tmp_path / "c.nii.gz", b[:, :, :-2], TEST_AFFINE)
    out = tmp_path / "f.nii.gz"
    for moving in (pb, pc):
        with pytest.raises(InputError, match=moving.name):
            fuse_files(pa, moving, out, checkpoint)
    assert not out.exists()


class VoxelwiseMean(torch.nn.Module):
    """A purely local 'network': tiling must reproduce its whole-volume output exactly."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x1, x2):
        mean = (x1 + x2) / 2 + self.anchor
        return FusionOutput(mean, x1, x2, None)


def test_tiles_cover_and_blend_exactly():
    model = VoxelwiseMean().eval()
    a, b = (np.random.default_rng(0).random((2, 45, 38, 33))).astype(np.float32)
    for tile, overlap in ((16, 0.0), (32, 0.5), ((16, 32, 48), 0.25)):
        out = fuse_arrays(model, a, b, tile=tile, overlap=overlap, unit=WINDOW)
        np.testing.assert_allclose(out["fused"], (a + b) / 2, rtol=1e-6)
        np.testing.assert_allclose(out["base"], a, rtol=1e-6)


def test_tiled_fusion_of_the_network(checkpoint):
    from lpmnet.methods.lpmnet.network import load_checkpoint

    model, _ = load_checkpoint(checkpoint)
    a, b = smooth_pair((40, 36, 34))
    a, b = a / a.max(), b / b.max()
    whole = fuse_arrays(model, a, b)["fused"]
    assert np.array_equal(fuse_arrays(model, a, b, tile=64, unit=WINDOW)["fused"], whole)  # one tile = whole volume
    tiled = fuse_arrays(model, a, b, tile=32, overlap=0.5, unit=WINDOW)["fused"]
    assert tiled.shape == whole.shape and np.isfinite(tiled).all() and 0 <= tiled.min() <= tiled.max() <= 1


def test_real_volumes_overlay_on_the_t1(shared_data, tmp_path, checkpoint):
    # A clinical glioma scan in its native, anisotropic (0.9 x 0.9 x 5.5 mm) oblique-free grid.
    folder = shared_data / "tcga_FG-6692_native"
    t1, flair = folder / "t1.nii.gz", folder / "flair.nii.gz"
    out = tmp_path / "fused.nii.gz"
    fuse_files(t1, flair, out, checkpoint)
    fused, ref = nib.load(out), nib.load(t1)
    assert fused.shape == ref.shape
    assert np.allclose(fused.affine, ref.affine, atol=1e-5)
    data = fused.get_fdata(dtype=np.float32)
    assert np.isfinite(data).all() and 0 <= data.min() <= data.max() <= 1


def test_model_sees_the_original_dhw_layout(tmp_path, checkpoint):
    # The original reads volumes with SimpleITK, as (k, j, i) arrays: its H x W view is the files' i-j plane.
    # The three views have their own weights, so feeding (i, j, k) would quietly give another result.
    a, b = smooth_pair((16, 32, 48), seed=3)
    path_a, path_b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    save_volume(path_a, a, TEST_AFFINE)
    save_volume(path_b, b, TEST_AFFINE)
    fuse_files(path_a, path_b, tmp_path / "f.nii.gz", checkpoint)
    written = nib.load(tmp_path / "f.nii.gz").get_fdata(dtype=np.float32)
    model, _ = load_checkpoint(checkpoint)
    a, b = minmax01(a), minmax01(b)
    in_dhw = fuse_arrays(model, a.transpose(2, 1, 0).copy(), b.transpose(2, 1, 0).copy())["fused"]
    np.testing.assert_allclose(written, in_dhw.transpose(2, 1, 0), atol=1e-6)
    as_stored = fuse_arrays(model, a, b)["fused"]
    assert np.abs(written - as_stored).max() > 1e-3


def test_fusion_tiles_itself_when_the_whole_volume_exceeds_the_budget(tmp_path, checkpoint):
    from lpmnet.methods.lpmnet.resources import fusion_pass_mb, fusion_tile

    a, b = write_pair(tmp_path, shape=(64, 80, 48))  # (D, H, W) = (48, 80, 64)
    shape = (48, 80, 64)
    budget = fusion_pass_mb(shape) * 0.6
    tile = fusion_tile(shape, budget)
    assert tile is not None and all(t % 16 == 0 for t in tile) and fusion_pass_mb(tile) <= budget
    assert fusion_tile(shape, fusion_pass_mb(shape)) is None  # it fits: one pass

    whole = fuse_files(a, b, tmp_path / "whole.nii.gz", checkpoint, memory_budget_mb=None)
    auto = fuse_files(a, b, tmp_path / "auto.nii.gz", checkpoint, memory_budget_mb=budget)
    fuse_files(a, b, tmp_path / "given.nii.gz", checkpoint, tile=list(tile))
    assert whole["Tile"] is None and auto["Tile"] == list(tile) and auto["TileChoice"].startswith("auto")
    f_whole, f_auto, f_given = (nib.load(tmp_path / f"{n}.nii.gz").get_fdata() for n in ("whole", "auto", "given"))
    assert np.array_equal(f_auto, f_given)  # the same tiles as --tile
    # Tiles aligned to the Mamba windows see the whole-volume context except near their seams, where the
    # blending averages two slightly different predictions: the same fused image to within 1 % of the range.
    assert np.abs(f_auto - f_whole).max() < 0.01 and np.abs(f_auto - f_whole).mean() < 1e-4


def test_memory_estimates_follow_the_volume_size(tmp_path):
    from lpmnet import memory
    from lpmnet.methods.lpmnet import resources

    small = save_volume(tmp_path / "small.nii.gz", np.zeros((96, 160, 160), np.float32) + 1, TEST_AFFINE)
    large = save_volume(tmp_path / "large.nii.gz", np.zeros((240, 240, 155), np.float32) + 1, TEST_AFFINE)
    assert memory.volume_shape(large) == (240, 240, 155)
    whole_small, whole_large = (resources.fusion_mem_mb(p, None) for p in (small, large))
    assert whole_large > 2 * whole_small  # 3.6x the voxels, one process overhead
    # A CPU job fuses a 240x240x155 volume in one pass within the default budget, in under 3 GB; a GPU
    # (whole views at once) would need ten times the memory and tiles it.
    assert resources.fusion_mem_mb(large, memory.DEFAULT_FUSION_BUDGET_MB) == whole_large < 3000
    assert resources.fusion_tile((240, 240, 155), memory.DEFAULT_FUSION_BUDGET_MB) is None
    assert resources.fusion_tile((240, 240, 155), memory.DEFAULT_FUSION_BUDGET_MB, device="cuda") is not None
    # a budget below the whole pass tiles it, and the job's estimate follows the tile
    assert resources.fusion_mem_mb(large, 500) < whole_large
    assert memory.metrics_mem_mb(large) > memory.metrics_mem_mb(small)
    assert memory.registration_mem_mb(large, small) > memory.registration_mem_mb(small, small)
    assert resources.training_mem_mb([large], (32, 32, 32), 1) > resources.training_mem_mb([small], (32, 32, 32), 1)
    assert resources.training_mem_mb([small], None, 1) > resources.training_mem_mb([small], (32, 32, 32), 1)
    with pytest.raises(FileNotFoundError) as missing:  # Snakemake then evaluates mem_mb when the file exists
        memory.volume_shape(tmp_path / "later.nii.gz")
    assert missing.value.filename == str(tmp_path / "later.nii.gz")
