localrules:
    collect,


rule collect:
    """One row per evaluated model, judge and harmful set: Parquet, CSV and a Markdown table."""
    input:
        evaluated_metrics(),
    output:
        parquet=PATHS["summary_parquet"],
        csv=report(PATHS["summary_csv"], caption="../workflow/report/summary.rst", category="Tables",
                   labels={"table": "summary"}),
        markdown=PATHS["summary_markdown"],
    log:
        f"{LOGS}collect.log",
    conda:
        ENV
    script:
        "../workflow/scripts/collect.py"
