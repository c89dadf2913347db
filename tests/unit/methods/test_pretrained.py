"""The shipped pretrained LPM-Net models: which one a pair gets, what they do on real volumes, and the cause of
the window lattice they were trained to remove."""

import json

import numpy as np
import pytest
import torch
import yaml

from helpers import one_thread, write_pair
from public_mirror import manifest_files
from workflow_runs import REPO
from lpmnet.cli import main as cli
from lpmnet.errors import InputError
from lpmnet.methods.tiling import fuse_arrays
from lpmnet.volumes.io import dhw, load_volume
from lpmnet.methods import get_method, load_checkpoint_of, read_payload
from lpmnet.metrics.artefacts import background_level, lattice_ratio
from lpmnet.methods.lpmnet.network import LPMNet
from lpmnet.volumes.normalize import normalize_intensity
from lpmnet.methods.lpmnet.pretrained import MODEL_CARD, pretrained_path
from lpmnet.methods.pretrained import KINDS, kind_of_files, kind_of_modalities, resolve
from lpmnet.engine.train import TrainConfig, train
from lpmnet.evaluation.heldout import NORMALISATIONS, evaluate_model, fused_with_grid_shift
from lpmnet.workflow.config import held_out_files, resolve_pretraining
from lpmnet.workflow.index import with_defaults

LPMNET = get_method("lpmnet")

#: The shipped models' quality bar (issue 13): background at most 0.02, lattice at most 10% over the mean's.
MAX_BACKGROUND, MAX_LATTICE = 0.02, 1.10

#: Real pairs of ../shared/data/real per kind: (folder, first, second).
REAL_PAIRS = {
    "mri-mri": [("oms_patient07_mni", "T1.nii.gz", "T2.nii.gz"), ("oms_patient07_mni", "T1.nii.gz", "FLAIR.nii.gz"),
                ("spm_mni152_avg", "avg152T1.nii", "avg152T2.nii"), ("spm_mni152_avg", "avg152T1.nii", "avg152PD.nii"),
                ("tcga_FG-6692_native", "t1.nii.gz", "flair.nii.gz")],
    "mri-pet": [("spm_mni152_avg", "avg152T1.nii", "PET_template.nii")],
}


@pytest.fixture
def single_thread():
    with one_thread():
        yield


def normalised(path):
    """A volume as the workflow feeds it to a model: percentile window over an Otsu mask, then [0, 1]."""
    volume = load_volume(path)
    return normalize_intensity(dhw(volume.data), 0.5, 99.5, mask="otsu")


def artefacts(model, x1, x2):
    with torch.no_grad():
        fused = fuse_arrays(model, x1, x2)["fused"]
    a, b, f = (torch.from_numpy(np.ascontiguousarray(v)).double() for v in (x1, x2, np.clip(fused, 0, 1)))
    return fused, background_level(a, b, f).item(), lattice_ratio(a, b, f).item()


@pytest.mark.parametrize("first, second, kind", [
    ("T1", "FLAIR", "mri-mri"), ("T1", "T2", "mri-mri"), ("T1CE", "PD", "mri-mri"), ("T1", "PET", "mri-pet"),
    ("SPECT", "T2", "mri-pet"), ("T1w", "FDG-PET", "mri-pet"),
])
def test_a_pair_gets_the_model_of_its_kind(first, second, kind):
    assert kind_of_modalities(first, second) == kind


def test_ct_has_no_pretrained_model_and_file_names_tell_the_kind():
    with pytest.raises(ValueError, match="no pretrained model fuses CT"):
        kind_of_modalities("CT", "T1")
    assert kind_of_files("sub-01_T1w.nii.gz", "sub-01_pet.nii.gz") == "mri-pet"
    assert kind_of_files("sub-01_space-T1_desc-norm_T1.nii.gz", "sub-01_space-T1_desc-norm_FLAIR.nii.gz") == "mri-mri"
    assert resolve(LPMNET, "mri-pet", "a.nii.gz", "b.nii.gz") == (pretrained_path("mri-pet"), "mri-pet")
    assert resolve(LPMNET, "my/model.pt", "a.nii.gz", "b.nii.gz")[1] is None
    with pytest.raises(ValueError, match="mambadfuse ships no pretrained model"):
        resolve(get_method("mambadfuse"), "pretrained", "a_T1.nii.gz", "b_PET.nii.gz")
    with pytest.raises(ValueError, match="no pretrained model 'mri-ct'"):
        pretrained_path("mri-ct")


