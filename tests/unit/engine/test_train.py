import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import smooth_pair, write_pair
from lpmnet.evaluation import curves
from lpmnet.errors import InputError
from lpmnet.engine.losses import LOSS_TERMS
from lpmnet.methods import read_payload
from lpmnet.methods.lpmnet.network import load_checkpoint
from lpmnet.engine.train import TrainConfig, learning_curve, train

SMALL = dict(iterations=3, patch_size=(16, 16, 16), checkpoint_every=1, val_every=2,
             model=dict(base_c=4, depth_c=1, depth_m=2))


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    return [write_pair(folder, f"sub-{i:02d}", seed=i) for i in range(3)]


def _weights(path):
    return read_payload(path)["state_dict"]


def test_training_writes_log_checkpoints_and_model_card(pairs, tmp_path):
    final = train(pairs[:2], tmp_path, TrainConfig(**SMALL), val_pairs=pairs[2:])
    assert final == tmp_path / "model.pt"
    rows = list(csv.DictReader(open(tmp_path / "training_log.csv")))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3]
    for term in (*LOSS_TERMS, "total", "lambda", "lr"):
        assert all(r[term] != "" for r in rows), term
    assert rows[1]["val_SSIM"] != "" and rows[0]["val_SSIM"] == ""
    assert float(rows[2]["val_SSIM"]) > 0
    assert (tmp_path / "best.pt").exists() and (tmp_path / "last.pt").exists()
    model, card = load_checkpoint(final)
    assert card["train_config"]["iterations"] == 3 and len(card["data"]) == 2
    assert card["data"][0]["shape_dhw"] == [20, 28, 24] and "torch_version" in card
    assert model.config["base_c"] == 4
    assert not list(tmp_path.glob(".*tmp*")), "temporary files left behind"


def test_keep_every_keeps_the_model_over_the_run(pairs, tmp_path):
    train(pairs[:1], tmp_path, TrainConfig(**{**SMALL, "iterations": 4, "keep_every": 2}), progress=False)
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == ["iteration-000002.pt", "iteration-000004.pt"]
    (_, second), (_, fourth) = (load_checkpoint(tmp_path / "checkpoints" / name) for name in kept)
    assert (second["iteration"], fourth["iteration"]) == (2, 4)
    # the last kept model is the final one
    final, kept_last = _weights(tmp_path / "model.pt"), _weights(tmp_path / "checkpoints" / kept[-1])
    assert all(torch.equal(final[k], kept_last[k]) for k in final)
    assert not torch.equal(_weights(tmp_path / "checkpoints" / kept[0])["Conv_in.weight"], final["Conv_in.weight"])
    with pytest.raises(ValueError, match="keep_every"):
        TrainConfig(keep_every=-1)

    # the learning curve: each kept model fuses each pair, scored in the lpmnet convention
    kept_paths = [tmp_path / "checkpoints" / name for name in kept]
    rows = learning_curve(kept_paths, pairs[:2])
    assert [r["iteration"] for r in rows] == [2, 2, 4, 4] and [r["x1"] for r in rows[:2]] == [str(p[0]) for p in pairs[:2]]
    assert all(0 <= r["SSIM"] <= 1 and r["MI"] > 0 for r in rows)
    assert rows[0]["Qabf"] != rows[2]["Qabf"]  # two different models
    table = tmp_path / "curve.tsv"
    pd.DataFrame(rows).to_csv(table, sep="\t", index=False)
    assert curves.learning_curve(table, tmp_path / "curve.png", "test").stat().st_size > 10_000
    with pytest.raises(InputError, match="model.pt: not a checkpoint kept during training"):
        learning_curve([tmp_path / "model.pt"], pairs[:1])


def test_same_seed_gives_identical_weights_on_cpu(pairs, tmp_path):
    a = train(pairs, tmp_path / "a", TrainConfig(**SMALL))
    b = train(pairs, tmp_path / "b", TrainConfig(**SMALL))
    c = train(pairs, tmp_path / "c", TrainConfig(**{**SMALL, "seed": 3}))
    wa, wb, wc = _weights(a), _weights(b), _weights(c)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_whole_volume_training(pairs, tmp_path):
    cfg = TrainConfig(**{**SMALL, "patch_size": None, "iterations": 1})
    train(pairs[:1], tmp_path, cfg)
    assert (tmp_path / "model.pt").exists()


