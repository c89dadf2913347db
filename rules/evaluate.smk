# Metrics in both conventions, aggregate tables, and the figures of the report.


rule metrics:
    input:
        unpack(fusion_sources),
        fused=lambda w: fused_path(w.dataset, w.pair, w.subject, w.method),
    output:
        f"{RESULTS}/{{dataset}}/{{pair}}/metrics/sub-{{subject}}_desc-{{method}}_metrics.json",
    params:
        conventions=config["metrics"]["conventions"],
        axis=config["metrics"]["axis"],
    resources:
        mem_mb=metrics_mem_mb,
    log:
        f"{RESULTS}/{{dataset}}/logs/metrics/{{pair}}/sub-{{subject}}_{{method}}.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/benchmarks/metrics/{{pair}}/sub-{{subject}}_{{method}}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/metrics.py"


rule metric_tables:
    input:
        unpack(metric_table_inputs),
    output:
        summary=report(
            f"{RESULTS}/{{dataset}}/{{pair}}/metrics.tsv",
            caption="../report/metrics.rst",
            category="Metrics",
            subcategory="{dataset}",
            labels={"pair": "{pair}", "table": "summary (TSV)"},
        ),
        long=f"{RESULTS}/{{dataset}}/{{pair}}/metrics_long.tsv",
        failed=f"{RESULTS}/{{dataset}}/{{pair}}/failed_subjects.tsv",
        html=report(
            f"{RESULTS}/{{dataset}}/{{pair}}/metrics.html",
            caption="../report/metrics.rst",
            category="Metrics",
            subcategory="{dataset}",
            labels={"pair": "{pair}", "table": "summary"},
        ),
    params:
        modalities=lambda w: [DATASETS[w.dataset]["fixed"], *pair_modalities(w)],
    log:
        f"{RESULTS}/{{dataset}}/logs/metric_tables/{{pair}}.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/benchmarks/metric_tables/{{pair}}.tsv"
    conda:
        "../envs/report.yaml"
    script:
        "../scripts/metric_tables.py"


rule comparison:
    input:
        unpack(comparison_inputs),
    output:
        tsv=f"{RESULTS}/{{dataset}}/{{pair}}/comparison.tsv",
        html=report(
            f"{RESULTS}/{{dataset}}/{{pair}}/comparison.html",
            caption="../report/comparison.rst",
            category="Comparison",
            subcategory="{dataset}",
            labels={"pair": "{pair}", "figure": "table"},
        ),
        png=report(
            f"{RESULTS}/{{dataset}}/{{pair}}/comparison.png",
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
        f"{RESULTS}/{{dataset}}/logs/comparison/{{pair}}.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/benchmarks/comparison/{{pair}}.tsv"
    conda:
        "../envs/report.yaml"
    script:
        "../scripts/comparison.py"


rule fusion_montage:
    input:
        unpack(fusion_sources),
        fused=lambda w: [fused_path(w.dataset, w.pair, w.subject, m) for m in METHODS],
    output:
        report(
            f"{RESULTS}/{{dataset}}/{{pair}}/qc/sub-{{subject}}_montage.png",
            caption="../report/montage.rst",
            category="Fusion",
            subcategory="{dataset} {pair}",
            labels={"subject": "{subject}", "pair": "{pair}"},
        ),
    params:
        labels=lambda w: [*pair_modalities(w), *METHODS],
    log:
        f"{RESULTS}/{{dataset}}/logs/montage/{{pair}}/sub-{{subject}}.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/benchmarks/montage/{{pair}}/sub-{{subject}}.tsv"
    conda:
        "../envs/report.yaml"
    script:
        "../scripts/fusion_montage.py"


rule learning_curve:
    input:
        unpack(learning_curve_input),
    output:
        f"{RESULTS}/{{dataset}}/{{pair}}/model/{{method}}/learning_curve.tsv",
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
        f"{RESULTS}/{{dataset}}/logs/learning_curve/{{pair}}/{{method}}.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/benchmarks/learning_curve/{{pair}}/{{method}}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/learning_curve.py"


rule learning_curve_figure:
    input:
        f"{RESULTS}/{{dataset}}/{{pair}}/model/{{method}}/learning_curve.tsv",
    output:
        report(
            f"{RESULTS}/{{dataset}}/{{pair}}/model/{{method}}/learning_curve.png",
            caption="../report/learning_curve.rst",
            category="Training",
            subcategory="{dataset}",
            labels={"pair": "{pair}", "method": "{method}", "figure": "learning curve"},
        ),
    log:
        f"{RESULTS}/{{dataset}}/logs/learning_curve_figure/{{pair}}/{{method}}.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/benchmarks/learning_curve_figure/{{pair}}/{{method}}.tsv"
    conda:
        "../envs/report.yaml"
    script:
        "../scripts/learning_curve_figure.py"


rule training_curves:
    input:
        f"{RESULTS}/{{dataset}}/{{pair}}/model/{{method}}/training_log.csv",
    output:
        report(
            f"{RESULTS}/{{dataset}}/{{pair}}/model/{{method}}/training_curves.png",
            caption="../report/training.rst",
            category="Training",
            subcategory="{dataset}",
            labels={"pair": "{pair}", "method": "{method}"},
        ),
    log:
        f"{RESULTS}/{{dataset}}/logs/training_curves/{{pair}}/{{method}}.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/benchmarks/training_curves/{{pair}}/{{method}}.tsv"
    conda:
        "../envs/report.yaml"
    script:
        "../scripts/training_curves.py"
