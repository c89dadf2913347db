"""Job-side checks of a subject's inputs: each source read as its conversion reads it, the status rows of
a subject and of a dataset (``input_status.tsv``), and which subjects a pair cannot use."""

from __future__ import annotations

from lpmnet.errors import InputError


def convert_source(kind, path, problem="", out_path=None):
    """Read one source as the conversion does, refusing bad input with an InputError naming the file.

    ``kind`` is a :class:`Source` kind; a "missing" source raises its ``problem``. With ``out_path``
    the checked volume is written there as NIfTI (DICOM series with a scanner-space header); without
    it the source is only checked, which is how a subject's inputs are vetted before anything else
    runs (:func:`check_subject_sources`).
    """
    from lpmnet.volumes.io import load_volume, save_volume

    if kind in ("missing", "absent"):
        where, _, reason = problem.partition(": ")
        raise InputError(where, reason)
    if kind == "dicom":
        from lpmnet.volumes.dicom import dicom_series_to_nifti, read_dicom_series

        if out_path is None:
            read_dicom_series(path)
        else:
            dicom_series_to_nifti(path, out_path)
        return
    volume = load_volume(path)  # refuses missing, unreadable, 4D, NaN and constant volumes
    if out_path is not None:
        save_volume(out_path, volume.data, volume.affine, header=volume.header)


#: Status of a source that a BIDS session or a downloads subject does not have (see :func:`check_subject_sources`).
ABSENT = "absent"
#: Columns of a subject's input check (``sub-<id>_inputs.tsv``) and of a dataset's ``input_status.tsv``.
INPUT_STATUS_COLUMNS = ("subject", "modality", "status", "problem")


def check_subject_sources(subject, sources):
    """Status rows of one subject's sources: ``sources`` maps modality -> (kind, path, problem).

    A source that its conversion would refuse gets status "failed" and the conversion's one-line
    message; nothing is raised, so that the other subjects' results can still be tabulated. An "absent"
    source (a BIDS session or a downloads subject without that modality) gets status "absent": the pairs that need it
    leave the subject out, and the run does not fail for it.
    """
    from lpmnet.errors import LPMNetError

    rows = []
    for modality, (kind, path, problem) in sorted(sources.items()):
        if kind == "absent":
            rows.append({"subject": subject, "modality": modality, "status": ABSENT, "problem": " ".join(problem.split())})
            continue
        try:
            convert_source(kind, path, problem)
            rows.append({"subject": subject, "modality": modality, "status": "ok", "problem": ""})
        except LPMNetError as err:
            rows.append({"subject": subject, "modality": modality, "status": "failed",
                         "problem": " ".join(str(err).split())})
    return rows


def write_input_status(path, rows):
    from lpmnet.volumes.io import atomic_write_text

    lines = ["\t".join(INPUT_STATUS_COLUMNS)]
    lines += ["\t".join(str(row[c]) for c in INPUT_STATUS_COLUMNS) for row in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")


def read_input_status(path):
    """Rows of :func:`write_input_status` (one subject's check or a whole dataset's)."""
    from lpmnet.volumes.io import read_tsv_rows

    return read_tsv_rows(path, INPUT_STATUS_COLUMNS)


def failed_inputs(status_rows, statuses=("failed", ABSENT)):
    """{subject: {modality: problem}} of the sources whose check gave one of ``statuses``: by default every
    source a pair cannot use; ("failed",) the ones the run must report as errors."""
    failed = {}
    for row in status_rows:
        if row["status"] in statuses:
            failed.setdefault(row["subject"], {})[row["modality"]] = row["problem"]
    return failed


def pair_failures(status_rows, split, modalities):
    """Rows (subject, split, modality, problem) of the split's subjects that a pair of ``modalities``
    (with the fixed one) cannot use, because one of those sources failed its check."""
    failures = failed_inputs(status_rows)
    return [{"subject": subject, "split": split[subject], "modality": modality, "problem": problem}
            for subject in sorted(split) for modality, problem in sorted(failures.get(subject, {}).items())
            if modality in modalities]
