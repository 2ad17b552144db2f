rule align:
    """Stage 1: LoRA SFT of the base model on harmful prompt -> refusal (+ benign), merged."""
    input:
        model=external(config["base_model"]),
        data=alignment_data(),
    output:
        directory(PATHS["aligned_model"]),
    params:
        lora=config["align"]["lora"],
        train=training_settings(config["align"]["train"]),
        checkpoints=PATHS["align_checkpoints"],
        prompt_format=config["prompt_format"],
        dtype=config["dtype"],
        device=config["device"],
        merge=True,
    threads: 2
    log:
        "logs/align.log",
    benchmark:
        "benchmarks/align.tsv"
    resources:
        **MODEL_JOB,
    conda:
        ENV
    script:
        "../workflow/scripts/train.py"