def test_resume_refuses_the_state_of_another_training(pairs, tmp_path):
    train(pairs, tmp_path, TrainConfig(**SMALL))
    with pytest.raises(ValueError, match=r"last\.pt: it was written by another training \(other settings, data"):
        train(pairs, tmp_path, TrainConfig(**{**SMALL, "lr": 1e-3}))
    # The same file names with other bytes (data normalised again) are other data: resuming would return the
    # old model at once, the old training being complete.
    changed = [(tmp_path / "a.nii.gz", b) for _, b in pairs]
    import shutil

    shutil.copy(pairs[1][0], changed[0][0])
    train(changed, tmp_path / "run", TrainConfig(**SMALL))
    shutil.copy(pairs[2][0], changed[0][0])
    with pytest.raises(ValueError, match="another training"):
        train(changed, tmp_path / "run", TrainConfig(**SMALL))
    with pytest.raises(ValueError, match="another training"):  # other validation data
        train(pairs, tmp_path, TrainConfig(**SMALL), val_pairs=pairs[:1])


def test_the_workflow_trains_again_when_settings_or_data_changed_and_resumes_otherwise(pairs, tmp_path):
    config = TrainConfig(**{**SMALL, "keep_every": 1})
    train(pairs[:2], tmp_path / "fresh", TrainConfig(**SMALL))
    train(pairs, tmp_path / "run", config, val_pairs=pairs[2:])
    assert (tmp_path / "run" / "best.pt").exists() and len(list((tmp_path / "run" / "checkpoints").glob("*.pt"))) == 3
    final = train(pairs[:2], tmp_path / "run", TrainConfig(**SMALL), restart_stale=True)
    assert not (tmp_path / "run" / "best.pt").exists() and not list((tmp_path / "run" / "checkpoints").glob("*.pt"))
    fresh, retrained = _weights(tmp_path / "fresh" / "model.pt"), _weights(final)
    assert all(torch.equal(fresh[k], retrained[k]) for k in fresh)  # as if the old state had never been there
    log = pd.read_csv(tmp_path / "run" / "training_log.csv")
    assert log["iteration"].tolist() == [1, 2, 3]
    # Its own state is resumed, not discarded: a finished training is not run again.
    (tmp_path / "run" / "training_log.csv").unlink()
    train(pairs[:2], tmp_path / "run", TrainConfig(**SMALL), restart_stale=True)
    assert pd.read_csv(tmp_path / "run" / "training_log.csv")["iteration"].tolist() == [1, 2, 3]
    assert read_payload(tmp_path / "run" / "last.pt")["iteration"] == 3
    # A training killed before its first last.pt leaves no best or kept model behind for the next one.
    (tmp_path / "run" / "last.pt").unlink()
    (tmp_path / "run" / "checkpoints").mkdir(exist_ok=True)
    for leftover in ("best.pt", "checkpoints/iteration-000007.pt"):
        (tmp_path / "run" / leftover).write_bytes(b"an earlier training's")
    train(pairs[:2], tmp_path / "run", TrainConfig(**{**SMALL, "iterations": 1}))
    assert not (tmp_path / "run" / "best.pt").exists() and not list((tmp_path / "run" / "checkpoints").glob("*.pt"))


def test_patch_size_must_be_multiple_of_16():
    with pytest.raises(ValueError, match="multiples of 16"):
        TrainConfig(patch_size=(24, 16, 16))


def _cli_train(pairs, out_dir, iterations):
    args = [sys.executable, "-m", "lpmnet.cli", "train", "-o", str(out_dir), "--iterations", str(iterations),
            "--patch-size", "16", "16", "16", "--checkpoint-every", "1", "--base-c", "4", "--depth-c", "1"]
    for a, b in pairs:
        args += ["--x1", str(a), "--x2", str(b)]
    return args


