"""The workflow submitted to a real SLURM cluster: tests/slurm/start_cluster.sh, profile tests/slurm/profile.

Needs root, apt and a running test cluster, so it only runs with LPMNET_SLURM_TESTS=1 (set by .ci/run,
which starts and stops the cluster). One tiny demo config (3 subjects, T1 + FLAIR, LPM-Net trained 2 iterations,
classical [mean]) with training.device and fusion.device set to cuda, so that the GPU rules request a GPU; the
test cluster's GPU is a stand-in, so the jobs fall back to the CPU with a warning in their log.

The SLURM run is started, its train job is cancelled with scancel mid-run, and the same command is run
again after `snakemake --unlock`: it must finish without redoing the jobs that had completed. SLURM's own
records are read from the jobcomp file (JobCompType=jobcomp/filetxt) and `scontrol show job` (comment,
GPU request); which rules a SLURM job ran is read from its kept log (group jobs run several rules).
"""

import os
import re
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from workflow_runs import REPO, SNAKEMAKE, gpu_rules, planned_jobs, tiny_config, workdir_with

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("LPMNET_SLURM_TESTS") != "1",
                       reason="needs a local SLURM cluster (tests/slurm/start_cluster.sh); set LPMNET_SLURM_TESTS=1"),
]

STATE = Path(os.environ.get("LPMNET_SLURM_STATE", "/tmp/lpmnet-slurm"))
JOBCOMP = STATE / "jobcomp.txt"
PROFILE = REPO / "tests" / "slurm" / "profile"
GPU_RULES = gpu_rules()
PREPROCESSING = {"convert", "n4_bias_correction", "register", "normalize"}


def slurm_config():
    config = tiny_config()
    config["methods"] = {"lpmnet": config["methods"]["lpmnet"]}  # one train job, which the test cancels
    config["training"]["device"] = "cuda"
    config["fusion"]["device"] = "cuda"
    config["fusion"]["classical"] = ["mean"]
    return config


def jobcomp_records():
    """SLURM job id -> the fields of its job-completion record."""
    records = {}
    if JOBCOMP.exists():
        for line in JOBCOMP.read_text().splitlines():
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            if "JobId" in fields:
                records[int(fields["JobId"])] = fields
    return records


def scontrol_job(job_id):
    out = subprocess.run(["scontrol", "show", "job", "-d", "-o", str(job_id)], capture_output=True, text=True)
    return out.stdout


def slurm_jobs_of(workdir, since):
    """SLURM job id -> {rules, partition, state, comment, gpu} for the jobs after job id `since`."""
    records = jobcomp_records()
    jobs = {}
    for log in (workdir / ".snakemake" / "slurm_logs").rglob("*.log"):
        if not log.stem.isdigit() or int(log.stem) <= since:
            continue
        job_id = int(log.stem)
        info = scontrol_job(job_id)
        comment = re.search(r"Comment=(\S*)", info)
        text = log.read_text(errors="replace")
        # "rule x:" ("checkpoint x:") is printed when the job is planned inside the SLURM job,
        # "localrule x:" ("localcheckpoint x:") when it runs
        scheduled = sorted(set(re.findall(r"^(?:rule|checkpoint) (\w+):", text, flags=re.M)))
        rules = re.findall(r"^local(?:rule|checkpoint) (\w+):", text, flags=re.M)
        tres = " ".join(re.findall(r"(?:TresPerJob|TresPerNode|JOB_GRES|TRES)=(\S*)", info))
        if not scheduled and comment:  # cancelled before it printed anything: the executor's comment
            scheduled = re.findall(r"^rule_(\w+?)(?:_wildcards_|$)", comment.group(1))
        record = records.get(job_id, {})
        jobs[job_id] = {
            "rules": rules,
            "scheduled": scheduled,
            "partition": record.get("Partition"),
            "state": record.get("JobState"),
            "comment": comment.group(1) if comment else None,
            "gpu": bool(re.search(r"gpu[:=]1", tres)),
        }
    return jobs


def last_job_id():
    return max(jobcomp_records(), default=0)


