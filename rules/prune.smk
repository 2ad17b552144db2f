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
    wildcard_constraints:
        model="|".join(map(re.escape, PRUNED)),
    log:
        "logs/prune/{run}/{model}.log",
    conda:
        ENV
    script:
        "../workflow/scripts/prune.py"
