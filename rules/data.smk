# Sources: the embedded demo dataset, a check of every subject's sources before anything else runs, and
# conversion of every source (NIfTI or DICOM) to a checked NIfTI.


rule demo_dataset:
    output:
        table=paths.demo_table(),
    params:
        subjects=lambda w: DATASETS[w.dataset]["subjects"],
        seed=lambda w: DATASETS[w.dataset]["seed"],
        modalities=lambda w: DATASETS[w.dataset]["modalities"],
        dicom_modalities=lambda w: DATASETS[w.dataset]["dicom_modalities"],
        voxel_mm=lambda w: DATASETS[w.dataset]["voxel_mm"],
        rigid_motion=lambda w: DATASETS[w.dataset]["rigid_motion"],
    log:
        paths.log("demo_dataset"),
    benchmark:
        paths.benchmark("demo_dataset")
    conda:
        "../envs/registration.yaml"
    script:
        "../scripts/demo_dataset.py"


rule convert:
    input:
        conversion_input,
    output:
        paths.converted(),
        sidecar=sidecar(paths.converted()),
    params:
        source=lambda w: conversion_source(w).path,
        kind=lambda w: conversion_source(w).kind,
        problem=lambda w: conversion_source(w).problem,
        bids=derivative_params,
    log:
        paths.log("convert/{scan_dir}/sub-{subject}_{modality}"),
    benchmark:
        paths.benchmark("convert/{scan_dir}/sub-{subject}_{modality}")
    group:
        "subject_preprocessing"
    conda:
        "../envs/registration.yaml"
    script:
        "../scripts/convert.py"


rule check_inputs:
    input:
        subject_source_inputs,
    output:
        paths.input_check(),
    params:
        sources=subject_sources,
    log:
        paths.log("check_inputs/sub-{subject}"),
    benchmark:
        paths.benchmark("check_inputs/sub-{subject}")
    group:
        "subject_preprocessing"
    conda:
        "../envs/registration.yaml"
    script:
        "../scripts/check_inputs.py"


localrules:
    input_status,


# Which subjects can be processed: the job graph below (training sets, metric tables, montages) is built
# from the subjects whose sources passed their check; the others are listed in each pair's
# failed_subjects.tsv, and their conversions still run so that the run reports them and exits non-zero.
checkpoint input_status:
    input:
        lambda w: [paths.input_check(w.dataset, s) for s in dataset_subjects(w.dataset)],
    output:
        paths.input_status(),
    log:
        paths.log("input_status"),
    benchmark:
        paths.benchmark("input_status")
    conda:
        "../envs/registration.yaml"
    script:
        "../scripts/input_status.py"
