# Sources: the embedded demo dataset, a check of every subject's sources before anything else runs, and
# conversion of every source (NIfTI or DICOM) to a checked NIfTI.


rule demo_dataset:
    output:
        table=f"{RESULTS}/{{dataset}}/sourcedata/subjects.tsv",
    params:
        subjects=lambda w: DATASETS[w.dataset]["subjects"],
        seed=lambda w: DATASETS[w.dataset]["seed"],
        modalities=lambda w: DATASETS[w.dataset]["modalities"],
        dicom_modalities=lambda w: DATASETS[w.dataset]["dicom_modalities"],
        voxel_mm=lambda w: DATASETS[w.dataset]["voxel_mm"],
        rigid_motion=lambda w: DATASETS[w.dataset]["rigid_motion"],
    log:
        f"{RESULTS}/{{dataset}}/logs/demo_dataset.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/benchmarks/demo_dataset.tsv"
    conda:
        "../envs/registration.yaml"
    script:
        "../scripts/demo_dataset.py"


rule convert:
    input:
        conversion_input,
    output:
        f"{RESULTS}/{{dataset}}/sub-{{subject}}/sub-{{subject}}_{{modality}}.nii.gz",
    params:
        source=lambda w: SOURCES[(w.dataset, w.subject, w.modality)].path,
        kind=lambda w: SOURCES[(w.dataset, w.subject, w.modality)].kind,
        problem=lambda w: SOURCES[(w.dataset, w.subject, w.modality)].problem,
    log:
        f"{RESULTS}/{{dataset}}/logs/convert/sub-{{subject}}_{{modality}}.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/benchmarks/convert/sub-{{subject}}_{{modality}}.tsv"
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
        f"{RESULTS}/{{dataset}}/sub-{{subject}}/sub-{{subject}}_inputs.tsv",
    params:
        sources=subject_sources,
    log:
        f"{RESULTS}/{{dataset}}/logs/check_inputs/sub-{{subject}}.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/benchmarks/check_inputs/sub-{{subject}}.tsv"
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
        lambda w: [f"{subject_dir(w.dataset, s)}/sub-{s}_inputs.tsv" for s in SUBJECTS[w.dataset]],
    output:
        f"{RESULTS}/{{dataset}}/input_status.tsv",
    log:
        f"{RESULTS}/{{dataset}}/logs/input_status.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/benchmarks/input_status.tsv"
    conda:
        "../envs/registration.yaml"
    script:
        "../scripts/input_status.py"
