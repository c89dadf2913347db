import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")
from lpmnet.workflow import run_job


def main(smk):
    import pandas as pd

    from lpmnet.comparison import cost_from_benchmarks, write_comparison
    from lpmnet.methods import get_method
    from lpmnet.models import count_parameters

    methods = smk.params.methods
    # The classical rules have no parameters; a network's are counted on the checkpoint it fused with.
    parameters = {m: 0 for m in methods}
    for m, network in smk.params.networks.items():
        parameters[m] = count_parameters(get_method(network).load(smk.input[f"model_{m}"])[0])
    costs = cost_from_benchmarks({m: smk.input[f"fuse_{m}"] for m in methods},
                                 {m: smk.input[f"train_{m}"] for m in smk.params.trained}, parameters=parameters)
    w = smk.wildcards
    write_comparison(pd.read_csv(smk.input.long, sep="\t", keep_default_na=False, na_values=["NaN"]),
                     smk.output.tsv, smk.output.html, smk.output.png, reference=smk.params.reference, costs=costs,
                     title=f"Which method fuses best: {w.dataset} {w.pair}")


run_job(snakemake, main)
