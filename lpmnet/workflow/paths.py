"""Every file the workflow writes, named in one place: the rules' ``output:``/``input:``/``log:`` templates and
the paths that input functions compute are the same functions of :class:`Paths`.

Each argument defaults to its Snakemake wildcard, so that ``paths.normalized()`` is the rule's template
(``results/{dataset}/{scan_dir}/sub-{subject}_space-{space}_desc-norm_{modality}.nii.gz``) and
``paths.normalized("demo", "01", "T1", "FLAIR")`` one of its files
(``results/demo/sub-01/anat/sub-01_space-T1_desc-norm_FLAIR.nii.gz``). A rule whose wildcard has another
name passes it as a template: ``paths.normalized(space="{fixed}")``.

A dataset's results are a BIDS derivatives dataset (``lpmnet.workflow.derivatives`` writes its description):

* the workflow's **subject** is a BIDS subject, or one session of it: the key ``01`` or ``01_ses-2``
  (:func:`unit_key`), whose files lie in ``sub-01/ses-2/<datatype>/`` and begin with ``sub-01_ses-2_``;
* a modality's files end in its BIDS suffix (:func:`file_suffix`: T1 -> T1w, PET -> pet, FLAIR stays), so the
  ``{modality}`` wildcard of those templates holds the suffix; a modality that BIDS has no suffix for keeps
  its name and is listed in the dataset's ``.bidsignore``;
* tables, models, logs and QC lie in folders that the ``.bidsignore`` lists.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: The folder every output lies under, relative to the working directory.
RESULTS = "results"

#: Modality names that BIDS spells otherwise; the files of such a modality carry the BIDS suffix.
BIDS_SUFFIX = {"T1": "T1w", "T2": "T2w", "PD": "PDw", "T2star": "T2starw", "PET": "pet"}
#: The BIDS suffixes of the volumes this workflow fuses, by datatype (the folder a file lies in).
DATATYPE_SUFFIXES = {"anat": ("T1w", "T2w", "PDw", "T2starw", "FLAIR", "angio"), "pet": ("pet",)}
#: A subject key (the ``subject`` wildcard): a BIDS subject label, and the session's where there are sessions.
UNIT = re.compile(r"^(?P<subject>[A-Za-z0-9]+)(?:_ses-(?P<session>[A-Za-z0-9]+))?$")


def file_suffix(modality):
    """The last part of a modality's file names: its BIDS suffix, or its name where BIDS has none."""
    return BIDS_SUFFIX.get(modality, modality)


def is_bids_suffix(modality):
    """Whether a modality's files carry a suffix of the BIDS specification."""
    return any(file_suffix(modality) in suffixes for suffixes in DATATYPE_SUFFIXES.values())


def datatype(modality):
    """The BIDS datatype folder of a modality's files: ``pet`` for PET, ``anat`` for the rest."""
    return "pet" if file_suffix(modality) in DATATYPE_SUFFIXES["pet"] else "anat"


def unit_key(subject, session=None):
    """The workflow's subject key of a BIDS subject, or of one of its sessions: "01", "01_ses-2"."""
    return f"{subject}_ses-{session}" if session else subject


def split_unit(unit):
    """(subject, session or None) of a subject key (:func:`unit_key`)."""
    match = UNIT.match(unit)
    if not match:
        raise ValueError(f"{unit!r} is not a subject key (a BIDS label, or label_ses-label)")
    return match["subject"], match["session"]


def unit_folder(unit):
    """A subject key's folder: "sub-01", or "sub-01/ses-2" for a session."""
    subject, session = split_unit(unit)
    return f"sub-{subject}/ses-{session}" if session else f"sub-{subject}"


def _is_template(value):
    return value.startswith("{")


