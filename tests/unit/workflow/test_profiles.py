"""The SLURM profiles (the shipped one and the test cluster's) send every GPU rule to the GPU partition."""

import pytest
import yaml

from workflow_runs import REPO, gpu_rules

PROFILES = [REPO / "config" / "profiles" / "slurm" / "config.yaml", REPO / "tests" / "slurm" / "profile" / "config.yaml"]


def test_the_gpu_rules_are_found():
    assert {"train", "fuse", "learning_curve", "pretrain"} <= gpu_rules()


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.parent.name)
def test_every_gpu_rule_runs_on_the_gpu_partition(profile):
    settings = yaml.safe_load(profile.read_text())["set-resources"]
    # the test cluster's tiny run has no pretraining job
    needed = gpu_rules() - ({"pretrain", "pretrained_held_out"} if profile.parent.name == "profile" else set())
    for rule in needed:
        assert settings.get(rule, {}).get("slurm_partition") == "gpu" and settings[rule].get("gpu") == 1, (profile, rule)
