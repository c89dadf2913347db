import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")
from lpmnet.workflow.runner import run_job


def main(smk):
    from pathlib import Path

    from lpmnet.evaluation.report import PairResults, SubjectResults, write_report
    from lpmnet.workflow.paths import Paths

    paths = Paths(str(Path(smk.output[0]).parent))

    def in_pair(files, pair_dir):
        return [Path(f) for f in files if Path(f).parent.parent == pair_dir]

    pairs = []
    for tsv in map(Path, smk.input.comparison):
        pair_dir = tsv.parent
        montages = {m.name.removesuffix("_montage.png"): m for m in in_pair(smk.input.montages, pair_dir)}
        subjects = [SubjectResults(v.name.removeprefix("sub-").removesuffix("_viewer.html"), v,
                                   montages.get(v.name.removesuffix("_viewer.html")))
                    for v in in_pair(smk.input.viewers, pair_dir)]
        dataset, pair = pair_dir.parent.name, pair_dir.name
        pages = {"full comparison": paths.comparison(dataset, pair, "html"),
                 "box plots": paths.comparison(dataset, pair, "png"), "metric tables": paths.metrics_html(dataset, pair)}
        pairs.append(PairResults(dataset, pair, tsv, pages, subjects, colour=f"{dataset}/{pair}" in smk.params.colour))
    write_report(smk.output[0], pairs, reference=smk.params.reference)


run_job(snakemake, main)