@dataclass(frozen=True)
class Paths:
    """The workflow's output paths under ``results`` (a BIDS-like layout: dataset, subject, pair, method)."""

    results: str = RESULTS

    # --- a dataset's own files ----------------------------------------------------------------------

    def dataset(self, dataset="{dataset}"):
        return f"{self.results}/{dataset}"

    def description(self, dataset="{dataset}"):
        """The ``dataset_description.json`` of the BIDS derivatives dataset a dataset's results are."""
        return f"{self.dataset(dataset)}/dataset_description.json"

    def bidsignore(self, dataset="{dataset}"):
        return f"{self.dataset(dataset)}/.bidsignore"

    def log(self, name, dataset="{dataset}"):
        """The log file ``name`` (a rule's folder and a job's name, wildcards as templates) of a dataset."""
        return f"{self.dataset(dataset)}/logs/{name}.log"

    def benchmark(self, name, dataset="{dataset}"):
        return f"{self.dataset(dataset)}/benchmarks/{name}.tsv"

    def manifest(self, dataset="{dataset}"):
        """The subjects table every dataset becomes (see :mod:`lpmnet.volumes.sources`)."""
        return f"{self.dataset(dataset)}/manifest.tsv"

    def manifest_log(self, dataset="{dataset}"):
        return self.log("manifest", dataset)

    def sourcedata(self, dataset="{dataset}"):
        return f"{self.dataset(dataset)}/sourcedata"

    def demo_table(self, dataset="{dataset}"):
        """The demo dataset's table of its generated subjects."""
        return f"{self.sourcedata(dataset)}/subjects.tsv"

    def ixi_archive(self, dataset="{dataset}", modality="{modality}"):
        """The workflow's own download of an IXI tarball."""
        return f"{self.dataset(dataset)}/downloads/IXI-{modality}.tar"

    def nifti_download(self, dataset="{dataset}", subject="{subject}", modality="{modality}", extension="{extension}"):
        """The workflow's own download of one volume of a ``downloads`` dataset; ``extension`` (".nii" or
        ".nii.gz") is its URL's."""
        return f"{self.dataset(dataset)}/downloads/sub-{subject}_{modality}{extension}"

    def ixi_folder(self, dataset="{dataset}", modality="{modality}"):
        """An extracted IXI tarball."""
        return f"{self.sourcedata(dataset)}/IXI-{modality}"

    def input_status(self, dataset="{dataset}"):
        return f"{self.dataset(dataset)}/input_status.tsv"

    def split(self, dataset="{dataset}"):
        return f"{self.dataset(dataset)}/split.tsv"

    # --- a subject's files (a BIDS subject, or one session of it) ------------------------------------

    def scan_dir(self, dataset="{dataset}", subject="{subject}", modality="{modality}"):
        """The datatype folder of a subject's modality: ``sub-01/ses-2/anat``; the ``{scan_dir}`` wildcard in
        a template (subject and modality both wildcards there)."""
        templates = [_is_template(v) for v in (subject, modality)]
        if any(templates):
            if not all(templates):
                raise ValueError(f"a subject's file needs subject and modality both given or both wildcards, "
                                 f"not {subject!r} and {modality!r}")
            return f"{self.dataset(dataset)}/{{scan_dir}}"
        return f"{self.dataset(dataset)}/{unit_folder(subject)}/{datatype(modality)}"

    def _scan_file(self, dataset, subject, modality, entities, suffix=None, extension=".nii.gz"):
        name = "_".join([f"sub-{subject}", *entities, suffix or file_suffix(modality)])
        return f"{self.scan_dir(dataset, subject, modality)}/{name}{extension}"

    def converted(self, dataset="{dataset}", subject="{subject}", modality="{modality}"):
        """A source as converted to a checked NIfTI, on its own grid."""
        return self._scan_file(dataset, subject, modality, [])

    def input_check(self, dataset="{dataset}", subject="{subject}"):
        return f"{self.dataset(dataset)}/checks/sub-{subject}_inputs.tsv"

    def n4(self, dataset="{dataset}", subject="{subject}", modality="{modality}"):
        return self._scan_file(dataset, subject, modality, ["desc-n4"])

    def registered(self, dataset="{dataset}", subject="{subject}", fixed="{fixed}", modality="{modality}"):
        return self._scan_file(dataset, subject, modality, [f"space-{fixed}", "desc-registered"])

    def _registration_file(self, dataset, subject, fixed, modality, suffix, extension):
        # from-<suffix>: the same value as the {modality} wildcard of the registered volume beside it
        return self._scan_file(dataset, subject, modality, [f"from-{file_suffix(modality)}", f"to-{fixed}"],
                               suffix, extension)

    def transform(self, dataset="{dataset}", subject="{subject}", fixed="{fixed}", modality="{modality}"):
        return self._registration_file(dataset, subject, fixed, modality, "mode-image_xfm", ".mat")

    def registration_report(self, dataset="{dataset}", subject="{subject}", fixed="{fixed}", modality="{modality}"):
        return self._registration_file(dataset, subject, fixed, modality, "registration", ".json")

    def registration_qc(self, dataset="{dataset}", subject="{subject}", fixed="{fixed}", modality="{modality}"):
        return self._registration_file(dataset, subject, fixed, modality, "regqc", ".png")

    def resized(self, dataset="{dataset}", subject="{subject}", space="{space}", modality="{modality}"):
        """A modality before normalisation, resampled onto a resized grid (``space``: the fixed modality with
        the grid entity, e.g. "T1_res-128x192x192")."""
        return self._scan_file(dataset, subject, modality, [f"space-{space}", "desc-resized"])

    def normalized(self, dataset="{dataset}", subject="{subject}", space="{space}", modality="{modality}"):
        """A modality as the model sees it: normalised in the fixed space (``space``: the fixed modality,
        with the grid entity of a resized grid, e.g. "T1_res-128x192x192")."""
        return self._scan_file(dataset, subject, modality, [f"space-{space}", "desc-norm"])

    def luminance(self, dataset="{dataset}", subject="{subject}", space="{space}", modality="{modality}"):
        """A functional modality's luminance through the dataset's colour map (lpmnet.volumes.colour): what a
        colour pair fuses, trains on and is scored with in its place."""
        return self._scan_file(dataset, subject, modality, [f"space-{space}", "desc-luminance"])

    # --- a pair's files -----------------------------------------------------------------------------

    def pair_dir(self, dataset="{dataset}", pair="{pair}"):
        return f"{self.dataset(dataset)}/{pair}"

    def model_dir(self, dataset="{dataset}", pair="{pair}", method="{method}"):
        return f"{self.pair_dir(dataset, pair)}/model/{method}"

    def model(self, dataset="{dataset}", pair="{pair}", method="{method}"):
        """A trained method's checkpoint."""
        return f"{self.model_dir(dataset, pair, method)}/model.pt"

    def training_log(self, dataset="{dataset}", pair="{pair}", method="{method}"):
        return f"{self.model_dir(dataset, pair, method)}/training_log.csv"

    def kept_checkpoint(self, dataset, pair, method, iteration):
        """A checkpoint that ``keep_every`` keeps (written by the train job next to its model)."""
        return f"{self.model_dir(dataset, pair, method)}/checkpoints/iteration-{iteration:06d}.pt"

    def training_curves(self, dataset="{dataset}", pair="{pair}", method="{method}"):
        return f"{self.model_dir(dataset, pair, method)}/training_curves.png"

    def learning_curve_table(self, dataset="{dataset}", pair="{pair}", method="{method}"):
        return f"{self.model_dir(dataset, pair, method)}/learning_curve.tsv"

    def learning_curve_figure(self, dataset="{dataset}", pair="{pair}", method="{method}"):
        return f"{self.model_dir(dataset, pair, method)}/learning_curve.png"

    def _fused(self, dataset, pair, subject, space, method, extension):
        return f"{self.pair_dir(dataset, pair)}/fused/sub-{subject}_space-{space}_desc-{method}_fused{extension}"

    def fused(self, dataset="{dataset}", pair="{pair}", subject="{subject}", space="{space}", method="{method}"):
        return self._fused(dataset, pair, subject, space, method, ".nii.gz")

    def fused_colour(self, dataset="{dataset}", pair="{pair}", subject="{subject}", space="{space}",
                     method="{method}"):
        """The RGB colour fusion of a colour pair beside its fused luminance (lpmnet.volumes.colour.rgb_path)."""
        return self._fused(dataset, pair, subject, space, method, "_rgb.nii.gz")

    def fused_sidecar(self, dataset="{dataset}", pair="{pair}", subject="{subject}", space="{space}",
                      method="{method}"):
        """The JSON sidecar of a fused volume (:func:`lpmnet.volumes.io.sidecar_path` of :meth:`fused`)."""
        return self._fused(dataset, pair, subject, space, method, ".json")

    def subject_metrics(self, dataset="{dataset}", pair="{pair}", subject="{subject}", method="{method}"):
        return f"{self.pair_dir(dataset, pair)}/metrics/sub-{subject}_desc-{method}_metrics.json"

    def metrics_summary(self, dataset="{dataset}", pair="{pair}"):
        return f"{self.pair_dir(dataset, pair)}/metrics.tsv"

    def metrics_long(self, dataset="{dataset}", pair="{pair}"):
        return f"{self.pair_dir(dataset, pair)}/metrics_long.tsv"

    def metrics_html(self, dataset="{dataset}", pair="{pair}"):
        return f"{self.pair_dir(dataset, pair)}/metrics.html"

    def failed_subjects(self, dataset="{dataset}", pair="{pair}"):
        return f"{self.pair_dir(dataset, pair)}/failed_subjects.tsv"

    def comparison(self, dataset="{dataset}", pair="{pair}", extension="tsv"):
        """The comparison of the methods: its table ("tsv"), page ("html") or box plots ("png")."""
        return f"{self.pair_dir(dataset, pair)}/comparison.{extension}"

    def montage(self, dataset="{dataset}", pair="{pair}", subject="{subject}"):
        return f"{self.pair_dir(dataset, pair)}/qc/sub-{subject}_montage.png"

    def viewer(self, dataset="{dataset}", pair="{pair}", subject="{subject}"):
        """A test subject's viewer page: the sources and every method's fusion on one voxel."""
        return f"{self.pair_dir(dataset, pair)}/viewer/sub-{subject}_viewer.html"

    # --- the report of every dataset ---------------------------------------------------------------

    def report(self):
        """The page a run ends with: every pair's headline comparison and its viewer pages."""
        return f"{self.results}/report.html"

    def report_log(self):
        return f"{self.results}/logs/report.log"

    def report_benchmark(self):
        return f"{self.results}/benchmarks/report.tsv"

    # --- the shipped models (target ``pretrained``) -------------------------------------------------

    def pretrained_dir(self):
        return f"{self.results}/pretrained"

    def pretrained_model(self, kind="{kind}"):
        return f"{self.pretrained_dir()}/{kind}/model.pt"

    def pretrained_log(self, kind="{kind}"):
        return f"{self.pretrained_dir()}/{kind}/training_log.csv"

    def pretrained_held_out(self, kind="{kind}"):
        return f"{self.pretrained_dir()}/{kind}/held_out.tsv"

    def model_card(self):
        return f"{self.pretrained_dir()}/MODEL_CARD.md"

    def pretrained_job_log(self, name):
        return f"{self.pretrained_dir()}/logs/{name}.log"

    def pretrained_benchmark(self, name):
        return f"{self.pretrained_dir()}/benchmarks/{name}.tsv"


def manifest_path(name, results=RESULTS):
    """The subjects table every dataset becomes (see :mod:`lpmnet.volumes.sources`)."""
    return Paths(results).manifest(name)
