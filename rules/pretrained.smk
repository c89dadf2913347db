# The pretrained LPM-Net models that ship with the package (lpmnet/methods/lpmnet/weights/): one model per kind
# of modality pair, trained on the training subjects of the datasets that config section `pretrained` names,
# validated during training on their other test subjects, then on the held-out datasets' pairs against the
# classical rules. Only the target `pretrained` asks for them: `make pretrained` runs it with
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
        config=lambda w: PRETRAINED_TRAINING[w.kind],
        device=config["training"]["device"],
        out_dir=lambda w, output: str(Path(output.model).parent),
        card=lambda w: {"name": f"lpmnet_{w.kind}", "kind": w.kind, "datasets": PRETRAINED_DATASETS,
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


# Each model on the held-out pairs of its kind, under the workflow's and a head-only normalisation, against
# the mean, max and Laplacian-pyramid fusions (lpmnet.evaluation.heldout).
rule pretrained_held_out:
    input:
        unpack(held_out_input),
    output:
        paths.pretrained_held_out(),
    wildcard_constraints:
        kind=alternatives(PRETRAINED_MODELS),
    params:
        pairs=held_out_labels,
        normalization=config["normalization"],
        device=config["training"]["device"],
    threads: config["training"]["threads"]
    resources:
        gpu=gpu_resources("training"),
    log:
        paths.pretrained_job_log("held_out_{kind}"),
    benchmark:
        paths.pretrained_benchmark("held_out_{kind}")
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/held_out.py"


rule pretrained_card:
    input:
        models=expand(paths.pretrained_model(), kind=PRETRAINED_MODELS),
        logs=expand(paths.pretrained_log(), kind=PRETRAINED_MODELS),
        held_out=expand(paths.pretrained_held_out(), kind=PRETRAINED_MODELS),
    output:
        paths.model_card(),
    params:
        kinds=list(PRETRAINED_MODELS),
        datasets=lambda w: {name: DATASETS[name] for name in [*PRETRAINED_DATASETS, *PRETRAINED_HELD_OUT]},
        held_out=PRETRAINED_HELD_OUT,
    log:
        paths.pretrained_job_log("model_card"),
    benchmark:
        paths.pretrained_benchmark("model_card")
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/model_card.py"
