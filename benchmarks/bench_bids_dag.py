"""Time the BIDS index and the job graph of a dry run over a raw BIDS dataset of many subjects (default
1,000), beside the IXI benchmark's 600 subjects (benchmarks/bench_ixi_dag.py) in the same run.

Builds a raw BIDS dataset (``dataset_description.json``, ``participants.tsv``; half of the subjects with two
sessions ses-1 and ses-2, half without sessions; each unit with anat T1w and FLAIR and pet, a few units
without pet and a few with two T1w runs, so that the index chooses and leaves out; every image a tiny valid
NIfTI) and a scratch working directory holding what the first run leaves behind (every subject key's input
check and the dataset's ``input_status.tsv``, the checkpoint, newer than the images), then times

* the BIDS index alone (``lpmnet.workflow.index.bids_dataset_index``, in this process, imports excluded);
* ``snakemake -n`` of the whole workflow: the DAG phase (from Snakemake's 'Building DAG of jobs...' to its
  job table, measured as bench_ixi_dag.py measures it; the index runs before it, while the Snakefile is
  parsed) and the whole process.

The IXI benchmark (bench_ixi_dag.prepare / dry_run_seconds) runs in the same invocation, so that both
figures come from one machine and one load; its "index" is the read of its manifest
(``lpmnet.workflow.index.dataset_sources``). The dry run reads no image: only paths and file times.

    python benchmarks/bench_bids_dag.py [--subjects 1000] [--ixi-subjects 600 | --no-ixi] [--keep DIR]
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_ixi_dag  # noqa: E402
from lpmnet.workflow.checks import ABSENT, write_input_status  # noqa: E402
from lpmnet.workflow.index import bids_dataset_index, dataset_sources, with_defaults  # noqa: E402
from lpmnet.workflow.paths import Paths  # noqa: E402

DATASET = "study"
#: Every how many-th unit (subject key) lacks its pet, and has two runs of T1w.
NO_PET_EVERY, TWO_RUNS_EVERY = 50, 40


def tiny_nifti_bytes(seed=0) -> bytes:
    """A valid 4x4x4 float32 NIfTI, gzipped (every image of the dataset is a copy: the dry run reads none)."""
    import nibabel as nib
    import numpy as np

    image = nib.Nifti1Image(np.random.default_rng(seed).random((4, 4, 4), dtype=np.float32), np.eye(4))
    image.header.set_xyzt_units("mm", "sec")
    return gzip.compress(image.to_bytes(), mtime=0)


def write_bids(root: Path, n_subjects: int) -> dict:
    """The raw BIDS dataset under ``root``; returns counts (subjects, units, images, units without pet,
    units with two T1w runs)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({
        "Name": f"lpmnet benchmark dataset ({n_subjects} synthetic subjects)", "BIDSVersion": "1.10.0",
        "DatasetType": "raw"}))
    (root / "T1w.json").write_text(json.dumps({"MagneticFieldStrength": 3}))  # inherited by every T1w
    (root / "pet.json").write_text(json.dumps({"Modality": "PT", "TracerName": "FDG"}))
    participants = ["participant_id\tage\tsex"]
    data = tiny_nifti_bytes()
    counts = {"units": 0, "images": 0, "no_pet": 0, "two_runs": 0}
    for i in range(n_subjects):
        subject = f"{i + 1:04d}"
        participants.append(f"sub-{subject}\t{20 + i % 60}\t{'FM'[i % 2]}")
        for session in (("1", "2") if i % 2 == 0 else (None,)):
            counts["units"] += 1
            unit = counts["units"]
            folder = root / f"sub-{subject}" / (f"ses-{session}" if session else "")
            prefix = f"sub-{subject}" + (f"_ses-{session}" if session else "")
            names = [f"anat/{prefix}_FLAIR.nii.gz"]
            if unit % TWO_RUNS_EVERY == 0:
                names += [f"anat/{prefix}_run-1_T1w.nii.gz", f"anat/{prefix}_run-2_T1w.nii.gz"]
                counts["two_runs"] += 1
            else:
                names.append(f"anat/{prefix}_T1w.nii.gz")
            if unit % NO_PET_EVERY == 0:
                counts["no_pet"] += 1
            else:
                names.append(f"pet/{prefix}_pet.nii.gz")
            for name in names:
                path = folder / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            counts["images"] += len(names)
    (root / "participants.tsv").write_text("\n".join(participants) + "\n")
    return {"subjects": n_subjects, **counts}


def dataset_config(bids_root: Path) -> dict:
    return {"source": "bids", "root": str(bids_root), "fixed": "T1", "pairs": [["T1", "FLAIR"], ["T1", "PET"]]}


