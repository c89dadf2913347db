# Training of every trained method per dataset and modality pair, fusion of the test subjects with every
# method, classical references. The methods and their settings: config section `methods`.


rule train:
    input:
        unpack(training_input),
    output:
        model=paths.model(),
        log_csv=paths.training_log(),
    wildcard_constraints:
        method=alternatives(TRAINED),
    params:
        config=training_config,
        device=config["training"]["device"],
        out_dir=lambda w, output: str(Path(output.model).parent),
        card=lambda w: {"name": w.method, "dataset": w.dataset, "pair": w.pair},
    threads: config["training"]["threads"]
    resources:
        gpu=gpu_resources("training"),
        mem_mb=training_mem_mb,
        runtime=240,
    log:
        paths.log("train/{pair}/{method}"),
    benchmark:
        paths.benchmark("train/{pair}/{method}")
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/train.py"


rule fuse:
    input:
        unpack(fusion_sources),
        model=lambda w: method_checkpoint(w.dataset, w.pair, w.method),
    output:
        fused=paths.fused(),
        sidecar=paths.fused_sidecar(),
    wildcard_constraints:
        method=alternatives(METHOD_CONFIGS),
    params:
        network=lambda w: METHOD_CONFIGS[w.method]["network"],
        settings=lambda w: METHOD_CONFIGS[w.method]["fusion"],
        device=config["fusion"]["device"],
        reference=lambda w: space_reference(w.dataset, w.subject),
        bids=derivative_params,
    threads: config["fusion"]["threads"]
    resources:
        gpu=gpu_resources("fusion"),
        mem_mb=fusion_mem_mb,
        runtime=30,
    log:
        paths.log("fuse/{pair}/sub-{subject}_space-{space}_{method}"),
    benchmark:
        paths.benchmark("fuse/{pair}/sub-{subject}_space-{space}_{method}")
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/fuse.py"


rule fuse_classical:
    input:
        unpack(fusion_sources),
    output:
        fused=paths.fused(),
        sidecar=paths.fused_sidecar(),
    wildcard_constraints:
        method=alternatives(config["fusion"]["classical"]),
    params:
        reference=lambda w: space_reference(w.dataset, w.subject),
        bids=derivative_params,
    log:
        paths.log("fuse/{pair}/sub-{subject}_space-{space}_{method}"),
    benchmark:
        paths.benchmark("fuse/{pair}/sub-{subject}_space-{space}_{method}")
    conda:
        "../envs/registration.yaml"
    script:
        "../scripts/fuse_classical.py"


# The colour fusion of a colour pair: every method's fused luminance with the functional volume's chrominance.
rule colour_fusion:
    input:
        unpack(colour_fusion_input),
    output:
        rgb=paths.fused_colour(),
        sidecar=sidecar(paths.fused_colour()),
    params:
        colour_map=lambda w: DATASETS[w.dataset]["colour_map"],
        reference=lambda w: space_reference(w.dataset, w.subject),
        bids=derivative_params,
    log:
        paths.log("colour_fusion/{pair}/sub-{subject}_space-{space}_{method}"),
    benchmark:
        paths.benchmark("colour_fusion/{pair}/sub-{subject}_space-{space}_{method}")
    conda:
        "../envs/registration.yaml"
    script:
        "../scripts/colour_fusion.py"
