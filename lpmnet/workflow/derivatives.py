"""A dataset's results as a BIDS derivatives dataset (BIDS 1.10, "Derivatives" and "BIDS URI").

* :func:`describe_derivatives` is its ``dataset_description.json``: ``DatasetType`` derivative, ``GeneratedBy``
  the project (name, version, the fusion methods) and each method, ``SourceDatasets`` and, where the inputs
  lie outside the results, a ``DatasetLinks`` entry ``source`` that the sidecars' BIDS URIs name.
* :func:`bidsignore_lines` lists what the specification has no name for: the pair folders (fused volumes,
  tables, models, QC), logs, benchmarks, the subject checks and the dataset's own tables, the registration
  transforms, reports and pictures, and the files of a modality that BIDS has no suffix for (fMRIPrep
  lists its figures and transforms the same way).
* :func:`write_volume_sidecar` writes a subject-level volume's JSON sidecar with the derivative fields that
  apply (``Description``, ``Sources``, ``SpatialReference``, ``Resolution``, ``SkullStripped``) beside the
  project's own keys; :func:`add_job_derivative_fields` adds them to a fused volume's sidecar.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lpmnet.workflow.paths import is_bids_suffix

BIDS_VERSION = "1.10.0"
#: The link name of the input dataset in ``DatasetLinks`` (BIDS URIs ``bids:source:<path>``).
SOURCE_LINK = "source"
#: Outputs the specification has no name for, as .bidsignore patterns (gitignore syntax, but a folder without
#: its trailing slash: the BIDS validator matches "checks", not "checks/", to the folder itself).
NON_BIDS = ("logs", "benchmarks", "checks", "downloads", "manifest.tsv", "split.tsv", "input_status.tsv",
            "*_xfm.mat", "*_registration.json", "*_regqc.png")


def bids_uri(path, dataset_root, source_root=None):
    """The BIDS URI of ``path``: ``bids::<relative path>`` inside the derivatives dataset, ``bids:source:<...>``
    inside the input dataset ``source_root``; None for a file outside both (a user's table may list any)."""
    path = Path(os.path.abspath(path))
    for name, root in (("", dataset_root), (SOURCE_LINK, source_root)):
        if root is None:
            continue
        root = Path(os.path.abspath(root))
        if path.is_relative_to(root):
            return f"bids:{name}:{path.relative_to(root).as_posix()}"
    return None


def describe_derivatives(name, *, version, methods, source_description=None, source_root=None):
    """The ``dataset_description.json`` of dataset ``name``'s results.

    ``methods``: {method: network} of the fusion methods (a classical rule's network is "classical");
    ``source_description``: the input BIDS dataset's own description (its Name, DOI and version are cited);
    ``source_root``: the folder the inputs lie in, linked as ``source`` when it lies outside the results.
    """
    pipeline = {"Name": "lpmnet", "Version": version,
                "Description": f"3D multimodal image fusion; fusion methods: {', '.join(methods)}"}
    generated = [pipeline] + [{"Name": method, "Version": version,
                               "Description": f"fusion method {method} ({network}) of the lpmnet pipeline"}
                              for method, network in methods.items()]
    description = {"Name": f"lpmnet fusion of {name}", "BIDSVersion": BIDS_VERSION, "DatasetType": "derivative",
                   "GeneratedBy": generated}
    if source_root is not None:
        source = {"URL": Path(os.path.abspath(source_root)).as_uri()}
        for key in ("DOI", "Version"):
            if (source_description or {}).get(key):
                source[key] = source_description[key]
        description["SourceDatasets"] = [source]
        description["DatasetLinks"] = {SOURCE_LINK: source["URL"]}
    return description


def bidsignore_lines(pairs, modalities):
    """The ``.bidsignore`` of a dataset's results: :data:`NON_BIDS`, the folders of the modality ``pairs`` on
    every grid (``T1-FLAIR`` and ``T1-FLAIR_res-*``: results of both grids coexist, and switching the grid
    changes nothing here) and the files of each modality whose name is no BIDS suffix."""
    from lpmnet.workflow.index import pair_label

    lines = list(NON_BIDS)
    for pair in pairs:
        folder = pair_label(pair, {"target_shape": []})
        lines += [folder, f"{folder}_res-*"]
    for modality in modalities:
        if not is_bids_suffix(modality):
            lines += [f"*_{modality}.nii.gz", f"*_{modality}.json"]
    return lines


def write_derivatives_description(description_path, bidsignore_path, description, ignore_lines):
    from lpmnet.volumes.io import atomic_write_json, atomic_write_text

    atomic_write_json(description_path, description)
    atomic_write_text(bidsignore_path, "\n".join(ignore_lines) + "\n")


def derivative_fields(dataset_root, description, sources, *, source_root=None, space_reference=None,
                      resolution=None, skull_stripped=None):
    """The BIDS derivative fields of a volume in ``dataset_root``: ``sources`` and ``space_reference`` are
    paths, written as BIDS URIs (a source outside every dataset is left out of ``Sources``)."""
    uris = [bids_uri(p, dataset_root, source_root) for p in sources]
    fields = {"Description": description, "Sources": [u for u in uris if u]}
    if space_reference is not None:
        fields["SpatialReference"] = bids_uri(space_reference, dataset_root, source_root)
    if resolution is not None:
        fields["Resolution"] = resolution
    if skull_stripped is not None:
        fields["SkullStripped"] = bool(skull_stripped)
    return fields


def write_volume_sidecar(image, dataset_root, description, sources, **fields):
    """Write the JSON sidecar of a subject-level volume: :func:`derivative_fields` plus the keyword
    arguments that are not derivative fields (the project's own keys, e.g. ``SourceMetadata``)."""
    from lpmnet.volumes.io import atomic_write_json, sidecar_path

    derivative = {k: fields.pop(k) for k in ("source_root", "space_reference", "resolution", "skull_stripped")
                  if k in fields}
    sidecar = {**derivative_fields(dataset_root, description, sources, **derivative), **fields}
    return atomic_write_json(sidecar_path(image), sidecar)


def add_job_derivative_fields(image, bids_params, sources, space_reference):
    """Put the derivative fields first in the sidecar a job's method wrote (a fused volume's, whose
    ``Description`` it keeps), with what the job's ``bids`` parameter says (see :func:`write_job_sidecar`)."""
    from lpmnet.volumes.io import atomic_write_json, sidecar_path

    path = sidecar_path(image)
    own = json.loads(path.read_text(encoding="utf-8"))
    fields = derivative_fields(bids_params["dataset_root"], own.pop("Description", ""), sources,
                               source_root=bids_params["source_root"], space_reference=space_reference,
                               skull_stripped=bids_params["skull_stripped"])
    return atomic_write_json(path, {**fields, **own})


def write_job_sidecar(image, bids_params, description, sources, **fields):
    """:func:`write_volume_sidecar` with what a workflow job's ``bids`` parameter says (the rules'
    ``derivative_params``): the two dataset roots and ``SkullStripped``: what ``fields`` gives (a BIDS
    source's own sidecar), else what the sidecar of the first source says (so a volume keeps what its
    source's conversion recorded), else the dataset's ``skull_stripped``. ``SourceMetadata`` (a BIDS
    source's sidecar fields) is carried from the first source's sidecar the same way."""
    recorded = _recorded_sidecar(sources[0]) if sources else {}
    if "skull_stripped" not in fields:
        fields["skull_stripped"] = recorded.get("SkullStripped", bids_params["skull_stripped"])
    if "SourceMetadata" not in fields and "SourceMetadata" in recorded:
        fields["SourceMetadata"] = recorded["SourceMetadata"]
    return write_volume_sidecar(image, bids_params["dataset_root"], description, sources,
                                source_root=bids_params["source_root"], **fields)


def _recorded_sidecar(image):
    """The sidecar of a NIfTI ``image`` ({} for a DICOM folder or a volume without one)."""
    from lpmnet.volumes.io import sidecar_path

    path = sidecar_path(image)
    if not str(image).endswith((".nii", ".nii.gz")) or not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def source_metadata_summary(images):
    """{field: sorted distinct values} of the ``SourceMetadata`` in the sidecars of ``images`` (the volumes a
    model was trained on): what a model card says of its data, e.g. {"TracerName": ["FDG"]}."""
    values = {}
    for image in images:
        for key, value in _recorded_sidecar(image).get("SourceMetadata", {}).items():
            values.setdefault(key, set()).add(json.dumps(value))
    return {key: [json.loads(v) for v in sorted(found)] for key, found in sorted(values.items())}


def resolution_of(space):
    """The ``Resolution`` of a space label with a grid entity ("T1_res-128x192x192"), else None."""
    _, sep, shape = space.partition("_res-")
    if not sep:
        return None
    return (f"{shape} voxels (D x H x W): the fixed modality's volume resized to this shape, the paper's "
            f"preprocessing (skimage resize, linear, anti-aliased), field of view kept")
