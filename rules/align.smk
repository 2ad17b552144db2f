rule align:
    """Stage 1: LoRA SFT of the base model on harmful prompt -> refusal (+ benign), merged; the
    adapter it merged is kept too (SafeLoRA's alignment update)."""
    input:
        model=external(config["base_model"]),
        data=alignment_data(),
    output:
        model=directory(PATHS["aligned_model"]),
        adapter=directory(PATHS["alignment_adapter"]),
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
        **model_job("align"),
    conda:
        ENV
    script:
        "../workflow/scripts/train.py"
