# LPM-Net training per dataset and modality pair, fusion of the test subjects, classical references.


def training_input(wildcards):
    first, second = pair_modalities(wildcards)
    subjects = subjects_in(SPLITS[wildcards.dataset], "train")
    return {
        "split": f"{RESULTS}/{wildcards.dataset}/split.tsv",
        "x1": [normalized(wildcards.dataset, s, first) for s in subjects],
        "x2": [normalized(wildcards.dataset, s, second) for s in subjects],
    }


def training_params(wildcards):
    """Every setting that changes the trained model, so that editing one retrains exactly this model."""
    t = config["training"]
    return dict(
        iterations=t["iterations"], batch_size=t["batch_size"], patch_size=t["patch_size"] or None,
        lr=t["lr"], weight_decay=t["weight_decay"], seed=t["seed"], loss_mode=t["loss_mode"],
        alpha=t["alpha"], beta=t["beta"], gamma=t["gamma"], checkpoint_every=t["checkpoint_every"],
        model=t["model"],
    )


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
        mem_mb=8000,
        runtime=240,
    log:
        f"{RESULTS}/{{dataset}}/logs/train/{{pair}}.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/benchmarks/train/{{pair}}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/train.py"


def fusion_sources(wildcards):
    first, second = pair_modalities(wildcards)
    return {
        "x1": normalized(wildcards.dataset, wildcards.subject, first),
        "x2": normalized(wildcards.dataset, wildcards.subject, second),
    }


rule fuse_lpmnet:
    input:
        unpack(fusion_sources),
        model=f"{RESULTS}/{{dataset}}/{{pair}}/model/model.pt",
    output:
        fused=f"{RESULTS}/{{dataset}}/{{pair}}/fused/sub-{{subject}}_space-{{fixed}}_desc-lpmnet_fused.nii.gz",
        sidecar=f"{RESULTS}/{{dataset}}/{{pair}}/fused/sub-{{subject}}_space-{{fixed}}_desc-lpmnet_fused.json",
    params:
        device=config["fusion"]["device"],
        tile=config["fusion"]["tile"] or None,
    threads: 2
    resources:
        gpu=gpu_resources("fusion"),
        mem_mb=8000,
        runtime=30,
    log:
        f"{RESULTS}/{{dataset}}/logs/fuse/{{pair}}/sub-{{subject}}_space-{{fixed}}_lpmnet.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/benchmarks/fuse/{{pair}}/sub-{{subject}}_space-{{fixed}}_lpmnet.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/fuse.py"


rule fuse_classical:
    input:
        unpack(fusion_sources),
    output:
        fused=f"{RESULTS}/{{dataset}}/{{pair}}/fused/sub-{{subject}}_space-{{fixed}}_desc-{{method}}_fused.nii.gz",
        sidecar=f"{RESULTS}/{{dataset}}/{{pair}}/fused/sub-{{subject}}_space-{{fixed}}_desc-{{method}}_fused.json",
    wildcard_constraints:
        method="|".join(config["fusion"]["classical"]) or "none",
    log:
        f"{RESULTS}/{{dataset}}/logs/fuse/{{pair}}/sub-{{subject}}_space-{{fixed}}_{{method}}.log",
    conda:
        "../envs/registration.yaml"
    script:
        "../scripts/fuse_classical.py"
