import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")
from lpmnet.workflow.runner import run_job


def main(smk):
    import pandas as pd

    from lpmnet.evaluation.comparison import cost_from_runs
    from lpmnet.evaluation.comparison_report import write_comparison

    costs = cost_from_runs({m: smk.input[f"fuse_{m}"] for m in smk.params.methods},
                           {m: smk.input[f"train_{m}"] for m in smk.params.trained})
    w = smk.wildcards
    write_comparison(pd.read_csv(smk.input.long, sep="\t", keep_default_na=False, na_values=["NaN"]),
                     smk.output.tsv, smk.output.html, smk.output.png, reference=smk.params.reference, costs=costs,
                     title=f"Which method fuses best: {w.dataset} {w.pair}")


run_job(snakemake, main)
