rule score:
    """Stage 3: the feature norms n_j of every LoRA matrix on the harmful calibration set."""
    input:
        model=PATHS["aligned_model"],
        adapter=PATHS["adapter"],
        calibration=harmful_answers("calibration_pool"),
    output:
        PATHS["feature_norms"],
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
        **MODEL_JOB,
    conda:
        ENV
    script:
        "../workflow/scripts/score.py"
