import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")
from lpmnet.workflow.runner import run_job


def main(smk):
    import logging

    from lpmnet.workflow.checks import check_subject_sources, write_input_status

    rows = check_subject_sources(smk.wildcards.subject, smk.params.sources)
    for row in rows:
        if row["status"] != "ok":
            logging.getLogger("check_inputs").warning("%s: %s", row["modality"], row["problem"])
    write_input_status(smk.output[0], rows)


run_job(snakemake, main)
