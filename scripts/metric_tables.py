import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")
from lpmnet.workflow.runner import run_job


def main(smk):
    import logging

    from lpmnet.workflow.splits import BOTH, OVERLAP_NOTE, read_split_tsv
    from lpmnet.evaluation.tables import write_tables
    from lpmnet.workflow.checks import pair_failures, read_input_status

    split = read_split_tsv(smk.input.split)
    failed = pair_failures(read_input_status(smk.input.input_status), split, smk.params.modalities)
    overlap = [s for s, role in split.items() if role == BOTH]
    warnings = [f"sub-{', sub-'.join(overlap)}: {OVERLAP_NOTE}."] if overlap else []
    for row in failed:
        logging.getLogger("metric_tables").warning("sub-%s (%s) left out: %s", row["subject"], row["split"],
                                                   row["problem"])
    w = smk.wildcards
    write_tables(smk.input.metrics, smk.output.long, smk.output.summary, smk.output.html,
                 title=f"Fusion metrics: {w.dataset} {w.pair}", failed=failed, failed_tsv=smk.output.failed,
                 warnings=warnings)


run_job(snakemake, main)
