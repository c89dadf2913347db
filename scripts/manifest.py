import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")
from lpmnet.workflow.runner import run_job


def main(smk):
    import logging

    from lpmnet.volumes.sources import ixi_subjects, write_manifest

    p, log = smk.params, logging.getLogger("manifest")
    rows, extra = p.rows, None
    if p.source == "ixi":
        folders = {m: smk.input[m] for m in p.modalities}
        rows, skipped = ixi_subjects(folders, p.modalities, p.max_subjects)
        for ixi_id, missing in skipped.items():
            log.warning("skipped subject %s: no %s volume", ixi_id, ", ".join(missing))
        log.info("%d subjects paired, %d skipped", len({r[0] for r in rows}), len(skipped))
    if p.bids:
        from lpmnet.volumes.bids import read_sidecar

        for kind, message in p.bids["issues"]:
            (log.info if kind == "chosen" else log.warning)("%s", message)
        extra = []
        for unit, _, path in rows:
            subject, session = p.bids["units"][unit]
            extra.append({"participant_id": f"sub-{subject}", "session": session or "n/a",
                          **p.bids["participants"].get(subject, {}), **read_sidecar(path)})
        log.info("%d subjects, %d subject keys (sessions)", len({u[0] for u in p.bids["units"].values()}),
                 len(p.bids["units"]))
    for where, subject, modality in p.ignored:
        log.warning("%s: subject %s, modality %s is ignored: no pair and not fixed uses %s", where, subject,
                    modality, modality)
    write_manifest(smk.output[0], smk.wildcards.dataset, rows, extra=extra)


run_job(snakemake, main)
