# Metrics in both conventions, aggregate tables, the figures and viewer pages, and the report.


localrules:
    report,


rule metrics:
    input:
        unpack(fusion_sources),
        fused=lambda w: fused_path(w.dataset, w.pair, w.subject, w.method),
    output:
        paths.subject_metrics(),
    params:
        conventions=config["metrics"]["conventions"],
        axis=config["metrics"]["axis"],
    resources:
        mem_mb=metrics_mem_mb,
    log:
        paths.log("metrics/{pair}/sub-{subject}_{method}"),
    benchmark:
        paths.benchmark("metrics/{pair}/sub-{subject}_{method}")
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/metrics.py"


rule metric_tables:
    input:
        unpack(metric_table_inputs),
    output:
        summary=report(
            paths.metrics_summary(),
            caption="../report/metrics.rst",
            category="Metrics",
            subcategory="{dataset}",
            labels={"pair": "{pair}", "table": "summary (TSV)"},
        ),
        long=paths.metrics_long(),
        failed=paths.failed_subjects(),
        html=report(
            paths.metrics_html(),
            caption="../report/metrics.rst",
            category="Metrics",
            subcategory="{dataset}",
            labels={"pair": "{pair}", "table": "summary"},
        ),
    params:
        modalities=lambda w: [DATASETS[w.dataset]["fixed"], *pair_modalities(w)],
        colour_map=pair_colour_map,
    log:
        paths.log("metric_tables/{pair}"),
    benchmark:
        paths.benchmark("metric_tables/{pair}")
    conda:
        "../envs/report.yaml"
    script:
        "../scripts/metric_tables.py"


rule comparison:
    input:
        unpack(comparison_inputs),
    output:
        tsv=paths.comparison(extension="tsv"),
        html=report(
            paths.comparison(extension="html"),
            caption="../report/comparison.rst",
            category="Comparison",
            subcategory="{dataset}",
            labels={"pair": "{pair}", "figure": "table"},
        ),
        png=report(
            paths.comparison(extension="png"),
            caption="../report/comparison.rst",
            category="Comparison",
            subcategory="{dataset}",
            labels={"pair": "{pair}", "figure": "box plots"},
        ),
    params:
        methods=METHODS,
        trained=TRAINED,
        reference=REFERENCE,
    log:
        paths.log("comparison/{pair}"),
    benchmark:
        paths.benchmark("comparison/{pair}")
    conda:
        "../envs/report.yaml"
    script:
        "../scripts/comparison.py"


rule fusion_montage:
    input:
        unpack(fusion_sources),
        unpack(montage_colour),
        fused=lambda w: [fused_path(w.dataset, w.pair, w.subject, m) for m in METHODS],
    output:
        report(
            paths.montage(),
            caption="../report/montage.rst",
            category="Fusion",
            subcategory="{dataset} {pair}",
            labels={"subject": "{subject}", "pair": "{pair}"},
        ),
    params:
        labels=lambda w: [*pair_modalities(w), *METHODS],
        colour_map=lambda w: DATASETS[w.dataset]["colour_map"],
    log:
        paths.log("montage/{pair}/sub-{subject}"),
    benchmark:
        paths.benchmark("montage/{pair}/sub-{subject}")
    conda:
        "../envs/report.yaml"
    script:
        "../scripts/fusion_montage.py"


rule viewer:
    input:
        unpack(viewer_inputs),
    output:
        paths.viewer(),
    params:
        labels=lambda w: [*pair_modalities(w), *METHODS],
        colour_map=pair_colour_map,
    resources:
        mem_mb=viewer_mem_mb,
    log:
        paths.log("viewer/{pair}/sub-{subject}"),
    benchmark:
        paths.benchmark("viewer/{pair}/sub-{subject}")
    conda:
        "../envs/report.yaml"
    script:
        "../scripts/viewer.py"


rule report:
    input:
        unpack(report_inputs),
    output:
        paths.report(),
    params:
        reference=REFERENCE,
        colour=[f"{name}/{pair}" for name in DATASETS for pair in PAIRS[name] if is_colour_pair(name, pair)],
    log:
        paths.report_log(),
    benchmark:
        paths.report_benchmark()
    conda:
        "../envs/report.yaml"
    script:
        "../scripts/report.py"


rule learning_curve:
    input:
        unpack(learning_curve_input),
    output:
        paths.learning_curve_table(),
    wildcard_constraints:
        method=alternatives(TRAINED),
    params:
        checkpoints=kept_checkpoints,
        network=lambda w: METHOD_CONFIGS[w.method]["network"],
        settings=lambda w: METHOD_CONFIGS[w.method]["fusion"],
        device=config["fusion"]["device"],
    threads: config["fusion"]["threads"]
    resources:
        gpu=gpu_resources("fusion"),
        mem_mb=fusion_mem_mb,
        runtime=60,
    log:
        paths.log("learning_curve/{pair}/{method}"),
    benchmark:
        paths.benchmark("learning_curve/{pair}/{method}")
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/learning_curve.py"


rule learning_curve_figure:
    input:
        paths.learning_curve_table(),
    output:
        report(
            paths.learning_curve_figure(),
            caption="../report/learning_curve.rst",
            category="Training",
            subcategory="{dataset}",
            labels={"pair": "{pair}", "method": "{method}", "figure": "learning curve"},
        ),
    log:
        paths.log("learning_curve_figure/{pair}/{method}"),
    benchmark:
        paths.benchmark("learning_curve_figure/{pair}/{method}")
    conda:
        "../envs/report.yaml"
    script:
        "../scripts/learning_curve_figure.py"


rule training_curves:
    input:
        paths.training_log(),
    output:
        report(
            paths.training_curves(),
            caption="../report/training.rst",
            category="Training",
            subcategory="{dataset}",
            labels={"pair": "{pair}", "method": "{method}"},
        ),
    log:
        paths.log("training_curves/{pair}/{method}"),
    benchmark:
        paths.benchmark("training_curves/{pair}/{method}")
    conda:
        "../envs/report.yaml"
    script:
        "../scripts/training_curves.py"
