# LPM-Net training per dataset and modality pair, fusion of the test subjects, classical references.


rule train:
    input:
        unpack(training_input),
    output:
        model=f"{RESULTS}/{{dataset}}/{{pair}}/model/model.pt",
        log_csv=f"{RESULTS}/{{dataset}}/{{pair}}/model/training_log.csv",
    params:
        config=training_params,
        device=config["training"]["device"],
        out_dir=lambda w, output: str(Path(output.model).parent),
    threads: config["training"]["threads"]
    resources:
        gpu=gpu_resources("training"),
        mem_mb=training_mem_mb,
        runtime=240,
    log:
        f"{RESULTS}/{{dataset}}/logs/train/{{pair}}.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/benchmarks/train/{{pair}}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/train.py"


rule fuse_lpmnet:
    input:
        unpack(fusion_sources),
        model=f"{RESULTS}/{{dataset}}/{{pair}}/model/model.pt",
    output:
        fused=f"{RESULTS}/{{dataset}}/{{pair}}/fused/sub-{{subject}}_space-{{space}}_desc-lpmnet_fused.nii.gz",
        sidecar=f"{RESULTS}/{{dataset}}/{{pair}}/fused/sub-{{subject}}_space-{{space}}_desc-lpmnet_fused.json",
    params:
        device=config["fusion"]["device"],
        tile=config["fusion"]["tile"] or None,
        memory_budget_mb=config["fusion"]["memory_budget_mb"],
    threads: 2
    resources:
        gpu=gpu_resources("fusion"),
        mem_mb=fusion_mem_mb,
        runtime=30,
    log:
        f"{RESULTS}/{{dataset}}/logs/fuse/{{pair}}/sub-{{subject}}_space-{{space}}_lpmnet.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/benchmarks/fuse/{{pair}}/sub-{{subject}}_space-{{space}}_lpmnet.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/fuse.py"


rule fuse_classical:
    input:
        unpack(fusion_sources),
    output:
        fused=f"{RESULTS}/{{dataset}}/{{pair}}/fused/sub-{{subject}}_space-{{space}}_desc-{{method}}_fused.nii.gz",
        sidecar=f"{RESULTS}/{{dataset}}/{{pair}}/fused/sub-{{subject}}_space-{{space}}_desc-{{method}}_fused.json",
    wildcard_constraints:
        method="|".join(config["fusion"]["classical"]) or "none",
    log:
        f"{RESULTS}/{{dataset}}/logs/fuse/{{pair}}/sub-{{subject}}_space-{{space}}_{{method}}.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/benchmarks/fuse/{{pair}}/sub-{{subject}}_space-{{space}}_{{method}}.tsv"
    conda:
        "../envs/registration.yaml"
    script:
        "../scripts/fuse_classical.py"
