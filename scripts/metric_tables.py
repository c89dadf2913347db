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
    if smk.params.colour_map:
        functional = smk.params.modalities[-1]
        warnings.append(f"{functional} is functional and fused in colour (colour map {smk.params.colour_map}): every "
                        f"method fuses {smk.params.modalities[1]} with {functional}'s luminance, and these metrics score "
                        f"the fused luminance against it, as the 2D toolboxes score colour fusions on Y; the colour "
                        f"fusions are fused/*_rgb.nii.gz.")
    for row in failed:
        logging.getLogger("metric_tables").warning("sub-%s (%s) left out: %s", row["subject"], row["split"],
                                                   row["problem"])
    w = smk.wildcards
    write_tables(smk.input.metrics, smk.output.long, smk.output.summary, smk.output.html,
                 title=f"Fusion metrics: {w.dataset} {w.pair}", failed=failed, failed_tsv=smk.output.failed,
                 warnings=warnings)


run_job(snakemake, main)
