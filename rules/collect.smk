localrules:
    collect,


rule collect:
    """One row per evaluated model, judge and harmful set (Parquet, CSV, Markdown), each rate with
    its Wilson interval, the models at the alpha chosen on validation data, and every prompt's
    verdict (judgements.parquet)."""
    input:
        unpack(get_selection),
        metrics=evaluation_files("metrics"),
        answers=evaluation_files("answers"),
    output:
        parquet=PATHS["summary_parquet"],
        csv=report(PATHS["summary_csv"], caption="../workflow/report/summary.rst", category="Tables",
                   labels={"table": "summary"}),
        markdown=PATHS["summary_markdown"],
        judgements=PATHS["judgements"],
    params:
        evaluations=list(evaluations()),
        statistics=config["statistics"],
    log:
        f"{LOGS}collect.log",
    conda:
        ENV
    script:
        "../workflow/scripts/collect.py"
