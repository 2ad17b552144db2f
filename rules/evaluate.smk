rule evaluate:
    """Stage 5: harmful score (every judge, every harmful set), benign refusal and fine-tune accuracy of one model of a run."""
    input:
        unpack(get_evaluated_model),
        harmful=[external(s["path"]) for s in harmful_sets()],
        benign=external(benign_prompts()["path"]),
        task=get_task_eval,
        judges=[external(judge["path"]) for judge in config["evaluate"]["judges"] if "path" in judge],
    output:
        metrics=PATHS["run_metrics"],
        answers=PATHS["run_answers"],
    params:
        **evaluation_params(harmful_sets(), benign_prompts(), config["evaluate"]["judges"]),
    wildcard_constraints:
        model="|".join(map(re.escape, ["sft", *PRUNED])),
    threads: 2
    log:
        f"{LOGS}evaluate/{{run}}/{{model}}.log",
    benchmark:
        f"{BENCHMARKS}evaluate/{{run}}/{{model}}.tsv"
    resources:
        **model_job("evaluate"),
    conda:
        ENV
    script:
        "../workflow/scripts/evaluate.py"


use rule evaluate as evaluate_reference with:
    # The base model and every aligned model, evaluated once per task (no run, no adapter).
    output:
        metrics=PATHS["reference_metrics"],
        answers=PATHS["reference_answers"],
    wildcard_constraints:
        model="|".join(map(re.escape, REFERENCES)),
    log:
        f"{LOGS}evaluate/reference/{{task}}/{{model}}.log",
    benchmark:
        f"{BENCHMARKS}evaluate/reference/{{task}}/{{model}}.tsv"
