"""Where the workflow keeps every file: one template per artefact, Snakemake wildcards in braces.

The rules, their input functions, the collector and the config's hub names take their paths
from here; nothing else spells one out. Wildcards: ``run`` a fine-tuning run (:func:`run_id`),
``align`` the alignment-stage defense (:func:`stage_suffix`), ``model`` a model's name within its run (``sft``, :func:`pruned_name` or :func:`safelora_name`) or, for the
reference models, ``base`` / ``aligned`` with ``task`` the task they are evaluated on.
"""

from __future__ import annotations

# Paths under these folders are made by a rule, so a config may name them before they exist.
MADE_BY_WORKFLOW = ("resources/", "results/")

PATHS = {
    # downloads and conversions (rules/assets.smk)
    "asset": "resources/assets/{package}",
    "converted_model": "resources/models/SmolLM2-135M-Instruct",
    "hub_model": "resources/hub/{org}/{name}",
    "hub_dataset": "resources/hub/datasets/{org}/{name}/{subset}/{split}.parquet",
    # data (rules/data.smk)
    "split": "results/data/splits/{split}.jsonl",
    "splits_report": "results/data/splits/splits.json",
    "base_answers": "results/data/answers/{split}.jsonl",  # the base model's answers to a split
    "task_train": "results/data/tasks/{task}/train.jsonl",
    "task_validation": "results/data/tasks/{task}/validation.jsonl",  # held out of train and eval: choosing settings
    "task_eval": "results/data/tasks/{task}/eval.jsonl",
    "finetune_data": "results/data/finetune/{run}.jsonl",
    # stages 1-4
    # {align}: "" for plain SFT alignment, "+vaccine" for an alignment-stage defense (:func:`stage_suffix`)
    "aligned_model": "results/align{align}/model",
    "alignment_adapter": "results/align{align}/adapter",  # the alignment LoRA merged into aligned_model (SafeLoRA's V)
    "adapter": "results/finetune/{run}/adapter",
    "feature_norms": "results/score/{run}/{calibration}/feature_norms.safetensors",  # prune.CALIBRATIONS
    "pruned_adapter": "results/prune/{run}/{model}/adapter",
    "mask": "results/prune/{run}/{model}/mask.parquet",
    "projection": "results/prune/{run}/{model}/projection.parquet",  # SafeLoRA's in place of a mask
    # training checkpoints of stages 1 and 2 (not outputs: Snakemake keeps them when a job fails,
    # so that its rerun resumes; a finished training removes its own)
    "align_checkpoints": "checkpoints/align{align}",
    "finetune_checkpoints": "checkpoints/finetune/{run}",
}


def evaluation_paths(harmful_split: str, results_name: str = "") -> dict[str, str]:
    """Stage 5 and the results made from it. Those of the validation prompts live apart
    (``results/validation/...``, logs and benchmarks likewise), never over the test results.
    A config's ``results_name`` puts its summary, tables and plots in a folder of their own
    (``results/<name>/``), so that one config's results table never replaces another's; the
    evaluations are shared, keyed by the settings they depend on."""
    sub = "" if harmful_split == "harmful_test" else "validation/"
    results = f"results/{sub}"
    collected = results + (f"{results_name}/" if results_name else "")
    selection = "results/selection/eval/"  # the small validation evaluations that choose alpha (rule select_alpha)
    return {
        "run_metrics": results + "eval/{run}/{model}/metrics.parquet",
        "run_answers": results + "eval/{run}/{model}/answers.jsonl",
        "reference_metrics": results + "eval/reference/{task}/{model}/metrics.parquet",
        "reference_answers": results + "eval/reference/{task}/{model}/answers.jsonl",
        "summary_parquet": collected + "summary.parquet",
        "summary_csv": collected + "summary.csv",
        "summary_markdown": collected + "summary.md",
        "judgements": collected + "judgements.parquet",  # every prompt's verdict, for intervals and paired tests
        "selection_metrics": selection + "{run}/{model}/metrics.parquet",
        "selection_answers": selection + "{run}/{model}/answers.jsonl",
        "selection_reference_metrics": selection + "reference/{task}/{model}/metrics.parquet",
        "selection_reference_answers": selection + "reference/{task}/{model}/answers.jsonl",
        "selection_parquet": collected + "selection.parquet",
        "selection_markdown": collected + "selection.md",
        "tables": collected + "tables",
        "plots": collected + "plots",
        "logs": f"logs/{sub}",
        "benchmarks": f"benchmarks/{sub}",
    }


def number(value) -> str:
    """How a number appears in a path: short and exact (0.001, 0.2, 3)."""
    return f"{value:g}"


def stage_suffix(training_defense: str) -> str:
    """A training-time defense in a name: nothing for plain SFT (so that its paths stay as they
    were), ``+vaccine`` for a defense; each name belongs to one stage, so ``+vaccine+lisa`` reads."""
    return "" if training_defense == "sft" else f"+{training_defense}"


def run_id(task, harmful_ratio, learning_rate, epochs, n_samples, seed, align_defense="sft",
           finetune_defense="sft") -> str:
    """A fine-tuning run's name in paths: every setting it depends on, readable
    (sst2-p0.2-lr0.001-ep2-n200-s0, and sst2-p0.2-lr0.001-ep2-n200-s0+vaccine+lisa with the
    training-time defenses of alignment and fine-tuning)."""
    return (f"{task}-p{number(harmful_ratio)}-lr{number(learning_rate)}-ep{number(epochs)}"
            f"-n{n_samples}-s{seed}{stage_suffix(align_defense)}{stage_suffix(finetune_defense)}")


def evaluation_name(model: str, run: str | None = None, task: str | None = None) -> str:
    """An evaluation's name in the results (column ``evaluation``): ``<run>/<model>`` for the
    models of a run, ``reference/<task>/<model>`` for base and the aligned models (aligned,
    aligned+vaccine), as their folders under ``eval/``. It ties a summary row to its prompts'
    verdicts in ``judgements.parquet``."""
    return f"{run}/{model}" if run is not None else f"reference/{task}/{model}"


def aligned_name(align_defense: str) -> str:
    """An aligned model's name as a reference model, in paths and tables: aligned (SFT's),
    aligned+vaccine (Vaccine's)."""
    return f"aligned{stage_suffix(align_defense)}"


def pruned_name(defense: str, alpha: float) -> str:
    """A pruned model's name in paths and tables (antidote-a0.1). Made here only, never parsed:
    what it stands for travels as params and in the metrics and mask files."""
    return f"{defense}-a{number(alpha)}"


def selected_name(defense: str) -> str:
    """The model of a defense at the alpha chosen on validation data (antidote@val): its own rows
    in the results, beside the curve, with the chosen alpha in their ``alpha`` column."""
    return f"{defense}@val"


# SafeLoRA's module selection (prune.safelora[].select) and its letter in pruned-model names
SAFELORA_SELECTIONS = {"count": "k", "fraction": "f", "threshold": "t"}


def safelora_setting(select: str, value) -> str:
    """SafeLoRA's setting, short: k10 (the 10 modules of lowest cosine), f0.1 (that fraction of
    the modules), t0.5 (every module of cosine at most 0.5)."""
    return f"{SAFELORA_SELECTIONS[select]}{number(value)}"


def safelora_name(select: str, value) -> str:
    """A SafeLoRA model's name in paths and tables (safelora-k10): it has no alpha, its setting
    names it instead. Made here only, never parsed, like :func:`pruned_name`."""
    return f"safelora-{safelora_setting(select, value)}"
