# Cluster resources of the model jobs (used by `resources: **MODEL_JOB` in the rules; see docs/cluster.md).
# They ask SLURM for one GPU, and for host memory and wall time that grow with the base model's
# size and with each retry (`attempt` is 1, 2, 3, ...). Optional config keys: cluster.gpu_model
# (e.g. a100; unset: any GPU), cluster.mem_mb (MB, default 4000) and cluster.runtime (minutes,
# default 60): the first attempt's memory and time before the model's share is added. Local runs
# ignore gpu/gpu_model unless given with --resources.
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


# What every model job (one that loads a model: answers, align, finetune, score, evaluate) asks for.
MODEL_JOB = dict(gpu=1, gpu_model=get_gpu_model, mem_mb=get_mem_mb, runtime=get_runtime)
