import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")
from lpmnet.workflow.runner import run_job


def main(smk):
    import numpy as np

    from lpmnet.volumes.io import dhw, load_volume, require_same_grid
    from lpmnet.metrics import compute_all
    from lpmnet.metrics.records import write_metrics_json
    from lpmnet.volumes.normalize import unit_range

    a, b, f = (load_volume(p, allow_constant=True) for p in (smk.input.x1, smk.input.x2, smk.input.fused))
    require_same_grid(a, f)
    # Sources are already normalised to [0, 1] (checked, not scaled again); the fused volume is clipped, never
    # stretched.
    results = compute_all(unit_range(dhw(a.data), normalize=False), unit_range(dhw(b.data), normalize=False),
                          np.clip(dhw(f.data), 0, 1), conventions=smk.params.conventions, axis=smk.params.axis)
    write_metrics_json(smk.output[0], smk.wildcards.subject, smk.wildcards.method, results)


run_job(snakemake, main)
