# Sources: the embedded demo dataset, and conversion of every source (NIfTI or DICOM) to a checked NIfTI.


rule demo_dataset:
    output:
        table=f"{RESULTS}/{{dataset}}/sourcedata/subjects.tsv",
    params:
        subjects=lambda w: DATASETS[w.dataset]["subjects"],
        seed=lambda w: DATASETS[w.dataset]["seed"],
        modalities=lambda w: DATASETS[w.dataset]["modalities"],
        dicom_modalities=lambda w: DATASETS[w.dataset]["dicom_modalities"],
        voxel_mm=lambda w: DATASETS[w.dataset]["voxel_mm"],
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
