rule data_splits:
    """Disjoint, seeded prompt splits: alignment, harmful pools, validation/test, task."""
    input:
        unpack(get_split_inputs),
    output:
        [split_file(name) for name in SPLIT_NAMES],
        report=PATHS["splits_report"],
    params:
        sources=get_split_sources,
        data=get_split_settings,
    log:
        "logs/data_splits.log",
    conda:
        ENV
    script:
        "../workflow/scripts/data_splits.py"


rule repnoise_split:
    """RepNoise's harmful prompts (data.sizes.repnoise_pool): cut from the same source after every
    other split, so disjoint from them all; a rule of its own, so that asking for them re-cuts nothing else."""
    input:
        unpack(get_split_inputs),
    output:
        split_file("repnoise_pool"),
    params:
        sources=get_split_sources,
        data=get_defense_split_settings,
    log:
        "logs/repnoise_split.log",
    conda:
        ENV
    script:
        "../workflow/scripts/data_splits.py"


rule base_answers:
    """The base model answers a split; for harmful pools its refusals are dropped."""
    input:
        model=external(config["base_model"]),
        prompts=PATHS["split"],
    output:
        PATHS["base_answers"],
    params:
        keep=get_answer_filter,
        prompt_format=config["prompt_format"],
        dtype=config["dtype"],
        max_new_tokens=config["data"]["answer_max_new_tokens"],
        batch_size=config["data"]["generation_batch_size"],
        device=config["device"],
    wildcard_constraints:
        split="alignment_benign|harmful_finetune_pool|calibration_pool|repnoise_pool",
    threads: 2
    log:
        "logs/base_answers/{split}.log",
    benchmark:
        "benchmarks/base_answers/{split}.tsv"
    resources:
        **model_job("base_answers"),
    conda:
        ENV
    script:
        "../workflow/scripts/base_answers.py"


rule finetune_data:
    """The user's fine-tuning set: N task items of which a fraction p is harmful."""
    input:
        task=get_task_train,
        harmful=harmful_answers("harmful_finetune_pool"),
    output:
        PATHS["finetune_data"],
    params:
        run=get_run,
        in_file_order=IN_FILE_ORDER,
    log:
        "logs/finetune_data/{run}.log",
    conda:
        ENV
    script:
        "../workflow/scripts/finetune_data.py"


rule task_data:
    """Train, validation and eval items of a fine-tuning task: the user's files, or the task's built-in stand-in."""
    input:
        unpack(get_task_sources),
    output:
        train=PATHS["task_train"],
        validation=PATHS["task_validation"],
        eval=PATHS["task_eval"],
    params:
        spec=get_task_spec,
        sizes={split: config["data"]["sizes"][split] for split in TASK_SPLIT_NAMES},
        seed=config["data"]["seed"],
        in_file_order=IN_FILE_ORDER,
    log:
        "logs/task_data/{task}.log",
    conda:
        ENV
    script:
        "../workflow/scripts/task_data.py"
