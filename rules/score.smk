rule score:
    """Stage 3: per-input-feature norms n_j of every LoRA matrix on the harmful calibration set."""
    input:
        model="results/align/model",
        adapter="results/finetune/{run}/adapter",
        calibration=harmful_answers("calibration_pool"),
    output:
        "results/score/{run}/feature_norms.safetensors",
    params:
        prompt_format=config["prompt_format"],
        dtype=config["dtype"],
        calibration_size=config["data"]["calibration_size"],
        batch_size=config["score"]["batch_size"],
        max_length=config["score"]["max_length"],
        device=config["device"],
    threads: 2
    log:
        "logs/score/{run}.log",
    benchmark:
        "benchmarks/score/{run}.tsv"
    resources:
        gpu=1,
        gpu_model=get_gpu_model,
        mem_mb=get_mem_mb,
        runtime=get_runtime,
    conda:
        ENV
    script:
        "../workflow/scripts/score.py"
