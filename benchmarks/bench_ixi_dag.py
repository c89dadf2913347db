"""Time the job graph of a dry run over an IXI dataset of many subjects (default 600).

Builds a scratch working directory holding what the first run leaves behind (downloaded archives,
extracted folders, the manifest with N subjects x T1/T2/PD, every subject's input check, in that age
order), then times
``snakemake -n`` of the whole workflow: the DAG phase (from Snakemake's 'Building DAG of jobs...' to its
job table) and the whole process. The graph must build in under 10 s for 600 subjects.

    python benchmarks/bench_ixi_dag.py [--subjects 600] [--keep DIR]
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lpmnet.volumes.sources import write_manifest  # noqa: E402
from lpmnet.workflow.checks import write_input_status  # noqa: E402
from lpmnet.workflow.paths import Paths  # noqa: E402

SITES = ("Guys", "HH", "IOP")


def prepare(workdir: Path, n_subjects: int, methods=None) -> Path:
    """A working directory as the first run leaves it; ``methods``: the entries of the config's ``methods``
    section to keep (default: all of them)."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config = copy.deepcopy(config)
    if methods is not None:
        config["methods"] = {name: config["methods"][name] for name in methods}
    config["datasets"] = {"ixi": {
        "source": "ixi", "pairs": [["T2", "T1"], ["T2", "PD"]], "modalities": ["T1", "T2", "PD"],
        "urls": {m: f"http://127.0.0.1:9/IXI-{m}.tar" for m in ("T1", "T2", "PD")}}}
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    results = workdir / "results" / "ixi"
    rows = []
    for m in ("T1", "T2", "PD"):
        tar = results / "downloads" / f"IXI-{m}.tar"
        tar.parent.mkdir(parents=True, exist_ok=True)
        tar.write_bytes(b"")
    time.sleep(0.05)
    for m in ("T1", "T2", "PD"):
        (results / "sourcedata" / f"IXI-{m}").mkdir(parents=True, exist_ok=True)
    for i in range(n_subjects):
        ixi_id = f"IXI{i + 2:03d}-{SITES[i % 3]}-{1000 + i:04d}"
        for m in ("T1", "T2", "PD"):
            rows.append((ixi_id.replace("-", ""), m, str(results / "sourcedata" / f"IXI-{m}" / f"{ixi_id}-{m}.nii.gz")))
    time.sleep(0.05)
    write_manifest(results / "manifest.tsv", "ixi", rows, checksums=False)
    time.sleep(0.05)
    # Every subject's sources checked and found good (the checkpoint input_status done).
    subjects = sorted({r[0] for r in rows})
    for subject in subjects:
        write_input_status(workdir / Paths().input_check("ixi", subject),
                           [{"subject": subject, "modality": m, "status": "ok", "problem": ""} for m in ("T1", "T2", "PD")])
    time.sleep(0.05)
    write_input_status(results / "input_status.tsv",
                       [{"subject": s, "modality": m, "status": "ok", "problem": ""} for s in subjects
                        for m in ("T1", "T2", "PD")])
    return workdir


def dry_run_seconds(workdir: Path) -> tuple[float, float, dict]:
    """(seconds from "Building DAG of jobs..." to the job table, whole process seconds, jobs per rule)."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
                                "--directory", str(workdir), "-n", "--quiet", "rules", "--cores", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines, dag_start, dag_end = [], None, None
    for line in process.stdout:
        lines.append(line)
        if dag_start is None and line.startswith("Building DAG of jobs"):
            dag_start = time.perf_counter()
        elif dag_end is None and dag_start is not None and line.startswith("Job stats"):
            dag_end = time.perf_counter()
    total = time.perf_counter() - start
    output = "".join(lines)
    if process.wait() != 0 or dag_end is None:
        raise SystemExit(f"dry run failed:\n{output[-4000:]}")
    jobs = {k: int(v) for k, v in re.findall(r"^(\w+)\s+(\d+)\s*$", output.split("Reasons:")[0], flags=re.M)}
    return dag_end - dag_start, total, jobs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=600)
    parser.add_argument("--keep", type=Path, help="prepare the working directory here and keep it")
    parser.add_argument("--methods", help="comma-separated entries of the config's methods to keep (default: all)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = prepare(args.keep or Path(tmp), args.subjects, args.methods.split(",") if args.methods else None)
        dag, total, jobs = dry_run_seconds(workdir)
    print(f"IXI dry run, {args.subjects} subjects: {jobs.get('total', '?')} jobs; DAG built in {dag:.2f} s, "
          f"whole snakemake -n process {total:.2f} s (start-up, parsing and the dry-run listing included)")
    print({k: v for k, v in jobs.items() if k != "total"})
    return dag

if __name__ == "__main__":
    main()
