"""The public volumes of config/pretrained.yaml served from ../shared/data, which holds the same files: each
downloads dataset's addresses rewritten to a local server by the sha256 that ../shared/data/MANIFEST.tsv records
for every file, so that a run fetches, checks and uses exactly the bytes the public addresses serve."""

import copy
import csv
from pathlib import Path


def manifest_files(shared_data: Path) -> dict:
    """sha256 -> the file's path relative to ../shared/data (``shared_data``), from its MANIFEST.tsv."""
    with open(shared_data / "MANIFEST.tsv", newline="") as f:
        return {row["sha256"]: row["file"] for row in csv.DictReader(f, delimiter="\t")}


def mirrored(datasets: dict, base_url: str, shared_data: Path) -> dict:
    """``datasets`` with every downloads address pointing at ``base_url``, a server of ``shared_data``."""
    files = manifest_files(shared_data)
    datasets = copy.deepcopy(datasets)
    for cfg in datasets.values():
        for volumes in cfg.get("files", {}).values():
            for entry in volumes.values():
                entry["url"] = f"{base_url}/{files[entry['sha256']]}"
    return datasets
