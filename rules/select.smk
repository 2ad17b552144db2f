# Alpha chosen on validation data only: every point of a defense's curve, and the aligned model,
# answer the harmful_validation prompts (judged by the first judge; with criterion accuracy also the
# task's validation items, never a test item), and rule select_alpha picks one alpha per run and
# defense (prune.select). Its test metrics are rows of their own in the summary (antidote@val).
localrules:
    select_alpha,


use rule evaluate as evaluate_for_selection with:
    input:
        unpack(get_evaluated_model),
        unpack(get_selection_task),
        harmful=split_file("harmful_validation"),
        judges=[external(SELECTION_JUDGE["path"])] if "path" in SELECTION_JUDGE else [],
    output:
        metrics=PATHS["selection_metrics"],
        answers=PATHS["selection_answers"],
    params:
        **evaluation_params([{"name": "harmful_validation", "path": split_file("harmful_validation")}], None,
                            [SELECTION_JUDGE]),
    wildcard_constraints:
        model=one_of(sorted({m["model"] for m in SELECTION_MODELS})),
    log:
        "logs/selection/evaluate/{run}/{model}.log",
    benchmark:
        "benchmarks/selection/evaluate/{run}/{model}.tsv"
    resources:
        **model_job("evaluate_for_selection"),


use rule evaluate_for_selection as evaluate_reference_for_selection with:
    # the aligned model on the same prompts: the margin criterion's reference
    output:
        metrics=PATHS["selection_reference_metrics"],
        answers=PATHS["selection_reference_answers"],
    wildcard_constraints:
        model="aligned",
    log:
        "logs/selection/evaluate/reference/{task}/{model}.log",
    benchmark:
        "benchmarks/selection/evaluate/reference/{task}/{model}.tsv"


rule select_alpha:
    """Per fine-tuning run and masking defense, the alpha its validation curve supports (prune.select)."""
    input:
        curves=[PATHS["selection_metrics"].format(run=m["run"], model=m["model"]) for m in SELECTION_MODELS],
        references=[PATHS["selection_reference_metrics"].format(task=t, model="aligned") for t in SELECTION_TASKS],
    output:
        parquet=PATHS["selection_parquet"],
        markdown=PATHS["selection_markdown"],
    params:
        models=SELECTION_MODELS,
        select=SELECT,
    log:
        f"{LOGS}select_alpha.log",
    conda:
        ENV
    script:
        "../workflow/scripts/select_alpha.py"
