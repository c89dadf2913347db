"""Running the workflow as users run it, for the workflow and SLURM tests: real snakemake processes in
scratch working directories, with configurations derived from the shipped one."""

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]
DEFAULT_CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())

def quick_lpmnet(config, checkpoint_every=1, **training):
    """``config`` with LPM-Net as its one method, trained for 2 iterations on 16^3 patches (or ``training``),
    and the classical mean and max (the shipped config's other classical rules only lengthen the runs)."""
    config["methods"] = {"lpmnet": {"training": {"iterations": 2, "patch_size": [16, 16, 16], **training}}}
    config["fusion"]["classical"] = ["mean", "max"]
    config["training"]["checkpoint_every"] = checkpoint_every
    return config


def tiny_config():
    """The demo with 3 subjects, T1 + FLAIR, and three methods: LPM-Net and a small MambaDFuse trained 2
    iterations, the shipped LPM-Net as it is."""
    config = quick_lpmnet(copy.deepcopy(DEFAULT_CONFIG))
    demo = config["datasets"]["demo"]
    demo.update(subjects=3, modalities=["T1", "FLAIR"], pairs=[["T1", "FLAIR"]])
    config["methods"]["lpmnet-pretrained"] = {"network": "lpmnet", "checkpoint": "pretrained"}
    config["methods"]["mambadfuse"] = {"model": {"embed_dim": 8},
                                       "training": {"iterations": 2, "batch_size": 2, "patch_size": [16, 16]}}
    config["methods"]["lpmnet"]["training"]["keep_every"] = 1  # a learning curve of 2 checkpoints
    return config


def workdir_with(path, config):
    (path / "config").mkdir(parents=True, exist_ok=True)
    (path / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake(workdir, *args, check=True, env=None):
    """Run snakemake in ``workdir`` (``env``: variables added to this process's environment)."""
    result = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), *args], capture_output=True, text=True,
                            env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def planned_jobs(workdir):
    """Rule name -> job count of a dry run (Snakemake's "Job stats" table)."""
    out = snakemake(workdir, "-n", "--cores", "1").stdout
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:")[1].split("Reasons:")[0]
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)\s*$", table, flags=re.M))
    jobs.pop("total", None)
    return {rule: int(n) for rule, n in jobs.items()}


def gpu_rules():
    """Names of the rules whose resources ask for a GPU (gpu=gpu_resources(...)), read from rules/*.smk."""
    rules = set()
    for path in sorted((REPO / "rules").glob("*.smk")):
        for block in re.split(r"^(?=(?:rule|checkpoint) )", path.read_text(), flags=re.M):
            name = re.match(r"(?:rule|checkpoint) (\w+):", block)
            if name and "gpu=gpu_resources(" in block:
                rules.add(name.group(1))
    return rules
