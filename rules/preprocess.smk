# Per subject: optional N4, registration of each moving modality onto the fixed one, (datasets with a
# target_shape) the paper-style resize, and normalisation: the last step, and the only one that scales
# intensities, so that every model input is exactly the normalize rule's output.


rule n4_bias_correction:
    input:
        paths.converted(),
    output:
        temp(paths.n4()),
    params:
        seed=config["registration"]["seed"],
    threads: config["registration"]["threads"]
    log:
        paths.log("n4/sub-{subject}_{modality}"),
    benchmark:
        paths.benchmark("n4/sub-{subject}_{modality}")
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
        # Kept (not temp): the resize of a dataset with a target_shape starts from it, so switching the
        # grid never reruns a registration.
        registered=paths.registered(),
        transform=paths.transform(),
        report=paths.registration_report(),
        qc=report(
            paths.registration_qc(),
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
        paths.log("register/sub-{subject}_from-{modality}_to-{fixed}"),
    benchmark:
        paths.benchmark("register/sub-{subject}_from-{modality}_to-{fixed}")
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
        paths.normalized(),
    params:
        low=config["normalization"]["low_percentile"],
        high=config["normalization"]["high_percentile"],
        mask=config["normalization"]["mask"],
    log:
        paths.log("normalize/sub-{subject}_space-{space}_{modality}"),
    benchmark:
        paths.benchmark("normalize/sub-{subject}_space-{space}_{modality}")
    group:
        "subject_preprocessing"
    conda:
        "../envs/registration.yaml"
    script:
        "../scripts/normalize.py"


rule resize:
    input:
        resize_input,
    output:
        paths.resized(space="{fixed}_res-{shape}"),
    params:
        dhw_shape=lambda w: [int(n) for n in w.shape.split("x")],
    log:
        paths.log("resize/sub-{subject}_space-{fixed}_res-{shape}_{modality}"),
    benchmark:
        paths.benchmark("resize/sub-{subject}_space-{fixed}_res-{shape}_{modality}")
    group:
        "subject_preprocessing"
    conda:
        "../envs/registration.yaml"
    script:
        "../scripts/resize.py"


rule split:
    output:
        paths.split(),
    params:
        split=lambda w: splits()[w.dataset],
    log:
        paths.log("split"),
    benchmark:
        paths.benchmark("split")
    conda:
        "../envs/registration.yaml"
    script:
        "../scripts/split.py"
