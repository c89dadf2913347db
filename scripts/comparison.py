import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")
from lpmnet.workflow import run_job


def main(smk):
    import pandas as pd

    from lpmnet.comparison import cost_from_benchmarks, write_comparison
    from lpmnet.models import count_parameters, load_checkpoint

    methods = smk.params.methods
    # The classical rules have no parameters; LPM-Net's are counted on the trained checkpoint.
    parameters = {m: 0 for m in methods}
    parameters["lpmnet"] = count_parameters(load_checkpoint(smk.input.model)[0])
    costs = cost_from_benchmarks({m: smk.input[f"fuse_{m}"] for m in methods},
                                 {"lpmnet": smk.input.train_lpmnet}, parameters=parameters)
    w = smk.wildcards
    write_comparison(pd.read_csv(smk.input.long, sep="\t", keep_default_na=False, na_values=["NaN"]),
                     smk.output.tsv, smk.output.html, smk.output.png, costs=costs,
                     title=f"Which method fuses best: {w.dataset} {w.pair}")


run_job(snakemake, main)
