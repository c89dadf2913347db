"""Every file the workflow writes, named in one place: the rules' ``output:``/``input:``/``log:`` templates and
the paths that input functions compute are the same functions of :class:`Paths`.

Each argument defaults to its Snakemake wildcard, so that ``paths.normalized()`` is the rule's template
(``results/{dataset}/sub-{subject}/sub-{subject}_space-{space}_desc-norm_{modality}.nii.gz``) and
``paths.normalized("demo", "01", "T1", "FLAIR")`` one of its files. A rule whose wildcard has another name
passes it as a template: ``paths.normalized(space="{fixed}")``.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The folder every output lies under, relative to the working directory.
RESULTS = "results"


@dataclass(frozen=True)
class Paths:
    """The workflow's output paths under ``results`` (a BIDS-like layout: dataset, subject, pair, method)."""

    results: str = RESULTS

    # --- a dataset's own files ----------------------------------------------------------------------

    def dataset(self, dataset="{dataset}"):
        return f"{self.results}/{dataset}"

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

    def ixi_folder(self, dataset="{dataset}", modality="{modality}"):
        """An extracted IXI tarball."""
        return f"{self.sourcedata(dataset)}/IXI-{modality}"

    def input_status(self, dataset="{dataset}"):
        return f"{self.dataset(dataset)}/input_status.tsv"

    def split(self, dataset="{dataset}"):
        return f"{self.dataset(dataset)}/split.tsv"

    # --- a subject's files --------------------------------------------------------------------------

    def subject_dir(self, dataset="{dataset}", subject="{subject}"):
        return f"{self.dataset(dataset)}/sub-{subject}"

    def _subject_file(self, dataset, subject, name):
        return f"{self.subject_dir(dataset, subject)}/sub-{subject}_{name}"

    def converted(self, dataset="{dataset}", subject="{subject}", modality="{modality}"):
        """A source as converted to a checked NIfTI."""
        return self._subject_file(dataset, subject, f"{modality}.nii.gz")

    def input_check(self, dataset="{dataset}", subject="{subject}"):
        return self._subject_file(dataset, subject, "inputs.tsv")

    def n4(self, dataset="{dataset}", subject="{subject}", modality="{modality}"):
        return self._subject_file(dataset, subject, f"desc-n4_{modality}.nii.gz")

    def registered(self, dataset="{dataset}", subject="{subject}", fixed="{fixed}", modality="{modality}"):
        return self._subject_file(dataset, subject, f"space-{fixed}_desc-registered_{modality}.nii.gz")

    def transform(self, dataset="{dataset}", subject="{subject}", fixed="{fixed}", modality="{modality}"):
        return f"{self.subject_dir(dataset, subject)}/xfm/sub-{subject}_from-{modality}_to-{fixed}_mode-image_xfm.mat"

    def registration_report(self, dataset="{dataset}", subject="{subject}", fixed="{fixed}", modality="{modality}"):
        return f"{self.subject_dir(dataset, subject)}/qc/sub-{subject}_from-{modality}_to-{fixed}_registration.json"

    def registration_qc(self, dataset="{dataset}", subject="{subject}", fixed="{fixed}", modality="{modality}"):
        return f"{self.subject_dir(dataset, subject)}/qc/sub-{subject}_from-{modality}_to-{fixed}_regqc.png"

    def resized(self, dataset="{dataset}", subject="{subject}", space="{space}", modality="{modality}"):
        """A modality before normalisation, resampled onto a resized grid (``space``: the fixed modality with
        the grid entity, e.g. "T1_res-128x192x192")."""
        return self._subject_file(dataset, subject, f"space-{space}_desc-resized_{modality}.nii.gz")

    def normalized(self, dataset="{dataset}", subject="{subject}", space="{space}", modality="{modality}"):
        """A modality as the model sees it: normalised in the fixed space (``space``: the fixed modality,
        with the grid entity of a resized grid, e.g. "T1_res-128x192x192")."""
        return self._subject_file(dataset, subject, f"space-{space}_desc-norm_{modality}.nii.gz")

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

    # --- the shipped models (target ``pretrained``) -------------------------------------------------

    def pretrained_dir(self):
        return f"{self.results}/pretrained"

    def pretrained_model(self, kind="{kind}"):
        return f"{self.pretrained_dir()}/{kind}/model.pt"

    def pretrained_log(self, kind="{kind}"):
        return f"{self.pretrained_dir()}/{kind}/training_log.csv"

    def model_card(self):
        return f"{self.pretrained_dir()}/MODEL_CARD.md"

    def pretrained_job_log(self, name):
        return f"{self.pretrained_dir()}/logs/{name}.log"

    def pretrained_benchmark(self, name):
        return f"{self.pretrained_dir()}/benchmarks/{name}.tsv"


def manifest_path(name, results=RESULTS):
    """The subjects table every dataset becomes (see :mod:`lpmnet.volumes.sources`)."""
    return Paths(results).manifest(name)
