"""The job runner of the workflow's scripts (:func:`run_job`) and the record of what each job imported
(``LPMNET_RECORD_IMPORTS``, read by the conda environments' test)."""

from __future__ import annotations

import sys
from pathlib import Path

from lpmnet import PRELOADED_MODULES

#: Environment variable naming a folder where every job records the third-party modules it imported.
RECORD_IMPORTS = "LPMNET_RECORD_IMPORTS"


def importable_working_directory():
    """Put the working directory on ``sys.path``: a user's own method (``methods.<name>.network``, a dotted
    module name) is a module there, imported by the workflow and by each job, whose scripts start in
    their own folder."""
    import os
    import sys

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def run_job(smk, main):
    """Entry point of the workflow's scripts: ``run_job(snakemake, main)``.

    The job's stderr and log records go to its ``log:`` file. Bad input (an
    :class:`~lpmnet.errors.LPMNetError`) ends the job with one line naming the file and the problem,
    in the log and on the console, and a non-zero exit so that Snakemake removes the job's outputs.
    """
    import logging
    import os

    from lpmnet.errors import LPMNetError
    from lpmnet.runtime import keep_freed_memory_for_reuse

    keep_freed_memory_for_reuse()
    importable_working_directory()
    record_folder = os.environ.get(RECORD_IMPORTS)
    console = sys.stderr
    log_file = open(smk.log[0], "w", buffering=1) if smk.log else console
    sys.stderr = log_file
    logging.basicConfig(stream=log_file, level=logging.INFO, force=True,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        main(smk)
    except LPMNetError as err:
        message = f"lpmnet: error in rule {smk.rule}: {err}"
        print(message, file=log_file)
        if log_file is not console:
            print(message, file=console)
        sys.exit(1)
    finally:
        if record_folder:
            record_job_imports(record_folder, smk.rule)


def job_imports():
    """What this process imported after Snakemake's preamble: ``(third_party, own)``, the sorted top-level
    names of the third-party modules and the names of the lpmnet modules."""
    loaded = [name for name, module in list(sys.modules.items())
              if module is not None and name not in PRELOADED_MODULES]
    own = sorted(name for name in loaded if name == "lpmnet" or name.startswith("lpmnet."))
    tops = {name.partition(".")[0] for name in loaded} - set(sys.stdlib_module_names) - {"lpmnet", "__main__"}
    return sorted(tops), own


def record_job_imports(folder, rule):
    """Write ``<folder>/<rule>.<pid>.json`` with :func:`job_imports`; the conda environments' test reads
    these to check that each rule's environment provides what its jobs import."""
    import json
    import os

    third_party, own = job_imports()
    path = Path(folder) / f"{rule}.{os.getpid()}.json"
    partial = path.with_name(f".{path.name}.partial")  # lpmnet.volumes.io's writer would import numpy and nibabel
    partial.write_text(json.dumps({"rule": rule, "third_party": third_party, "lpmnet": own}, indent=1))
    os.replace(partial, path)
