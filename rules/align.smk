rule align:
    """Stage 1: LoRA SFT of the base model on harmful prompt -> refusal (+ benign), merged; the
    adapter it merged is kept too (SafeLoRA's alignment update). An alignment-stage defense
    (align.defense: vaccine, repnoise) makes an aligned model of its own (results/align+vaccine/)."""
    input:
        model=external(config["base_model"]),
        data=alignment_data(),
        guide=get_align_guide,
    output:
        model=directory(PATHS["aligned_model"]),
        adapter=directory(PATHS["alignment_adapter"]),
    params:
        lora=config["align"]["lora"],
        train=training_settings(config["align"]["train"]),
        checkpoints=PATHS["align_checkpoints"],
        defense=get_align_defense,
        prompt_format=config["prompt_format"],
        dtype=config["dtype"],
        device=config["device"],
        merge=True,
    threads: 2
    log:
        "logs/align{align}.log",
    benchmark:
        "benchmarks/align{align}.tsv"
    resources:
        **model_job("align"),
    conda:
        ENV
    script:
        "../workflow/scripts/train.py"
