"""LPM-Net: 3D multimodal medical image fusion (axis-decomposed dense convolutions + windowed Mamba).

The package holds all the real logic of the project; the Snakemake workflow only calls it.
"""

import sys

__version__ = "0.1.0"

#: The modules loaded before this package: the interpreter's and, in a workflow job, Snakemake's script
#: preamble's. What a job imported itself is the rest (:func:`lpmnet.workflow.runner.job_imports`).
PRELOADED_MODULES = frozenset(sys.modules)
