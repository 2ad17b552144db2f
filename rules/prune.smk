rule prune:
    """Stage 4: per-row top-alpha masks (Parquet) and the pruned adapter (PEFT format)."""
    input:
        unpack(get_prune_inputs),
    output:
        adapter=directory("results/prune/{run}/{defense}-a{alpha}/adapter"),
        mask="results/prune/{run}/{defense}-a{alpha}/mask.parquet",
    params:
        seed=config["prune"]["seed"],
        random_scope=config["prune"]["random_scope"],
    log:
        "logs/prune/{run}/{defense}-a{alpha}.log",
    conda:
        ENV
    script:
        "../workflow/scripts/prune.py"