@pytest.mark.parametrize("kind", KINDS)
def test_shipped_models_are_lpmnet_checkpoints_with_their_recipe(kind):
    path = pretrained_path(kind)
    assert path.stat().st_size < 500_000  # about 100 KB: it ships inside the package
    model, card = load_checkpoint_of(LPMNET, path)
    assert sum(p.numel() for p in model.parameters()) == 26_051  # the default network
    # Trained with the recipe config/pretrained.yaml gives now: `make pretrained` would reproduce it.
    config = yaml.safe_load((REPO / "config" / "pretrained.yaml").read_text())
    recipe = resolve_pretraining(config["pretrained"], {n: with_defaults(c) for n, c in config["datasets"].items()})
    assert card["kind"] == kind and card["train_config"] == json.loads(json.dumps(recipe[kind]))
    assert card["data"] and all("-".join(p) in MODEL_CARD.read_text() for p in card["pairs"])
    text = MODEL_CARD.read_text()
    assert "Louis Collins" in text and f"lpmnet_{kind}.pt" in text  # the template's licence and the file


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_shipped_models_leave_no_background_and_no_lattice_on_real_volumes(shared_data, kind):
    model, _ = load_checkpoint_of(LPMNET, pretrained_path(kind))
    for folder, first, second in REAL_PAIRS[kind]:
        x1, x2 = normalised(shared_data / folder / first), normalised(shared_data / folder / second)
        _, background, lattice = artefacts(model, x1, x2)
        assert background <= MAX_BACKGROUND, f"{folder} {first}+{second}: background {background:.3f}"
        assert lattice <= MAX_LATTICE, f"{folder} {first}+{second}: lattice {lattice:.3f}"


@pytest.mark.slow
def test_the_lattice_is_locked_to_the_window_grid_not_to_the_anatomy(shared_data):
    """The cause, on real volumes: in empty space (both sources 0) every window of a Mamba layer scans a
    constant sequence, and its output differs at the first tokens of the scan (the causal convolution's
    zero history, the state's warm-up) from the rest. An untrained network shows it plainly: the fused
    background deviates most at the windows' first row (index 0 mod 16 along D), and padding the volume
    in front by 5 voxels moves that row to index 11 of the anatomy's grid; the anatomy did not move. The
    shipped models are trained until tanh saturates there: their background is 0 wherever the window
    starts."""
    folder = shared_data / "spm_mni152_avg"
    x1, x2 = normalised(folder / "avg152T1.nii"), normalised(folder / "avg152T2.nii")
    empty = (x1 == 0) & (x2 == 0)
    torch.manual_seed(0)
    untrained = LPMNet().eval()

    def deviation_by_window_row(fused):
        deviation = np.abs(fused - np.median(fused[empty]))[empty]
        row = np.nonzero(empty)[0] % 16
        return np.bincount(row, weights=deviation, minlength=16) / np.bincount(row, minlength=16)

    fused, background, _ = artefacts(untrained, x1, x2)
    profile = deviation_by_window_row(fused)
    assert background > 0.4  # tanh(0) / 2 + 0.5: an untrained network fills empty space with 0.5
    assert profile.argmax() == 0 and profile[0] > 1.5 * np.median(profile)
    shift = 5
    with torch.no_grad():
        moved = fused_with_grid_shift(lambda a, b: fuse_arrays(untrained, a, b)["fused"], x1, x2, shift)
    profile = deviation_by_window_row(moved)
    assert profile.argmax() == 16 - shift and profile[16 - shift] > 1.5 * np.median(profile)

    shipped, _ = load_checkpoint_of(LPMNET, pretrained_path("mri-mri"))
    fused, background, _ = artefacts(shipped, x1, x2)
    assert background <= MAX_BACKGROUND and np.percentile(fused[empty], 99.9) < 0.05


