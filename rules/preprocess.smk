# Per subject: optional N4, registration of each moving modality onto the fixed one, (datasets with a
# target_shape) the paper-style resize, and normalisation: the last step, and the only one that scales
# intensities, so that every model input is exactly the normalize rule's output.


rule n4_bias_correction:
    input:
        paths.converted(),
    output:
        temp(paths.n4()),
        sidecar=temp(sidecar(paths.n4())),
    params:
        seed=config["registration"]["seed"],
        bids=derivative_params,
    threads: config["registration"]["threads"]
    log:
        paths.log("n4/{scan_dir}/sub-{subject}_{modality}"),
    benchmark:
        paths.benchmark("n4/{scan_dir}/sub-{subject}_{modality}")
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
        sidecar=sidecar(paths.registered()),
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
        reference=lambda w: paths.converted(w.dataset, w.subject, w.fixed),
        bids=derivative_params,
    threads: config["registration"]["threads"]
    resources:
        mem_mb=registration_mem_mb,
    log:
        paths.log("register/{scan_dir}/sub-{subject}_from-{modality}_to-{fixed}"),
    benchmark:
        paths.benchmark("register/{scan_dir}/sub-{subject}_from-{modality}_to-{fixed}")
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
        sidecar=sidecar(paths.normalized()),
    params:
        bids=derivative_params,
        low=config["normalization"]["low_percentile"],
        high=config["normalization"]["high_percentile"],
        mask=config["normalization"]["mask"],
    log:
        paths.log("normalize/{scan_dir}/sub-{subject}_space-{space}_{modality}"),
    benchmark:
        paths.benchmark("normalize/{scan_dir}/sub-{subject}_space-{space}_{modality}")
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
        sidecar=sidecar(paths.resized(space="{fixed}_res-{shape}")),
    params:
        reference=lambda w: paths.resized(w.dataset, w.subject, f"{w.fixed}_res-{w.shape}", w.fixed),
        bids=derivative_params,
        dhw_shape=lambda w: [int(n) for n in w.shape.split("x")],
    log:
        paths.log("resize/{scan_dir}/sub-{subject}_space-{fixed}_res-{shape}_{modality}"),
    benchmark:
        paths.benchmark("resize/{scan_dir}/sub-{subject}_space-{fixed}_res-{shape}_{modality}")
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


# A functional modality of a colour pair (README: "Colour fusion of PET and SPECT"), as the methods read it:
# its luminance through the dataset's colour map.
rule luminance:
    input:
        paths.normalized(),
    output:
        paths.luminance(),
        sidecar=sidecar(paths.luminance()),
    params:
        colour_map=lambda w: DATASETS[w.dataset]["colour_map"],
        bids=derivative_params,
    log:
        paths.log("luminance/{scan_dir}/sub-{subject}_space-{space}_{modality}"),
    benchmark:
        paths.benchmark("luminance/{scan_dir}/sub-{subject}_space-{space}_{modality}")
    group:
        "subject_preprocessing"
    conda:
        "../envs/registration.yaml"
    script:
        "../scripts/luminance.py"
