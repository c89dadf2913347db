# Public dataset sources: IXI download and extraction, the volumes of a downloads dataset, and the manifest
# (subjects table) of every dataset. The manifest is a checkpoint: an IXI dataset's subjects are known once it
# is downloaded, extracted and paired, and Snakemake then extends the job graph with them in the same run.


localrules:
    ixi_download,
    nifti_download,


rule ixi_download:
    output:
        paths.ixi_archive(),
    params:
        url=lambda w: DATASETS[w.dataset]["urls"][w.modality],
        checksum=lambda w: DATASETS[w.dataset]["checksums"].get(w.modality),
        retries=lambda w: DATASETS[w.dataset]["retries"],
    log:
        paths.log("ixi_download/IXI-{modality}"),
    benchmark:
        paths.benchmark("ixi_download/IXI-{modality}")
    conda:
        "../envs/registration.yaml"
    script:
        "../scripts/download.py"


# One volume of a downloads dataset (datasets.<name>.files.<subject>.<modality>), always checked against its
# sha256; it keeps its URL's extension, which tells the reader whether it is gzipped.
rule nifti_download:
    output:
        paths.nifti_download(),
    params:
        url=lambda w: download_entry(w)["url"],
        checksum=lambda w: f"sha256:{download_entry(w)['sha256']}",
        retries=lambda w: DATASETS[w.dataset]["retries"],
    log:
        paths.log("nifti_download/sub-{subject}_{modality}{extension}"),
    benchmark:
        paths.benchmark("nifti_download/sub-{subject}_{modality}{extension}")
    wildcard_constraints:
        extension=r"\.nii(\.gz)?",
    conda:
        "../envs/registration.yaml"
    script:
        "../scripts/download.py"


rule ixi_extract:
    input:
        ixi_archive,
    output:
        directory(paths.ixi_folder()),
    log:
        paths.log("ixi_extract/IXI-{modality}"),
    benchmark:
        paths.benchmark("ixi_extract/IXI-{modality}")
    conda:
        "../envs/registration.yaml"
    script:
        "../scripts/ixi_extract.py"


checkpoint manifest:
    input:
        unpack(manifest_input),
    output:
        paths.manifest(),
    params:
        source=lambda w: DATASETS[w.dataset]["source"],
        rows=manifest_rows,
        modalities=lambda w: ixi_modalities(DATASETS[w.dataset]),
        max_subjects=lambda w: DATASETS[w.dataset].get("max_subjects"),
        ignored=ignored_rows,
        bids=bids_manifest,
    log:
        paths.manifest_log(),
    benchmark:
        paths.benchmark("manifest")
    conda:
        "../envs/registration.yaml"
    script:
        "../scripts/manifest.py"


localrules:
    derivatives_description,


# The dataset's results as a BIDS derivatives dataset: its description and what the BIDS validator skips.
rule derivatives_description:
    output:
        description=paths.description(),
        bidsignore=paths.bidsignore(),
    params:
        description=derivatives_description,
        ignore=lambda w: bidsignore_lines(DATASETS[w.dataset]["pairs"], needed_modalities(DATASETS[w.dataset])),
    log:
        paths.log("derivatives_description"),
    benchmark:
        paths.benchmark("derivatives_description")
    conda:
        "../envs/registration.yaml"
    script:
        "../scripts/derivatives_description.py"