def prepare(workdir: Path, n_subjects: int, methods=None) -> tuple[Path, dict]:
    """A working directory as the first run leaves it (raw dataset in ``workdir/rawdata``); ``methods``: the
    entries of the config's ``methods`` section to keep (default: all of them). Returns it and the counts."""
    config = copy.deepcopy(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()))
    if methods is not None:
        config["methods"] = {name: config["methods"][name] for name in methods}
    bids_root = workdir / "rawdata"
    config["datasets"] = {DATASET: dataset_config(bids_root)}
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    counts = write_bids(bids_root, n_subjects)
    time.sleep(0.05)
    # Every subject key's sources checked (the images found "ok", a modality a session lacks "absent", as
    # scripts/check_inputs.py writes them), then the checkpoint input_status: newer than what they read.
    sources = dataset_sources(DATASET, with_defaults(dataset_config(bids_root)))
    bad = sorted({s.kind for s in sources} - {"nifti", ABSENT})
    if bad:
        raise SystemExit(f"unexpected source kinds {bad} in the generated dataset")
    rows = {}
    for s in sorted(sources, key=lambda s: (s.subject, s.modality)):
        rows.setdefault(s.subject, []).append({"subject": s.subject, "modality": s.modality,
                                               "status": "ok" if s.kind == "nifti" else ABSENT,
                                               "problem": s.problem})
    paths = Paths(str(workdir / "results"))
    for subject, subject_rows in rows.items():
        write_input_status(paths.input_check(DATASET, subject), subject_rows)
    time.sleep(0.05)
    write_input_status(paths.input_status(DATASET), [r for subject_rows in rows.values() for r in subject_rows])
    counts["subject_keys"] = len(rows)
    return workdir, counts


def index_seconds(cfg: dict) -> tuple[float, object]:
    """Seconds of the BIDS index of a dataset entry (as the workflow calls it), and the index."""
    start = time.perf_counter()
    index = bids_dataset_index(with_defaults(cfg))
    return time.perf_counter() - start, index


def run_bids(workdir: Path, n_subjects: int, methods=None) -> dict:
    workdir, counts = prepare(workdir, n_subjects, methods)
    index_s, index = index_seconds(dataset_config(workdir / "rawdata"))
    kinds = {}
    for issue in index.issues:
        kinds[issue.kind] = kinds.get(issue.kind, 0) + 1
    dag, total, jobs = bench_ixi_dag.dry_run_seconds(workdir)
    return {"dataset": "BIDS", **counts, "issues": kinds, "jobs": jobs, "index_s": index_s, "dag_s": dag,
            "total_s": total}


def run_ixi(workdir: Path, n_subjects: int, methods=None) -> dict:
    bench_ixi_dag.prepare(workdir, n_subjects, methods)
    cfg = yaml.safe_load((workdir / "config" / "config.yaml").read_text())["datasets"]["ixi"]
    start = time.perf_counter()
    sources = dataset_sources("ixi", with_defaults(cfg), results=str(workdir / "results"))
    index_s = time.perf_counter() - start
    dag, total, jobs = bench_ixi_dag.dry_run_seconds(workdir)
    return {"dataset": "IXI", "subjects": n_subjects, "subject_keys": len({s.subject for s in sources}),
            "jobs": jobs, "index_s": index_s, "dag_s": dag, "total_s": total}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=1000, help="BIDS subjects (half of them with 2 sessions)")
    parser.add_argument("--ixi-subjects", type=int, default=600, help="subjects of the IXI benchmark beside it")
    parser.add_argument("--no-ixi", action="store_true", help="time the BIDS dataset only")
    parser.add_argument("--keep", type=Path, help="prepare the working directories here (bids/, ixi/) and keep them")
    parser.add_argument("--methods", help="comma-separated entries of the config's methods to keep (default: all)")
    args = parser.parse_args()
    methods = args.methods.split(",") if args.methods else None
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        base = args.keep or Path(tmp)
        results.append(run_bids(base / "bids", args.subjects, methods))
        if not args.no_ixi:
            results.append(run_ixi(base / "ixi", args.ixi_subjects, methods))

    bids = results[0]
    print(f"BIDS dataset: {bids['subjects']} subjects, {bids['subject_keys']} subject keys (sessions), "
          f"{bids['images']} images; {bids['no_pet']} units without pet, {bids['two_runs']} with two T1w runs; "
          f"index issues {bids['issues']}")
    print("index s: the dataset's index in one process (BIDS: bids2table; IXI: its manifest read), imports "
          "excluded; graph s: 'Building DAG of jobs' to the job table of snakemake -n; dry-run process s: the "
          "whole snakemake -n process (start-up, parsing with the index, graph, listing)")
    header = ("dataset", "subjects", "subject keys", "jobs", "index s", "graph s", "dry-run process s")
    rows = [(r["dataset"], str(r["subjects"]), str(r["subject_keys"]), str(r["jobs"].get("total", "?")),
             f"{r['index_s']:.2f}", f"{r['dag_s']:.2f}", f"{r['total_s']:.2f}") for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    for row in (header, *rows):
        print("  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))))
    for r in results:
        print(f"{r['dataset']} jobs per rule: {({k: v for k, v in r['jobs'].items() if k != 'total'})}")
    return results


if __name__ == "__main__":
    main()
