"""Each rule's conda environment provides what its jobs import, and nothing they do not need.

No conda channel is reachable here, so the environments are not built. Instead, real workflow runs record,
in every job, the modules it imported (``LPMNET_RECORD_IMPORTS``, :func:`lpmnet.workflow.runner.run_job`): a tiny
demo with every method, N4, the resize and the learning curve; the ``pretrained`` target; an IXI download and
a downloads dataset's volumes from a local server. A job needs a package when its own code (the rule's script
and the lpmnet modules the job loaded) imports it and the import ran; what a third-party package imports is
that package's business (conda installs its requirements; its optional imports are optional). The environment
file provides its packages and, as conda does, their requirements, read from the installed packages' metadata.
Conda names are mapped to the installed distributions' names (``CONDA_NAMES``); build tools that no job imports
are listed in ``TOOLS``.
"""

import ast
import copy
import hashlib
import importlib.metadata as metadata
import json
import re
from functools import cache
from pathlib import Path

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from helpers import smooth_pair
from ixi_server import FileServer, make_ixi_tarballs
from lpmnet.volumes.io import save_volume
from lpmnet.workflow.paths import Paths
from workflow_runs import DEFAULT_CONFIG, REPO, snakemake, workdir_with

pytestmark = pytest.mark.slow

#: Conda package names whose Python distribution has another name.
CONDA_NAMES = {"matplotlib-base": "matplotlib", "pytorch": "torch"}
#: What an environment may list without a job importing it: the interpreter and the build tools of the
#: C++ kernel's just-in-time build (lpmnet.ops.build, where no prebuilt kernel fits).
TOOLS = {"python", "pip", "ninja", "cxx-compiler"}


def rule_envs():
    """{rule: (env file, script)} of every rule with ``conda:`` and ``script:``."""
    found = {}
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for body in re.split(r"^(?:rule|checkpoint) ", smk.read_text(), flags=re.M)[1:]:
            env = re.search(r"^    conda:\s*\n\s*\"([^\"]+)\"", body, flags=re.M)
            script = re.search(r"^    script:\s*\n\s*\"([^\"]+)\"", body, flags=re.M)
            if env and script:
                found[body.split(":")[0]] = ((smk.parent / env.group(1)).resolve(),
                                             (smk.parent / script.group(1)).resolve())
    return found


def listed_packages(env_file):
    """Canonical names of the packages an environment file lists (conda and pip), tools left out."""
    names = set()
    for entry in yaml.safe_load(env_file.read_text())["dependencies"]:
        for spec in entry["pip"] if isinstance(entry, dict) else [entry]:
            name = re.split(r"[=<>!~ \[]", spec, maxsplit=1)[0]
            names.add(canonicalize_name(CONDA_NAMES.get(name, name)))
    return names - TOOLS


@cache
def requirements(distribution):
    """The distributions that ``distribution`` requires (its extras left out)."""
    environment = default_environment()
    required = set()
    for line in metadata.requires(distribution) or []:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate({**environment, "extra": ""}):
            required.add(canonicalize_name(requirement.name))
    return required


def closure(distributions):
    """``distributions`` with everything they require, transitively."""
    found, todo = set(), list(distributions)
    while todo:
        name = todo.pop()
        if name not in found:
            found.add(name)
            todo += requirements(name)
    return found


@cache
def distributions_of_modules():
    return {top: {canonicalize_name(d) for d in dists} for top, dists in metadata.packages_distributions().items()}


