rule score:
    """Stage 3: the feature norms n_j of every LoRA matrix on the harmful calibration set, or on
    the benign control (the run's own task items, as many), for the defenses that read them."""
    input:
        unpack(get_calibration_inputs),
        model=get_run_aligned_model,
        adapter=PATHS["adapter"],
    output:
        PATHS["feature_norms"],
    params:
        prompt_format=config["prompt_format"],
        dtype=config["dtype"],
        calibration_size=config["data"]["calibration_size"],
        batch_size=config["score"]["batch_size"],
        max_length=config["score"]["max_length"],
        device=config["device"],
    wildcard_constraints:
        calibration="|".join(CALIBRATIONS),
    threads: 2
    log:
        "logs/score/{run}/{calibration}.log",
    benchmark:
        "benchmarks/score/{run}/{calibration}.tsv"
    resources:
        **model_job("score"),
    conda:
        ENV
    script:
        "../workflow/scripts/score.py"
