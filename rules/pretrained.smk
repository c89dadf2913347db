# The pretrained LPM-Net models that ship with the package (lpmnet/pretrained/): one model per kind of
# modality pair, trained on the training subjects of the dataset that config section `pretrained` names,
# validated on its test subjects. Only the target `pretrained` asks for them: `make pretrained` runs it with
# config/pretrained.yaml and copies the models and their card into the package.


rule pretrain:
    input:
        unpack(pretraining_input),
    output:
        model=f"{RESULTS}/pretrained/{{kind}}/model.pt",
        log_csv=f"{RESULTS}/pretrained/{{kind}}/training_log.csv",
    wildcard_constraints:
        kind=alternatives(PRETRAINED_MODELS),
    params:
        config=PRETRAINED_TRAINING,
        device=config["training"]["device"],
        out_dir=lambda w, output: str(Path(output.model).parent),
        card=lambda w: {"name": f"lpmnet_{w.kind}", "kind": w.kind, "dataset": PRETRAINED_DATASET,
                        "pairs": PRETRAINED_MODELS[w.kind]["pairs"]},
    threads: config["training"]["threads"]
    resources:
        gpu=gpu_resources("training"),
        runtime=240,
    log:
        f"{RESULTS}/pretrained/logs/pretrain_{{kind}}.log",
    benchmark:
        f"{RESULTS}/pretrained/benchmarks/pretrain_{{kind}}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/train.py"


rule pretrained_card:
    input:
        models=expand(f"{RESULTS}/pretrained/{{kind}}/model.pt", kind=PRETRAINED_MODELS),
        logs=expand(f"{RESULTS}/pretrained/{{kind}}/training_log.csv", kind=PRETRAINED_MODELS),
    output:
        f"{RESULTS}/pretrained/MODEL_CARD.md",
    params:
        kinds=list(PRETRAINED_MODELS),
        dataset=lambda w: DATASETS[PRETRAINED_DATASET],
    log:
        f"{RESULTS}/pretrained/logs/model_card.log",
    benchmark:
        f"{RESULTS}/pretrained/benchmarks/model_card.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/model_card.py"
