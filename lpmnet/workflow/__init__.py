"""The glue of the Snakemake workflow, one concern per module:

* :mod:`lpmnet.workflow.paths`: every output path of the workflow, as a Snakemake template and as a path,
  named as BIDS derivatives;
* :mod:`lpmnet.workflow.derivatives`: the results as a BIDS derivatives dataset (description, sidecars);
* :mod:`lpmnet.workflow.index`: datasets, subjects and sources, and the dataset-config checks;
* :mod:`lpmnet.workflow.checks`: the job-side checks of a subject's inputs;
* :mod:`lpmnet.workflow.splits`: train/test splits;
* :mod:`lpmnet.workflow.config`: the ``methods`` and ``pretrained`` sections, checked and resolved;
* :mod:`lpmnet.workflow.runner`: :func:`~lpmnet.workflow.runner.run_job`, the entry point of the scripts.
"""
