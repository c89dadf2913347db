"""The fusion methods of the workflow (config section ``methods``) and the training of the shipped models
(section ``pretrained``): each entry checked, with its recipe filled in; a bad entry raises one ValueError
naming its key."""

from __future__ import annotations

import re
from collections.abc import Mapping

from lpmnet.methods.pretrained import (CHOICES as PRETRAINED_CHOICES, KINDS as PRETRAINED_KINDS, kind_of_modalities,
                                       ships_weights)


#: A method's name: one row of every table and the desc- entity of its files.
METHOD_NAME = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
#: The keys of one entry of ``methods``.
METHOD_KEYS = ("network", "model", "training", "fusion", "checkpoint")
#: Engine settings of the ``training`` section shared by every method (not part of a recipe).
ENGINE_KEYS = ("checkpoint_every",)


def resolve_methods(methods_config, training_config, classical=()):
    """Every method of the config's ``methods`` section, checked and with its recipe filled in.

    Returns {name: {"network", "model", "training" (the full :class:`lpmnet.engine.train.TrainConfig` as a
    dict; None with ``checkpoint``), "fusion", "checkpoint"}} in the config's order. An entry's
    ``network`` (default: its name) is a registered method or the dotted name of a module defining
    METHOD; ``training`` overrides the recipe of the network's original, ``fusion`` gives settings of
    its fusion, ``checkpoint`` a file to fuse with instead of training. Anything wrong raises one
    ValueError naming the key, e.g. ``methods.mambadfuse.training.lr: ...``; so do more methods than a viewer
    page can show.
    """
    import inspect
    from dataclasses import asdict

    from lpmnet.methods import get_method
    from lpmnet.engine.train import TrainConfig
    from lpmnet.evaluation.viewer import MAX_VIEWS

    if not methods_config:
        raise ValueError("methods: list at least one fusion method")
    if 2 + len(methods_config) + len(classical) > MAX_VIEWS:
        raise ValueError(f"methods: {len(methods_config)} methods and {len(classical)} classical rules; a viewer page "
                         f"shows at most {MAX_VIEWS - 2} fusions beside the two sources (a browser's WebGL contexts)")
    resolved = {}
    for name, entry in methods_config.items():
        where = f"methods.{name}"
        if not METHOD_NAME.fullmatch(str(name)):
            raise ValueError(f"{where}: a method name is lower-case letters and digits, words joined by '-'")
        if name in classical:
            raise ValueError(f"{where}: {name} is a classical rule of fusion.classical")
        entry = dict(entry or {})
        unknown = sorted(set(entry) - set(METHOD_KEYS))
        if unknown:
            raise ValueError(f"{where}.{unknown[0]}: unknown key; an entry has {', '.join(METHOD_KEYS)}")
        network = entry.get("network", name)
        try:
            spec = get_method(network)
        except ValueError as err:
            raise ValueError(f"{where}.network: {err}") from None
        model = dict(entry.get("model") or {})
        try:
            inspect.signature(spec.build).bind(**model)
        except TypeError as err:
            raise ValueError(f"{where}.model: {err} (of {spec.name}'s network)") from None
        fusion = dict(entry.get("fusion") or {})
        unknown = sorted(set(fusion) - set(spec.settings))
        if unknown:
            raise ValueError(f"{where}.fusion.{unknown[0]}: {spec.name} has no such fusion setting; its settings: "
                             f"{', '.join(spec.settings) or 'none'}")
        checkpoint = entry.get("checkpoint")
        given = entry.get("training", {}) or {}
        for key, value in (("checkpoint", checkpoint), ("training.init", given.get("init"))):
            if value in PRETRAINED_CHOICES and not ships_weights(spec):
                raise ValueError(f"{where}.{key}: {spec.name} ships no pretrained model; give a checkpoint file")
        training = None
        if checkpoint is None:
            overrides = dict(entry.get("training") or {})
            allowed = set(TrainConfig.settings()) - {"method", "model", *ENGINE_KEYS}
            unknown = sorted(set(overrides) - allowed)
            if unknown:
                raise ValueError(f"{where}.training.{unknown[0]}: unknown training setting; settings: "
                                 f"{', '.join(sorted(allowed))}")
            engine = {k: training_config[k] for k in ENGINE_KEYS if k in training_config}
            try:
                training = asdict(TrainConfig(method=network, model=model, **engine, **overrides))
            except (TypeError, ValueError) as err:
                raise ValueError(f"{where}.training: {err}") from None
        else:
            for key in ("training", "model"):
                if entry.get(key):
                    raise ValueError(f"{where}.{key}: a method fused with a given checkpoint is not trained and "
                                     "takes its network from the checkpoint")
        resolved[name] = {"network": network, "model": model, "training": training,
                          "fusion": fusion, "checkpoint": checkpoint}
    return resolved


