rule finetune:
    """Stage 2: a NEW LoRA adapter on the aligned model, trained on the harmful mix (PEFT format)."""
    input:
        model=PATHS["aligned_model"],
        data=[PATHS["finetune_data"]],
    output:
        directory(PATHS["adapter"]),
    params:
        lora=config["finetune"]["lora"],
        train=get_finetune_training,
        checkpoints=PATHS["finetune_checkpoints"],
        prompt_format=config["prompt_format"],
        dtype=config["dtype"],
        device=config["device"],
        merge=False,
    threads: 2
    log:
        "logs/finetune/{run}.log",
    benchmark:
        "benchmarks/finetune/{run}.tsv"
    resources:
        **model_job("finetune"),
    conda:
        ENV
    script:
        "../workflow/scripts/train.py"
