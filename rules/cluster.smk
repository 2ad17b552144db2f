# Cluster resources of the model jobs (`resources: **model_job("<stage>")` in the rules; see
# docs/cluster.md). Each asks SLURM for one GPU, and for host memory and wall time estimated for its
# own stage from the base model's size and the config's amounts of work, growing with each retry
# (`attempt` is 1, 2, 3, ...). Optional config keys: cluster.gpu_model (e.g. a100; unset: any GPU),
# cluster.mem_mb (MB, default 4000) and cluster.runtime (minutes, default 20): the first attempt's
# memory and time before the stage's share is added. Local runs ignore gpu/gpu_model unless given
# with --resources.
import json
import math

from antidote.tasks import TASKS as TASK_REGISTRY

CLUSTER = config.get("cluster") or {}
SIZES = config["data"]["sizes"]

# One GPU's pace on Llama-2-7B (6.94e9 parameters), a third of what PERF.md measured on one H100 so
# that a slower GPU or a shared node still finishes in the first attempt: training samples (of up to
# 256 tokens) and calibration sequences go faster as the model is smaller; a decoding step of a
# generation batch took 80 ms from batch 1 to 256 there, bound by the host rather than the model.
SEVEN_B = 6.94e9
TRAINING_SAMPLES_PER_S_AT_7B = 30.4 / 3
CALIBRATION_SEQUENCES_PER_S_AT_7B = 2000 / 24.3 / 3
DECODING_STEP_S = 0.08 * 3


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


def training_minutes(samples, epochs):
    return samples * epochs / TRAINING_SAMPLES_PER_S_AT_7B * model_parameters() / SEVEN_B / 60


def generation_minutes(prompts, batch_size, new_tokens):
    return math.ceil(prompts / batch_size) * new_tokens * DECODING_STEP_S / 60


def evaluation_minutes(task, harmful_prompts, benign_prompts, task_items):
    generation = config["evaluate"]
    task_tokens = generation.get("task_max_new_tokens") or TASK_REGISTRY[task].max_new_tokens
    return (generation_minutes(harmful_prompts + benign_prompts, generation["batch_size"], generation["max_new_tokens"])
            + generation_minutes(task_items, generation["batch_size"], task_tokens))


# Minutes of work of each model stage's job on one GPU (the time the stage's loop takes), from the
# config's amounts: the samples it trains on, the sequences it scores, the tokens it generates.
STAGE_WORK = {
    "base_answers": lambda w: generation_minutes(SIZES[w.split], config["data"]["generation_batch_size"],
                                                 config["data"]["answer_max_new_tokens"]),
    # a training-time defense's step costs more than SFT's (TrainingDefenseSpec.cost)
    "align": lambda w: training_minutes(SIZES["alignment_harmful"] + SIZES["alignment_benign"],
                                        config["align"]["train"]["epochs"]) * TRAINING_DEFENSES[ALIGNMENTS[w.align]].cost,
    "finetune": lambda w: (training_minutes(RUNS[w.run]["n_samples"], RUNS[w.run]["epochs"])
                           * TRAINING_DEFENSES[RUNS[w.run]["finetune_defense"]].cost),
    "score": lambda w: (config["data"]["calibration_size"] / CALIBRATION_SEQUENCES_PER_S_AT_7B
                        * model_parameters() / SEVEN_B / 60),
    # every harmful set counted as large as the built-in one
    "evaluate": lambda w: evaluation_minutes(
        evaluated_task(w), SIZES[config["evaluate"]["harmful_split"]] * len(harmful_sets()),
        SIZES["benign_test"], SIZES["task_eval"]),
    "evaluate_for_selection": lambda w: evaluation_minutes(
        evaluated_task(w), SIZES["harmful_validation"], 0,
        SIZES["task_validation"] if config["prune"]["select"]["criterion"] == "accuracy" else 0),
}
# Host memory of each stage, in copies of the model's fp32 weights: the model in its dtype (fp32
# at most, on a CPU); stage 1 also merges its adapter into a second, fp32 copy.
STAGE_MODEL_COPIES = {"align": 2}


def host_memory(copies):
    """A job's host memory (MB) holding ``copies`` of the model's fp32 weights, times the attempt."""

    def mem_mb(wildcards, attempt):
        return int(CLUSTER.get("mem_mb", 4000) + copies * 4 * model_parameters() / 1e6) * attempt

    return mem_mb


def model_job(stage):
    """What the job of a model stage asks for: one GPU (of cluster.gpu_model's type, if set), host
    memory and wall time for its stage, times the attempt."""

    def runtime(wildcards, attempt):
        return round(CLUSTER.get("runtime", 20) + STAGE_WORK[stage](wildcards)) * attempt

    return dict(gpu=1, gpu_model=lambda wildcards: CLUSTER.get("gpu_model"),
                mem_mb=host_memory(STAGE_MODEL_COPIES.get(stage, 1)), runtime=runtime)
