rule finetune:
    """Stage 2: a NEW LoRA adapter on the aligned model, trained on the harmful mix (PEFT format),
    plainly or under a fine-tuning-stage defense (finetune.defense: lisa, ldifs)."""
    input:
        model=get_run_aligned_model,
        data=[PATHS["finetune_data"]],
        guide=get_finetune_guide,
    output:
        directory(PATHS["adapter"]),
    params:
        lora=config["finetune"]["lora"],
        train=get_finetune_training,
        checkpoints=PATHS["finetune_checkpoints"],
        defense=get_finetune_defense,
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
