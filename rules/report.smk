report: "../workflow/report/workflow.rst"


localrules:
    tables,
    paired,
    plots,
    mask_stats,


rule tables:
    """HS, BR and FA per defense (and harmful set) over seeds, each rate with its interval: the main comparison and one table per swept axis."""
    input:
        summary=rules.collect.output.parquet,
        judgements=rules.collect.output.judgements,
    output:
        csv=[
            report(f"{PATHS['tables']}/{name}.csv", caption="../workflow/report/tables.rst", category="Tables",
                   labels={"table": name})
            for name in table_names(SWEPT_AXES)
        ],
        markdown=[f"{PATHS['tables']}/{name}.md" for name in table_names(SWEPT_AXES)],
    params:
        statistics=config["statistics"],
    log:
        f"{LOGS}tables.log",
    conda:
        ENV
    script:
        "../workflow/scripts/tables.py"


rule paired:
    """Each defense against sft, against the aligned model and against its controls, on the pairs of
    prompts both answered: the difference, its interval and the p-value of the paired test."""
    input:
        summary=rules.collect.output.parquet,
        judgements=rules.collect.output.judgements,
    output:
        csv=report(f"{PATHS['tables']}/paired.csv", caption="../workflow/report/paired.rst", category="Tables",
                   labels={"table": "paired"}),
        markdown=f"{PATHS['tables']}/paired.md",
    params:
        statistics=config["statistics"],
    log:
        f"{LOGS}paired.log",
    conda:
        ENV
    script:
        "../workflow/scripts/paired.py"


rule plots:
    """HS against FA per defense, and HS, BR and FA against alpha and every other swept axis (panels per judge and harmful set), with intervals."""
    input:
        summary=rules.collect.output.parquet,
        judgements=rules.collect.output.judgements,
    output:
        [
            report(f"{PATHS['plots']}/{name}.png", caption="../workflow/report/plots.rst", category="Plots",
                   labels={"plot": name})
            for name in plot_names(SWEPT_AXES, masked=bool(ALPHAS))
        ],
    params:
        statistics=config["statistics"],
    log:
        f"{LOGS}plots.log",
    conda:
        ENV
    script:
        "../workflow/scripts/plots.py"


rule mask_stats:
    """Where the masks sit: overlap between the defenses of a run and alpha, and pruned-entry
    density per layer, module and LoRA matrix (read from the mask files; SafeLoRA masks nothing)."""
    input:
        [PATHS["mask"].format(run=run, model=model) for run, model in MASKED_MODELS],
    output:
        overlap=[f"{PATHS['tables']}/mask_overlap.csv", f"{PATHS['tables']}/mask_overlap.md"],
        density=f"{PATHS['tables']}/mask_density.csv",
        plot=report(f"{PATHS['plots']}/mask_density.png", caption="../workflow/report/plots.rst",
                    category="Plots", labels={"plot": "mask_density"}),
    params:
        models=MASKED_MODELS,
        pruned={name: PRUNED[name] for name in MASKED},
    log:
        f"{LOGS}mask_stats.log",
    conda:
        ENV
    script:
        "../workflow/scripts/mask_stats.py"
