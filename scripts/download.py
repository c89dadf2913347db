import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")
from lpmnet.workflow.runner import run_job


def main(smk):
    from lpmnet.volumes.sources import download

    p = smk.params
    download(p.url, smk.output[0], p.checksum, retries=p.retries)


run_job(snakemake, main)