def test_killed_training_resumes_to_the_same_weights(pairs, tmp_path):
    iterations = 8
    subprocess.run(_cli_train(pairs, tmp_path / "straight", iterations), check=True, capture_output=True)

    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli_train(pairs, out, iterations), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        if (out / "last.pt").exists() and read_payload(out / "last.pt")["iteration"] >= 3:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed_from = read_payload(out / "last.pt")["iteration"]
    assert 3 <= resumed_from < iterations, "the run finished before it could be killed"
    assert not (out / "model.pt").exists()
    # Snakemake deletes a killed job's declared outputs (the CSV), not last.pt: the rows come back from it.
    (out / "training_log.csv").unlink()

    subprocess.run(_cli_train(pairs, out, iterations), check=True, capture_output=True)
    straight, resumed = _weights(tmp_path / "straight" / "model.pt"), _weights(out / "model.pt")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    rows = list(csv.DictReader(open(out / "training_log.csv")))
    assert [int(r["iteration"]) for r in rows] == list(range(1, iterations + 1))
    expected = list(csv.DictReader(open(tmp_path / "straight" / "training_log.csv")))
    assert [r["total"] for r in rows] == [r["total"] for r in expected]
    card = read_payload(out / "model.pt")["model_card"]
    assert card["final_loss"]["total"] == pytest.approx(float(rows[-1]["total"]))


def test_bad_input_leaves_no_output_folder(tmp_path):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a volume")
    with pytest.raises(Exception, match="bad.nii.gz"):
        train([(bad, bad)], tmp_path / "run", TrainConfig(**SMALL))
    assert not (tmp_path / "run").exists()


def test_acquisition_augmentation_varies_each_input_reproducibly_within_the_unit_range():
    from lpmnet.engine.train import PatchSampler, acquisition_augment

    x = smooth_pair((40, 40, 40))[0]
    ball = np.sum((np.indices(x.shape) - 19.5) ** 2, axis=0) < 10 ** 2  # a head in empty space
    x = np.where(ball, np.clip(x / x.max(), 0.05, 1), 0).astype(np.float32)
    drawn = [acquisition_augment(x, x.copy(), np.random.default_rng([0, i])) for i in range(40)]
    again = [acquisition_augment(x, x.copy(), np.random.default_rng([0, i])) for i in range(40)]
    assert all(np.array_equal(a, b) for pair, twin in zip(drawn, again) for a, b in zip(pair, twin))  # resumable
    assert all(d.dtype == np.float32 and d.min() >= 0 and d.max() <= 1 for pair in drawn for d in pair)
    changed = [float(np.abs(d - x).mean()) for pair in drawn for d in pair]
    assert min(changed) < 1e-6 < 0.02 < max(changed)  # sometimes untouched, sometimes far from the input
    assert any(not np.array_equal(a, b) for a, b in drawn)  # each input draws its own changes
    # Away from the head (both inputs 0, beyond a blur's reach) nothing is added: the background stays 0.
    from scipy import ndimage

    far = ndimage.distance_transform_edt(x == 0) > 9
    assert far.any() and all(np.all(d[far] == 0) for pair in drawn for d in pair)
    # A pedestal raises the whole head, a step at its edge, as a head-only normalisation gives.
    head = x > 0
    assert any(d[head].min() > 0.1 for pair in drawn for d in pair)
    sampler = PatchSampler([(x, x.copy())], (32, 32, 32), "acquisition")
    assert sampler.sample(0, np.random.default_rng(1))[0].shape == (32, 32, 32)


