"""The one builder of the workflow's paths: a rule's template, filled with its wildcards, is the path that an
input function computes."""

import re

import pytest

from lpmnet.workflow.paths import Paths, manifest_path

PATHS = Paths("results")


def fill(template, **wildcards):
    return re.sub(r"\{(\w+)\}", lambda m: str(wildcards[m.group(1)]), template)


@pytest.mark.parametrize("name, args", [
    ("converted", dict(dataset="demo", subject="01", modality="FLAIR")),
    ("n4", dict(dataset="demo", subject="01", modality="FLAIR")),
    ("registered", dict(dataset="demo", subject="01", fixed="T1", modality="FLAIR")),
    ("registration_qc", dict(dataset="demo", subject="01", fixed="T1", modality="FLAIR")),
    ("normalized", dict(dataset="demo", subject="01", space="T1_res-32x48x40", modality="FLAIR")),
    ("model", dict(dataset="demo", pair="T1-FLAIR", method="lpmnet")),
    ("fused", dict(dataset="demo", pair="T1-FLAIR", subject="01", space="T1", method="lpmnet")),
    ("fused_sidecar", dict(dataset="demo", pair="T1-FLAIR", subject="01", space="T1", method="lpmnet")),
    ("subject_metrics", dict(dataset="demo", pair="T1-FLAIR", subject="01", method="lpmnet")),
    ("montage", dict(dataset="demo", pair="T1-FLAIR", subject="01")),
    ("split", dict(dataset="demo")),
    ("pretrained_model", dict(kind="mri-pet")),
])
def test_a_template_filled_with_its_wildcards_is_the_path(name, args):
    build = getattr(PATHS, name)
    assert fill(build(), **args) == build(**args)


def test_the_layout_is_unchanged():
    assert PATHS.normalized("demo", "01", "T1", "FLAIR") == "results/demo/sub-01/sub-01_space-T1_desc-norm_FLAIR.nii.gz"
    assert PATHS.normalized(space="{fixed}_res-{shape}") == \
        "results/{dataset}/sub-{subject}/sub-{subject}_space-{fixed}_res-{shape}_desc-norm_{modality}.nii.gz"
    assert PATHS.fused_sidecar("d", "T1-FLAIR", "01", "T1", "m") == "results/d/T1-FLAIR/fused/sub-01_space-T1_desc-m_fused.json"
    assert PATHS.kept_checkpoint("d", "T1-FLAIR", "m", 20) == "results/d/T1-FLAIR/model/m/checkpoints/iteration-000020.pt"
    assert PATHS.log("convert/sub-{subject}_{modality}") == "results/{dataset}/logs/convert/sub-{subject}_{modality}.log"
    assert PATHS.benchmark("split", "demo") == "results/demo/benchmarks/split.tsv"
    assert PATHS.manifest_log("demo") == "results/demo/logs/manifest.log"
    assert manifest_path("demo", "out") == "out/demo/manifest.tsv"
    assert PATHS.model_card() == "results/pretrained/MODEL_CARD.md"