def test_fuse_without_checkpoint_uses_the_pretrained_model_of_the_file_names(tmp_path, capsys, single_thread):
    t1, pet = write_pair(tmp_path, name="sub-01", shape=(16, 20, 18))
    pet = pet.rename(tmp_path / "sub-01_pet.nii.gz")
    assert cli(["fuse", str(t1), str(pet), "-o", str(tmp_path / "fused.nii.gz")]) == 0
    assert "pretrained mri-pet model" in capsys.readouterr().err
    sidecar = json.loads((tmp_path / "fused.json").read_text())
    assert sidecar["Checkpoint"]["path"] == str(pretrained_path("mri-pet"))
    assert cli(["fuse", str(t1), str(pet), "-o", str(tmp_path / "f2.nii.gz"), "--pretrained", "mri-mri"]) == 0
    assert "pretrained mri-mri model" in capsys.readouterr().err
    assert cli(["fuse", str(t1), str(pet), "-o", str(tmp_path / "f3.nii.gz"), "--method", "mambadfuse"]) == 2
    assert "mambadfuse ships no pretrained model" in capsys.readouterr().err


def test_training_starts_from_the_pretrained_weights(tmp_path, single_thread):
    a, b = write_pair(tmp_path, shape=(16, 16, 16))
    # lr 0: the weights after one step are the ones training started from
    config = TrainConfig(iterations=1, patch_size=(16, 16, 16), lr=0.0, init="mri-mri", checkpoint_every=1)
    final = train([(a, b)], tmp_path / "run", config)
    shipped = read_payload(pretrained_path("mri-mri"))["state_dict"]
    trained = read_payload(final)
    assert all(torch.equal(trained["state_dict"][k], v) for k, v in shipped.items())
    assert trained["model_card"]["initial_weights"]["path"] == str(pretrained_path("mri-mri"))


def test_a_checkpoint_of_another_architecture_cannot_start_training(tmp_path, single_thread):
    a, b = write_pair(tmp_path, shape=(16, 16, 16))
    config = TrainConfig(iterations=1, patch_size=(16, 16, 16), init="mri-mri", model={"base_c": 4})
    with pytest.raises(InputError, match="lpmnet_mri-mri.pt: its network is not the one being trained"):
        train([(a, b)], tmp_path / "run", config)


def held_out_pairs(shared_data, kind):
    """The held-out pairs of config/pretrained.yaml of ``kind``, as files of ../shared/data (found by the sha256
    that the config and MANIFEST.tsv both record): (label, first, second, colour map or None)."""
    config = yaml.safe_load((REPO / "config" / "pretrained.yaml").read_text())
    datasets = {name: with_defaults(cfg) for name, cfg in config["datasets"].items()}
    files = manifest_files(shared_data.parent)
    return [(f"{name} {subject} {first}-{second}", shared_data.parent / files[file1["sha256"]],
             shared_data.parent / files[file2["sha256"]], colour)
            for name, subject, first, second, file1, file2, colour in held_out_files(config["pretrained"], datasets)
            if kind_of_modalities(first, second) == kind]


@pytest.mark.slow
@pytest.mark.parametrize("normalisation", NORMALISATIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_shipped_models_beat_mean_max_and_laplacian_on_every_held_out_real_pair(shared_data, kind, normalisation):
    """Issue 26's bar: on every real pair held out from training, under the workflow's normalisation and with a
    background of exactly 0 (percentiles inside the head), each shipped model beats the mean, max and
    Laplacian-pyramid fusions together on at least 4 of the paper's 8 metrics, and stays clean."""
    card = read_payload(pretrained_path(kind))["model_card"]
    held_out = yaml.safe_load((REPO / "config" / "pretrained.yaml").read_text())["pretrained"]["held_out"]
    assert held_out and not set(held_out) & set(card["datasets"])  # never trained on
    pairs = held_out_pairs(shared_data, kind)
    assert pairs
    with one_thread():
        for label, path1, path2, colour in pairs:
            (result,) = evaluate_model(pretrained_path(kind), path1, path2, colour=colour,
                                       normalisations=(normalisation,))
            where = f"{label} ({normalisation} normalisation)"
            assert len(result.won) >= 4, f"{where}: beats mean, max and laplacian on {result.won} only"
            assert result.model["background"] <= MAX_BACKGROUND, f"{where}: background {result.model['background']}"
            assert result.model["lattice"] <= MAX_LATTICE, f"{where}: lattice {result.model['lattice']}"