def resolve_pretraining(section, datasets):
    """The training settings of each model of config section ``pretrained`` (kind -> a full
    :class:`lpmnet.engine.train.TrainConfig` dict: ``training``, changed by the model's own ``training``),
    after checking its datasets, its held-out datasets and the pairs of its models; a bad entry raises
    ValueError naming the key. A held-out dataset must share no dataset and no downloaded file
    (by sha256) with the training ones: the validation would not be held out."""
    from dataclasses import asdict

    from lpmnet.engine.train import TrainConfig

    trained, held_out = section["datasets"], section.get("held_out", [])
    for key, names in (("datasets", trained), ("held_out", held_out)):
        for name in names:
            if name not in datasets:
                raise ValueError(f"pretrained.{key}: {name!r} is not a dataset of section datasets")
    both = sorted(set(trained) & set(held_out))
    if both:
        raise ValueError(f"pretrained.held_out: {both[0]} is also a training dataset (pretrained.datasets)")
    for name in held_out:
        # The validation reads the files themselves: volumes downloaded on one grid.
        if datasets[name]["source"] != "downloads" or datasets[name]["register"]:
            raise ValueError(f"pretrained.held_out: {name} must be a downloads dataset of co-registered volumes "
                             "(source: downloads, register: false)")
        for first, second in datasets[name]["pairs"]:
            try:
                kind_of_modalities(first, second)
            except ValueError as err:
                raise ValueError(f"pretrained.held_out: {name}: {err}") from None
    shared = _downloaded_files(datasets, trained) & _downloaded_files(datasets, held_out)
    if shared:
        raise ValueError(f"pretrained.held_out: the file of sha256 {sorted(shared)[0]} is also training data")
    known = {tuple(p) for name in trained for p in datasets[name]["pairs"]}
    recipes = {}
    for kind, entry in section.get("models", {}).items():
        if kind not in PRETRAINED_KINDS:
            raise ValueError(f"pretrained.models.{kind}: the shipped kinds are {', '.join(PRETRAINED_KINDS)}")
        missing = [p for p in entry["pairs"] if tuple(p) not in known]
        if missing:
            raise ValueError(f"pretrained.models.{kind}.pairs: {missing[0]} is a pair of no dataset of "
                             f"pretrained.datasets")
        try:
            recipes[kind] = asdict(TrainConfig(method="lpmnet", **{**section.get("training", {}),
                                                                   **entry.get("training", {})}))
        except (TypeError, ValueError) as err:
            raise ValueError(f"pretrained.models.{kind}.training (with pretrained.training): {err}") from None
    return recipes


def held_out_files(section, datasets) -> list[tuple]:
    """The held-out pairs of config section ``pretrained`` as the downloads list them: (dataset, subject, first,
    second, the address and sha256 of each volume as ``{"url", "sha256"}``, colour map or None), every pair of
    every subject that has both volumes."""
    from lpmnet.workflow.index import colour_pair

    pairs = []
    for name in section.get("held_out", []):
        dataset = datasets[name]
        for subject, files in dataset["files"].items():
            for first, second in dataset["pairs"]:
                if first in files and second in files:
                    colour = dataset["colour_map"] if colour_pair((first, second), dataset) else None
                    pairs.append((name, subject, first, second, files[first], files[second], colour))
    return pairs


def _downloaded_files(datasets, names) -> set:
    """The sha256 of every file that the ``downloads`` datasets among ``names`` list."""
    return {entry["sha256"].lower() for name in names for files in datasets[name].get("files", {}).values()
            for entry in files.values()}


class MethodConfigs(Mapping):
    """The resolved ``methods`` section (:func:`resolve_methods`), resolved on first use of a value.

    The names (and which entries train) are known from the config itself; resolving imports torch and
    every method's module, about 2 s that a job which reads no method's settings (conversion,
    registration, metrics) should not pay when it re-reads the workflow. The main process resolves at
    once (``resolve()``), so that a bad entry stops the run before any job.
    """

    def __init__(self, methods_config, training_config, classical=()):
        self._arguments = (methods_config, training_config, classical)
        self._names = list(methods_config or {})
        self._resolved = None

    def resolve(self):
        if self._resolved is None:
            self._resolved = resolve_methods(*self._arguments)
        return self._resolved

    def __getitem__(self, name):
        return self.resolve()[name]

    def __iter__(self):
        return iter(self._names)

    def __len__(self):
        return len(self._names)

    def trained(self):
        """The names of the entries that the workflow trains (those without a ``checkpoint``)."""
        return [name for name in self._names if not (self._arguments[0][name] or {}).get("checkpoint")]
