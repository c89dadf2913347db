"""Reading ../shared/fixtures/baselines/<method>/ (its README): config, float64 state dict, cases, key lists."""

import json

import torch


def read_keys(path):
    """(name, shape) per line of a keys.txt file, in state-dict order."""
    entries = []
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, shape = line.split("\t")
            entries.append((name, tuple(int(v) for v in shape.strip("(,)").split(",") if v.strip())))
    return entries


def read_config(folder):
    return json.loads((folder / "config.json").read_text())


def read_state_dict_float64(folder):
    sd = torch.load(folder / "state_dict.pt", weights_only=True)
    # Stored as float32, every value exact in float32: the cast loses nothing.
    return {k: v.double() if v.is_floating_point() else v for k, v in sd.items()}


def read_cases(folder, config):
    return [torch.load(folder / case["file"], weights_only=True) for case in config["cases"]]
