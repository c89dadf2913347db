# The pretrained LPM-Net models that ship with the package (lpmnet/pretrained/): one model per kind of
# modality pair, trained on the training subjects of the dataset that config section `pretrained` names,
# validated on its test subjects. Only the target `pretrained` asks for them: `make pretrained` runs it with
# config/pretrained.yaml and copies the models and their card into the package.


rule pretrain:
    input:
        unpack(pretraining_input),
    output:
        model=paths.pretrained_model(),
        log_csv=paths.pretrained_log(),
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
        paths.pretrained_job_log("pretrain_{kind}"),
    benchmark:
        paths.pretrained_benchmark("pretrain_{kind}")
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/train.py"


rule pretrained_card:
    input:
        models=expand(paths.pretrained_model(), kind=PRETRAINED_MODELS),
        logs=expand(paths.pretrained_log(), kind=PRETRAINED_MODELS),
    output:
        paths.model_card(),
    params:
        kinds=list(PRETRAINED_MODELS),
        dataset=lambda w: DATASETS[PRETRAINED_DATASET],
    log:
        paths.pretrained_job_log("model_card"),
    benchmark:
        paths.pretrained_benchmark("model_card")
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/model_card.py"
