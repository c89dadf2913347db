import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")
from lpmnet.workflow.runner import run_job


def main(smk):
    from lpmnet.workflow.checks import convert_source
    from lpmnet.workflow.derivatives import write_job_sidecar

    p = smk.params
    convert_source(p.kind, p.source, p.problem, smk.output[0])
    own = {}
    if p.bids["bids_source"]:
        from lpmnet.volumes.bids import read_sidecar

        own["SourceMetadata"] = read_sidecar(p.source)
        if "SkullStripped" in own["SourceMetadata"]:
            own["skull_stripped"] = own["SourceMetadata"]["SkullStripped"]
    write_job_sidecar(smk.output[0], p.bids, "The source volume, checked and written as NIfTI on its own grid "
                      "(a DICOM series converted with a scanner-space header)", [p.source], **own)


run_job(snakemake, main)