@cache
def imported_names(path):
    """Top-level names of every module that the file imports, at any level of its code."""
    names = set()
    for node in ast.walk(ast.parse(Path(path).read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    return names


def own_source(name):
    """The Python source of an lpmnet module (None for the compiled kernels, which import nothing)."""
    path = REPO / Path(*name.split("."))
    return next((p for p in (path.with_suffix(".py"), path / "__init__.py") if p.is_file()), None)


def needed_distributions(record, script):
    """The distributions a job's own code imported: the script's and the loaded lpmnet modules' imports
    that ran (are among the job's third-party modules)."""
    sources = [script, *filter(None, map(own_source, record["lpmnet"]))]
    own = set().union(*map(imported_names, sources))
    direct = own & set(record["third_party"])
    unknown = sorted(n for n in direct if n not in distributions_of_modules())
    assert not unknown, f"rule {record['rule']}: no installed distribution provides {unknown}"
    return set().union(*(distributions_of_modules()[n] for n in direct))


def env_problems(records, envs):
    """What the environments lack or list in vain, for the recorded jobs: a list of sentences."""
    needed_by_env, problems = {}, []
    for record in records:
        env, script = envs[record["rule"]]
        needed = needed_distributions(record, script)
        needed_by_env.setdefault(env, set()).update(needed)
        missing = needed - closure(listed_packages(env))
        if missing:
            problems.append(f"rule {record['rule']} imports {sorted(missing)}, which {env.name} does not provide")
    for env, needed in needed_by_env.items():
        unneeded = listed_packages(env) - closure(needed)
        if unneeded:
            problems.append(f"{env.name} lists {sorted(unneeded)}, which none of its rules' jobs imports")
    return sorted(set(problems))


def tiny_demo_with_every_scripted_rule():
    config = copy.deepcopy(DEFAULT_CONFIG)
    config["datasets"]["demo"].update(subjects=3, modalities=["T1", "FLAIR"], pairs=[["T1", "FLAIR"]],
                                      target_shape=[32, 48, 48])
    config["registration"]["n4"] = True
    config["training"]["checkpoint_every"] = 1
    config["methods"] = {
        "lpmnet": {"training": {"iterations": 2, "patch_size": [16, 16, 16], "keep_every": 1}},
        "lpmnet-pretrained": {"network": "lpmnet", "checkpoint": "pretrained"},
        "mambadfuse": {"model": {"embed_dim": 8}, "training": {"iterations": 1, "batch_size": 1,
                                                                  "patch_size": [16, 16]}},
        "dc2fusion": {"model": {"embed_dim": 12}, "training": {"iterations": 1, "patch_size": [48, 48, 48]}},
        "asfe": {"model": {"dim": 8, "num_heads": 2, "channels": [4, 4, 4, 4]},
                 "training": {"iterations": 1, "patch_size": [32, 32]}},
    }
    return config


def tiny_pretraining():
    config = copy.deepcopy(DEFAULT_CONFIG)
    pretraining = yaml.safe_load((REPO / "config" / "pretrained.yaml").read_text())
    pretraining["datasets"] = {"pretrain": {**pretraining["datasets"]["pretrain"], "subjects": 3,
                                            "modalities": ["T1", "PET"], "pairs": [["T1", "PET"]]}}
    pretraining["pretrained"].update(datasets=["pretrain"], held_out=[], models={"mri-pet": {"pairs": [["T1", "PET"]]}})
    pretraining["pretrained"]["training"].update(iterations=1, patch_size=[16, 16, 16], val_every=1)
    config.update(pretraining)
    return config


def tiny_bids_dataset(root):
    """A raw BIDS dataset of one subject (T1w, FLAIR, pet) with a sidecar that the manifest and conversion
    read."""
    (root / "sub-01" / "anat").mkdir(parents=True)
    (root / "sub-01" / "pet").mkdir(parents=True)
    (root / "dataset_description.json").write_text('{"Name": "tiny", "BIDSVersion": "1.10.0"}')
    (root / "T1w.json").write_text('{"MagneticFieldStrength": 3}')
    affine = [[2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1]]
    for data, name in zip((*smooth_pair(seed=4), smooth_pair(seed=5)[1]),
                          ("anat/sub-01_T1w", "anat/sub-01_FLAIR", "pet/sub-01_pet")):
        save_volume(root / "sub-01" / f"{name}.nii.gz", data, affine)
    return root


@pytest.fixture(scope="module")
def recorded_jobs(tmp_path_factory):
    """The import records of every job of four runs that together run every scripted rule."""
    records = tmp_path_factory.mktemp("imports")
    env = {"LPMNET_RECORD_IMPORTS": str(records)}
    demo = workdir_with(tmp_path_factory.mktemp("demo"), tiny_demo_with_every_scripted_rule())
    snakemake(demo, "--cores", "2", env=env)
    pretraining = workdir_with(tmp_path_factory.mktemp("pretrained"), tiny_pretraining())
    snakemake(pretraining, "--cores", "2", "pretrained", env=env)
    served = make_ixi_tarballs(tmp_path_factory.mktemp("ixi_served"))
    with FileServer(served["T1"].parent) as server:
        ixi = {"source": "ixi", "urls": {m: f"{server.url}/IXI-{m}.tar" for m in served},
               "pairs": [["T2", "T1"]], "modalities": ["T1", "T2"]}
        # the tarballs' volumes, downloaded one by one
        volumes = {m: served["T1"].parent / "volumes" / f"IXI002-Guys-0828-{m}.nii.gz" for m in ("T1", "T2")}
        files = {m: {"url": f"{server.url}/volumes/{v.name}", "sha256": hashlib.sha256(v.read_bytes()).hexdigest()}
                 for m, v in volumes.items()}
        online = {"source": "downloads", "fixed": "T2", "pairs": [["T2", "T1"]], "files": {"IXI002": files}}
        config = copy.deepcopy(DEFAULT_CONFIG)
        config["datasets"] = {"ixi": ixi, "online": online}
        snakemake(workdir_with(tmp_path_factory.mktemp("ixi"), config), "--cores", "2", "results/ixi/manifest.tsv",
                  "results/online/manifest.tsv", env=env)
    # A BIDS input (its manifest and conversions read the sidecars) with a PET pair, fused in colour.
    config = copy.deepcopy(DEFAULT_CONFIG)
    config["datasets"] = {"study": {"source": "bids", "root": str(tiny_bids_dataset(tmp_path_factory.mktemp("bids"))),
                                    "fixed": "T1", "pairs": [["T1", "FLAIR"], ["T1", "PET"]], "register": False}}
    snakemake(workdir_with(tmp_path_factory.mktemp("bids_run"), config), "--cores", "2", "results/study/manifest.tsv",
              Paths().fused_colour("study", "T1-PET", "01", "T1", "mean"), env=env)
    return [json.loads(p.read_text()) for p in sorted(records.glob("*.json"))]


def test_every_scripted_rule_ran_and_its_environment_provides_what_it_imports(recorded_jobs):
    envs = rule_envs()
    assert {r["rule"] for r in recorded_jobs} == set(envs), "a scripted rule ran in none of the runs"
    problems = env_problems(recorded_jobs, envs)
    assert not problems, "\n".join(problems)


def test_the_check_fails_on_an_environment_without_pandas_or_with_torch_in_vain(recorded_jobs, tmp_path):
    envs = rule_envs()
    report = next(env for env, _ in envs.values() if env.name == "report.yaml")
    spec = yaml.safe_load(report.read_text())
    spec["dependencies"] = [d for d in spec["dependencies"] if not str(d).startswith("pandas")]
    spec["dependencies"].append({"pip": ["torch==2.13.0"]})
    broken = tmp_path / "report.yaml"
    broken.write_text(yaml.safe_dump(spec))
    problems = env_problems(recorded_jobs, {rule: (broken if env == report else env, script)
                                            for rule, (env, script) in envs.items()})
    assert any(p.startswith("rule metric_tables imports ['pandas']") for p in problems)
    assert "report.yaml lists ['torch'], which none of its rules' jobs imports" in problems