def test_head_fraction_draws_its_share_of_the_patches_from_the_pair_normalised_inside_the_head():
    from lpmnet.engine.train import PatchSampler

    x1, x2 = smooth_pair((40, 40, 40), seed=2)
    head = np.sum((np.indices(x1.shape) - 19.5) ** 2, axis=0) < 14 ** 2  # symmetric: flips keep it in place
    # The workflow's normalisation windows the background, it does not cut it: low, noisy, rarely exactly 0.
    noise = np.random.default_rng(0).uniform(0.001, 0.04, x1.shape)
    x1, x2 = (np.where(head, 0.2 + 0.8 * x / x.max(), noise).astype(np.float32) for x in (x1, x2))
    sampler = PatchSampler([(x1, x2)], None, "flips", head_fraction=0.5)
    drawn = [sampler.sample(0, np.random.default_rng([5, i])) for i in range(40)]
    again = [sampler.sample(0, np.random.default_rng([5, i])) for i in range(40)]
    assert all(np.array_equal(a, b) for pair, twin in zip(drawn, again) for a, b in zip(pair, twin))
    is_cut = [all(np.all(x[~head] == 0) for x in pair) for pair in drawn]
    cut = [pair for pair, c in zip(drawn, is_cut) if c]
    assert 10 < len(cut) < 30 and all(min(x.min() for x in pair) > 0 for pair, c in zip(drawn, is_cut) if not c)
    for pair in cut:  # windowed inside the head: its brightest voxels reach 1, a step from 0 at its edge
        assert all(x.dtype == np.float32 and x.max() == 1 and x[head].min() < 0.05 < x[head].mean() for x in pair)
    # A patch is the patch of the pair normalised inside the head as a whole (normalised when drawn).
    from lpmnet.volumes.normalize import normalize_in_head

    whole = normalize_in_head(x1, x2)
    patches = PatchSampler([(x1, x2)], (16, 16, 16), "flips", head_fraction=0.5)
    drawn = [patches.sample(0, np.random.default_rng([6, i])) for i in range(12)]
    cut = [pair for pair in drawn if pair[0].min() == 0]
    assert cut and all(any(np.array_equal(pair[0], window) for window in _flipped_patches(whole[0], 16))
                       for pair in cut)
    # A pair without a head (a constant volume) is drawn as it is.
    flat = np.full((20, 20, 20), 0.5, np.float32)
    assert np.all(PatchSampler([(flat, flat)], None, "flips", head_fraction=0.5).sample(0, np.random.default_rng(0))[0] == 0.5)


def _flipped_patches(volume, size):
    """Every size^3 window of ``volume``, under each of the 8 flips."""
    from numpy.lib.stride_tricks import sliding_window_view

    windows = sliding_window_view(volume, (size,) * 3).reshape(-1, size, size, size)
    return (np.flip(w, axes) if axes else w for w in windows
            for axes in ((), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)))


def test_a_volume_thinner_than_the_patch_is_padded_with_background():
    from lpmnet.engine.train import PatchSampler

    thick = np.random.default_rng(0).random((10, 40, 40)).astype(np.float32)  # 10 slices, thick clinical ones
    sampler = PatchSampler([(thick, thick), (np.ones((40, 40, 40), np.float32),) * 2], (16, 16, 16), "none")
    for index in (0, 1):
        a, b = sampler.sample(index, np.random.default_rng(index))
        assert a.shape == b.shape == (16, 16, 16)
    a, _ = sampler.sample(0, np.random.default_rng(0))
    assert np.all(a[10:] == 0) and np.any(a[:10] > 0)


@pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan"), True])
def test_head_fraction_outside_zero_to_one_is_refused(fraction):
    from lpmnet.engine.train import TrainConfig

    with pytest.raises(ValueError, match="head_fraction must be a number in"):
        TrainConfig(method="lpmnet", head_fraction=fraction)
    assert TrainConfig(method="lpmnet", head_fraction=1).head_fraction == 1.0  # YAML's 1 and 1.0: one setting


@pytest.mark.parametrize("fraction, augmentation, slice_axis", [
    (0.0, "flips", None), (1.0, "none", None), (1.0, "dihedral", 0), (0.3, "flips", None)])
def test_head_fraction_is_the_share_of_head_normalised_patches_under_any_augmentation(fraction, augmentation,
                                                                                      slice_axis):
    from lpmnet.engine.train import PatchSampler

    x1, x2 = smooth_pair((24, 24, 24), seed=3)
    head = np.sum((np.indices(x1.shape) - 11.5) ** 2, axis=0) < 9 ** 2  # symmetric under flips and rotations
    noise = np.random.default_rng(0).uniform(0.001, 0.04, x1.shape)
    x1, x2 = (np.where(head, 0.2 + 0.8 * x / x.max(), noise).astype(np.float32) for x in (x1, x2))
    size = (24, 24) if slice_axis is not None else None
    sampler = PatchSampler([(x1, x2)], size, augmentation, slice_axis=slice_axis, head_fraction=fraction)
    assert (sampler.heads is None) == (fraction == 0)
    cut = [sampler.sample(0, np.random.default_rng([7, i]))[1].min() == 0 for i in range(100)]
    assert abs(np.mean(cut) - fraction) < 0.1
