"""The SLURM profiles (the shipped one and the test cluster's) send every GPU rule to the GPU partition."""

import re

import pytest
import yaml

from test_workflow import REPO

PROFILES = [REPO / "config" / "profiles" / "slurm" / "config.yaml", REPO / "tests" / "slurm" / "profile" / "config.yaml"]


def gpu_rules():
    """Names of the rules whose resources ask for a GPU (gpu=gpu_resources(...)), read from rules/*.smk."""
    rules = set()
    for path in sorted((REPO / "rules").glob("*.smk")):
        for block in re.split(r"^(?=(?:rule|checkpoint) )", path.read_text(), flags=re.M):
            name = re.match(r"(?:rule|checkpoint) (\w+):", block)
            if name and "gpu=gpu_resources(" in block:
                rules.add(name.group(1))
    return rules


def test_the_gpu_rules_are_found():
    assert {"train", "fuse", "learning_curve", "pretrain"} <= gpu_rules()


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.parent.name)
def test_every_gpu_rule_runs_on_the_gpu_partition(profile):
    settings = yaml.safe_load(profile.read_text())["set-resources"]
    # the test cluster's tiny run has no pretrain job
    needed = gpu_rules() - ({"pretrain"} if profile.parent.name == "profile" else set())
    for rule in needed:
        assert settings.get(rule, {}).get("slurm_partition") == "gpu" and settings[rule].get("gpu") == 1, (profile, rule)
