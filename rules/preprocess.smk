# Per subject: optional N4, registration of each moving modality onto the fixed one, normalisation, and
# (datasets with a target_shape) the paper-style resize of the normalised volume.


rule n4_bias_correction:
    input:
        f"{RESULTS}/{{dataset}}/sub-{{subject}}/sub-{{subject}}_{{modality}}.nii.gz",
    output:
        temp(f"{RESULTS}/{{dataset}}/sub-{{subject}}/sub-{{subject}}_desc-n4_{{modality}}.nii.gz"),
    params:
        seed=config["registration"]["seed"],
    threads: config["registration"]["threads"]
    log:
        f"{RESULTS}/{{dataset}}/logs/n4/sub-{{subject}}_{{modality}}.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/benchmarks/n4/sub-{{subject}}_{{modality}}.tsv"
    group:
        "subject_preprocessing"
    conda:
        "../envs/registration.yaml"
    script:
        "../scripts/n4.py"


rule register:
    input:
        fixed=lambda w: registration_source(w, w.fixed),
        moving=lambda w: registration_source(w, w.modality),
    output:
        registered=temp(
            f"{RESULTS}/{{dataset}}/sub-{{subject}}/sub-{{subject}}_space-{{fixed}}_desc-registered_{{modality}}.nii.gz"
        ),
        transform=f"{RESULTS}/{{dataset}}/sub-{{subject}}/xfm/sub-{{subject}}_from-{{modality}}_to-{{fixed}}_mode-image_xfm.mat",
        report=f"{RESULTS}/{{dataset}}/sub-{{subject}}/qc/sub-{{subject}}_from-{{modality}}_to-{{fixed}}_registration.json",
        qc=report(
            f"{RESULTS}/{{dataset}}/sub-{{subject}}/qc/sub-{{subject}}_from-{{modality}}_to-{{fixed}}_regqc.png",
            caption="../report/registration.rst",
            category="Registration QC",
            subcategory="{dataset}",
            labels={"subject": "{subject}", "moving": "{modality}", "fixed": "{fixed}"},
        ),
    params:
        transform=config["registration"]["transform"],
        seed=config["registration"]["seed"],
        prefix=lambda w, output: output.transform.removesuffix("_mode-image_xfm.mat"),
    threads: config["registration"]["threads"]
    resources:
        mem_mb=registration_mem_mb,
    log:
        f"{RESULTS}/{{dataset}}/logs/register/sub-{{subject}}_from-{{modality}}_to-{{fixed}}.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/benchmarks/register/sub-{{subject}}_from-{{modality}}_to-{{fixed}}.tsv"
    group:
        "subject_preprocessing"
    conda:
        "../envs/registration.yaml"
    script:
        "../scripts/register.py"


rule normalize:
    input:
        unpack(normalization_input),
    output:
        f"{RESULTS}/{{dataset}}/sub-{{subject}}/sub-{{subject}}_space-{{fixed}}_desc-norm_{{modality}}.nii.gz",
    params:
        low=config["normalization"]["low_percentile"],
        high=config["normalization"]["high_percentile"],
        mask=config["normalization"]["mask"],
    log:
        f"{RESULTS}/{{dataset}}/logs/normalize/sub-{{subject}}_space-{{fixed}}_{{modality}}.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/benchmarks/normalize/sub-{{subject}}_space-{{fixed}}_{{modality}}.tsv"
    group:
        "subject_preprocessing"
    conda:
        "../envs/registration.yaml"
    script:
        "../scripts/normalize.py"


rule resize:
    input:
        f"{RESULTS}/{{dataset}}/sub-{{subject}}/sub-{{subject}}_space-{{fixed}}_desc-norm_{{modality}}.nii.gz",
    output:
        f"{RESULTS}/{{dataset}}/sub-{{subject}}/sub-{{subject}}_space-{{fixed}}_res-{{shape}}_desc-norm_{{modality}}.nii.gz",
    params:
        dhw_shape=lambda w: [int(n) for n in w.shape.split("x")],
    log:
        f"{RESULTS}/{{dataset}}/logs/resize/sub-{{subject}}_space-{{fixed}}_res-{{shape}}_{{modality}}.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/benchmarks/resize/sub-{{subject}}_space-{{fixed}}_res-{{shape}}_{{modality}}.tsv"
    group:
        "subject_preprocessing"
    conda:
        "../envs/registration.yaml"
    script:
        "../scripts/resize.py"


rule split:
    output:
        f"{RESULTS}/{{dataset}}/split.tsv",
    params:
        split=lambda w: SPLITS[w.dataset],
    log:
        f"{RESULTS}/{{dataset}}/logs/split.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/benchmarks/split.tsv"
    conda:
        "../envs/registration.yaml"
    script:
        "../scripts/split.py"