def run_slurm(workdir, *args):
    return subprocess.Popen([*SNAKEMAKE, "--directory", str(workdir), "--profile", str(PROFILE), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def running_job_with_comment(prefix, since):
    out = subprocess.run(["squeue", "-h", "--states=all", "-o", "%i|%k|%T"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        job_id, comment, state = line.split("|")
        if int(job_id) > since and comment.startswith(prefix) and state == "RUNNING":
            return int(job_id)
    return None


def result_files(workdir):
    base = workdir / "results"
    return {p.relative_to(base): p.stat().st_mtime_ns for p in base.rglob("*")
            if p.is_file() and "logs" not in p.parts and "benchmarks" not in p.parts}


def local_rules():
    """The rules that the workflow's ``localrules:`` blocks keep in the main process."""
    names = set()
    for smk in (REPO / "rules").glob("*.smk"):
        for block in re.findall(r"^localrules:\n((?:[ \t]+\w+,?\n)+)", smk.read_text(), flags=re.M):
            names |= set(re.findall(r"\w+", block))
    return names


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    workdir = workdir_with(tmp_path_factory.mktemp("local"), slurm_config())
    subprocess.run([*SNAKEMAKE, "--directory", str(workdir), "--cores", "2"], check=True, capture_output=True)
    return workdir


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory):
    """The SLURM run, its train job cancelled mid-run, then resumed: (workdir, jobs of run 1, of run 2, ...)."""
    assert subprocess.run(["sinfo", "-h"], capture_output=True).returncode == 0, "no SLURM cluster: start_cluster.sh"
    workdir = workdir_with(tmp_path_factory.mktemp("slurm"), slurm_config())
    # The sources are checked first (the checkpoint input_status); then the whole job graph is known.
    subprocess.run([*SNAKEMAKE, "--directory", str(workdir), "--cores", "2", "results/demo/input_status.tsv"],
                   check=True, capture_output=True)
    expected = planned_jobs(workdir)
    start = last_job_id()

    first = run_slurm(workdir, "--retries", "0")  # no retry: the cancelled job fails the run
    cancelled = None
    deadline = time.monotonic() + 400
    while first.poll() is None and time.monotonic() < deadline:
        if cancelled is None:
            cancelled = running_job_with_comment("rule_train", start)
            if cancelled is not None:
                subprocess.run(["scancel", str(cancelled)], check=True)
        time.sleep(0.3)
    if first.poll() is None:
        first.kill()
    out1 = first.communicate()[0]
    assert cancelled is not None, f"no running train job was seen:\n{out1[-4000:]}"
    assert first.returncode != 0, out1[-4000:]
    time.sleep(2)  # the job-completion record of the cancelled job
    jobs1 = slurm_jobs_of(workdir, start)
    files1 = result_files(workdir)
    middle = last_job_id()

    subprocess.run([*SNAKEMAKE, "--directory", str(workdir), "--unlock"], check=True, capture_output=True)
    second = run_slurm(workdir)
    out2 = second.communicate(timeout=400)[0]
    assert second.returncode == 0, out2[-4000:]
    jobs2 = slurm_jobs_of(workdir, middle)
    return workdir, expected, cancelled, jobs1, files1, jobs2


def test_every_rule_ran_as_a_slurm_job_in_its_partition(slurm_run):
    workdir, expected, cancelled, jobs1, _, jobs2 = slurm_run
    jobs = {**jobs1, **jobs2}
    completed = [job for job in jobs.values() if job["state"] == "COMPLETED"]
    ran = {}
    for job in completed:
        for rule in job["rules"]:
            ran[rule] = ran.get(rule, 0) + 1
    # the target rule and the local rules (localrules: in rules/*.smk) run in the main process
    expected = {rule: n for rule, n in expected.items() if rule != "all" and rule not in local_rules()}
    assert ran == expected
    for job_id, job in jobs.items():
        assert job["scheduled"], f"SLURM job {job_id} ran no rule"
        if set(job["scheduled"]) & GPU_RULES:
            assert len(job["scheduled"]) == 1 and job["partition"] == "gpu" and job["gpu"], (job_id, job)
        else:
            assert job["partition"] == "cpu" and not job["gpu"], (job_id, job)
    # the per-subject chain runs grouped: one SLURM job for the 3 subjects (group-components)
    groups = [job for job in completed if set(job["rules"]) & PREPROCESSING]
    assert len(groups) == 1 and set(groups[0]["rules"]) == {"convert", "register", "normalize"}
    assert groups[0]["comment"].startswith("rule_subject_preprocessing")
    assert jobs1[cancelled]["state"] == "CANCELLED" and jobs1[cancelled]["scheduled"] == ["train"]
    # the GPU job found no CUDA on the test node and said so
    log = (workdir / "results" / "demo" / "logs" / "train" / "T1-FLAIR" / "lpmnet.log").read_text()
    assert "no GPU is visible" in log


def test_resuming_after_scancel_reruns_only_what_was_not_done(slurm_run):
    workdir, _, _, jobs1, files1, jobs2 = slurm_run
    done1 = {rule for job in jobs1.values() if job["state"] == "COMPLETED" for rule in job["rules"]}
    rerun = [rule for job in jobs2.values() for rule in job["scheduled"]]
    assert {"split", "convert", "register", "normalize"} <= done1  # the data and checks ran before, locally
    assert not done1 & set(rerun) - {"metrics"}, (done1, rerun)  # metrics: the lpmnet one was still missing
    assert rerun.count("metrics") == 1 and "train" in rerun and "fuse" in rerun
    files2 = result_files(workdir)
    assert {f: files2.get(f) for f in files1} == files1  # nothing that existed was rewritten
    assert planned_jobs(workdir) == {}


def test_slurm_metrics_equal_a_local_run(slurm_run, local_run):
    workdir = slurm_run[0]
    for name in ("metrics.tsv", "metrics_long.tsv"):
        cluster = pd.read_csv(workdir / "results" / "demo" / "T1-FLAIR" / name, sep="\t")
        local = pd.read_csv(local_run / "results" / "demo" / "T1-FLAIR" / name, sep="\t")
        pd.testing.assert_frame_equal(cluster, local, check_exact=False, rtol=0, atol=1e-6)
