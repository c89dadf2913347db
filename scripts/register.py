import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")
from lpmnet.workflow.runner import run_job


def main(smk):
    from lpmnet.volumes.io import atomic_write_json
    from lpmnet.evaluation.figures import registration_qc_figure
    from lpmnet.volumes.registration import register
    from lpmnet.workflow.derivatives import write_job_sidecar

    result = register(smk.input.fixed, smk.input.moving, smk.output.registered, smk.params.prefix,
                      transform=smk.params.transform, seed=smk.params.seed, threads=smk.threads)
    print(f"Mattes MI {result['mattes_mi_before']:.4f} -> {result['mattes_mi_after']:.4f} "
          f"(improved: {result['improved']})", file=sys.stderr)
    atomic_write_json(smk.output.report, result)
    w = smk.wildcards
    write_job_sidecar(smk.output.registered, smk.params.bids,
                      f"Registered onto {w.fixed} (ANTs {smk.params.transform}, Mattes mutual information) and "
                      f"resampled on its grid", [smk.input.moving, smk.params.reference],
                      space_reference=smk.params.reference)
    registration_qc_figure(smk.input.fixed, smk.output.registered, smk.output.qc,
                           title=f"sub-{w.subject}: {w.modality} registered to {w.fixed} ({smk.params.transform})")


run_job(snakemake, main)
