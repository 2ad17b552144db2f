rule prune:
    """Stage 4: per-row top-alpha masks (Parquet) and the pruned adapter (PEFT format)."""
    input:
        unpack(get_prune_inputs),
    output:
        adapter=directory(PATHS["pruned_adapter"]),
        mask=PATHS["mask"],
    params:
        pruned=get_pruned,
        seed=config["prune"]["seed"],
        random_scope=config["prune"]["random_scope"],
        beta=get_setdiff_beta,
    wildcard_constraints:
        model=one_of(MASKED),
    log:
        "logs/prune/{run}/{model}.log",
    resources:
        # CPU work on the adapter's matrices only (201M weights at 7B, r=256), not the profile's hour: in a
        # group (slurm/config.yaml) a job's time adds to its allocation's
        runtime=lambda wildcards, attempt: 10 * attempt,
    conda:
        ENV
    script:
        "../workflow/scripts/prune.py"


rule safelora:
    """Stage 4, SafeLoRA: the adapter's lora_B projected onto the alignment update in the modules
    whose update points furthest from it (PEFT format), and each module's cosine (Parquet)."""
    input:
        adapter=PATHS["adapter"],
        alignment=get_run_alignment_adapter,
    output:
        adapter=directory(PATHS["pruned_adapter"]),
        projection=PATHS["projection"],
    params:
        pruned=get_pruned,
    wildcard_constraints:
        model=one_of(PROJECTED),
    log:
        "logs/safelora/{run}/{model}.log",
    resources:
        # CPU work on the adapter's matrices only (201M weights at 7B, r=256), not the profile's hour: in a
        # group (slurm/config.yaml) a job's time adds to its allocation's
        runtime=lambda wildcards, attempt: 10 * attempt,
    conda:
        ENV
    script:
        "../workflow/scripts/safelora.py"
