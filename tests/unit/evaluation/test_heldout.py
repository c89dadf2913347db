"""The held-out evaluation of a model against the classical rules: the two normalisations, what counts as a
win, the table, and the blends between mean and max fusion."""

import numpy as np
import pytest

from helpers import TEST_AFFINE, smooth_pair, write_pair
from lpmnet.errors import InputError
from lpmnet.evaluation.heldout import (BLEND_STEPS, blend_profile, fused_with_grid_shift, grid_cancelled,
                                       held_out_rows, normalised_pair, read_held_out_table, wins,
                                       write_held_out_table, HeldOutResult)
from lpmnet.metrics import PAPER_METRICS
from lpmnet.methods.classical import fuse_classical
from lpmnet.volumes.io import dhw, save_volume
from lpmnet.volumes.normalize import head_mask


def test_head_normalisation_leaves_exactly_zero_outside_the_head_and_windows_inside_it(tmp_path):
    a, b = smooth_pair((48, 48, 48), seed=3)
    b = b + 40.0  # a background that is not 0, as a raw PET has
    p1 = save_volume(tmp_path / "a.nii.gz", a, TEST_AFFINE)
    p2 = save_volume(tmp_path / "b.nii.gz", b, TEST_AFFINE)
    workflow = normalised_pair(p1, p2, "workflow")
    head = normalised_pair(p1, p2, "head")
    for x in (*workflow, *head):
        assert x.dtype == np.float32 and x.min() >= 0 and x.max() <= 1
    outside = ~head_mask(dhw(a))
    assert outside.mean() > 0.3 and np.all(head[0][outside] == 0) and np.all(head[1][outside] == 0)
    # Inside the head the second volume's window is the head's, not its own bright part's: more of it is above 0.
    inside = ~outside
    assert (head[1][inside] > 0).mean() > (workflow[1][inside] > 0).mean()
    luminance = normalised_pair(p1, p2, "head", colour="hot")[1]
    assert np.all(luminance[outside] == 0) and not np.array_equal(luminance, head[1])


def test_a_pair_off_one_grid_is_refused_naming_the_files(tmp_path):
    p1, _ = write_pair(tmp_path, "one")
    p2 = save_volume(tmp_path / "other.nii.gz", smooth_pair((24, 28, 21))[0], TEST_AFFINE)
    with pytest.raises(InputError, match="other.nii.gz"):
        normalised_pair(p1, p2, "workflow")


def test_a_win_beats_every_rival_in_the_metric_s_own_direction():
    scores = {"model": dict.fromkeys(PAPER_METRICS, 0.5), "mean": dict.fromkeys(PAPER_METRICS, 0.4),
              "max": dict.fromkeys(PAPER_METRICS, 0.4), "laplacian": dict.fromkeys(PAPER_METRICS, 0.4)}
    scores["model"]["rSFe"], scores["laplacian"]["rSFe"] = -0.05, 0.06  # closer to 0 wins, whatever the sign
    scores["laplacian"]["SSIM"] = 0.5  # a tie is no win
    assert wins(scores, "model") == [m for m in PAPER_METRICS if m != "SSIM"]
    scores["max"]["AG"] = 0.9
    assert "AG" not in wins(scores, "model") and "AG" in wins(scores, "model", rivals=("mean",))


def test_the_held_out_table_round_trips(tmp_path):
    scores = {name: {**dict.fromkeys(PAPER_METRICS, 0.25), "background": 0.0, "lattice": 1.0}
              for name in ("model", "mean", "max", "laplacian")}
    rows = held_out_rows({"dataset": "spm", "subject": "avg152", "pair": "T1-PET"},
                         [HeldOutResult("head", scores, ["SSIM", "VIF"])])
    write_held_out_table(tmp_path / "held_out.tsv", rows)
    read = read_held_out_table(tmp_path / "held_out.tsv")
    assert [r["method"] for r in read] == ["model", "mean", "max", "laplacian"]
    assert read[0]["wins"] == "SSIM,VIF" and read[1]["wins"] == "" and read[0]["Qabf"] == 0.25


def test_the_blends_run_from_the_mean_to_the_max_fusion():
    a, b = (x / x.max() for x in smooth_pair((48, 48, 48), seed=1))
    a, b = np.clip(a, 0, 1).astype(np.float32), np.clip(b, 0, 1).astype(np.float32)
    profile = blend_profile(a, b, {"mean": fuse_classical("mean", a, b), "max": fuse_classical("max", a, b)})
    for metric in PAPER_METRICS:
        along = profile[metric]["blend"]
        assert list(along) == list(BLEND_STEPS) and profile[metric]["best_t"] in BLEND_STEPS
        assert along[0.0] == pytest.approx(profile[metric]["fusions"]["mean"]["value"])
        assert along[1.0] == pytest.approx(profile[metric]["fusions"]["max"]["value"])
        # Neither end beats itself: the mean and the max never beat both ends.
        assert not any(f["beats_mean_and_max"] for f in profile[metric]["fusions"].values())


def test_a_grid_shift_moves_what_is_locked_to_the_fusions_grid_and_cancelling_removes_it():
    """A fusion that adds a ripple of period 8 starting at its own first voxel along every axis, plus one
    across two axes: moved by 3, the ripple starts 3 voxels earlier in the anatomy's frame; the average over
    the moves by 0 and 4 along each axis has none, and the sources' part is untouched throughout."""
    a, b = smooth_pair((24, 20, 16), seed=5)

    def rippled(x1, x2):
        waves = [np.cos(2 * np.pi * np.arange(n) / 8).reshape([-1 if k == axis else 1 for k in range(3)])
                 for axis, n in enumerate(x1.shape)]
        return (x1 + x2) / 2 + sum(waves) + waves[0] * waves[1]  # the product survives diagonal moves alone

    mean = (a + b) / 2
    ripple = rippled(a, b) - mean
    moved = fused_with_grid_shift(rippled, a, b, 3) - mean
    np.testing.assert_allclose(moved[:-3, :-3, :-3], ripple[3:, 3:, 3:], atol=1e-12)
    np.testing.assert_allclose(fused_with_grid_shift(rippled, a, b, (0, 0, 0)), rippled(a, b))
    np.testing.assert_allclose(grid_cancelled(rippled, a, b, 8), mean, atol=1e-12)
    with pytest.raises(ValueError, match="one per axis"):
        fused_with_grid_shift(rippled, a, b, (1, 2))
    with pytest.raises(ValueError, match="even number of voxels"):
        grid_cancelled(rippled, a, b, 7)
