"""Loading models and tokenizers, and the one prompt format used for training and evaluation."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
PROMPT_FORMATS = ("chat", "alpaca")


def format_prompt(tokenizer, instruction: str, input_text: str = "", style: str = "chat") -> str:
    """The text the model sees before its answer.

    ``chat`` uses the tokenizer's chat template (instruction and input as one user turn);
    ``alpaca`` is the authors' format. Training and evaluation both call this, so the two can
    never drift apart.
    """
    if style == "alpaca":
        template = ALPACA_WITH_INPUT if input_text else ALPACA_NO_INPUT
        return template.format(instruction=instruction, input=input_text)
    if style == "chat":
        if not tokenizer.chat_template:
            raise ValueError("prompt_format 'chat' needs a tokenizer with a chat template; use 'alpaca'")
        content = f"{instruction}\n\n{input_text}" if input_text else instruction
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
    raise ValueError(f"unknown prompt_format {style!r}; expected one of {PROMPT_FORMATS}")


def tokenizer_adds_bos(tokenizer) -> bool:
    """Whether the tokenizer's own calls put its BOS first (Llama's ``<s>``): the way the model
    saw every text in training. Read from what it does, not from flags that differ by class."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("", add_special_tokens=True)["input_ids"][:1] == [bos]


def encode_prompt(tokenizer, text: str, prompt_format: str) -> list[int]:
    """Token ids of a text that :func:`format_prompt` begins (a prompt, or prompt + answer),
    with the model's BOS exactly where its own format puts it. Training, calibration and
    generation all encode through here, so they cannot drift apart.

    A chat template renders its special tokens itself (Llama-3's ``<|begin_of_text|>``) or has
    none (ChatML), so its text is encoded as rendered. Alpaca text has none: a tokenizer that
    adds BOS gets it prepended, as the authors' tokenizer calls on Llama-2 do. Only BOS:
    ``add_special_tokens=True`` would also append EOS for some tokenizers.
    """
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if prompt_format == "alpaca" and tokenizer_adds_bos(tokenizer) and ids[:1] != [tokenizer.bos_token_id]:
        ids = [tokenizer.bos_token_id] + ids
    return ids


# How SLURM tells a job which GPUs it was given (--gpus, --gres=gpu): such a job must use one
GPU_ALLOCATION_VARIABLES = ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_GPUS_ON_NODE")


class DeviceError(RuntimeError):
    """A job that should run on a GPU cannot: it stops within seconds with the cause, instead of
    running a 7B model in fp32 on the CPU until its time limit (three times, with retries)."""


def cuda_unusable_reason() -> str | None:
    """Why CUDA cannot be used in this process (a torch build without CUDA, a driver that is
    missing or too old, no device visible), or None where it can."""
    if torch.version.cuda is None:
        return (f"this torch build ({torch.__version__}) has no CUDA; install the CUDA build of the same torch "
                "version on the GPU nodes")
    try:
        torch.cuda.init()
    except Exception as error:  # the driver's own words: missing, too old for this build, ...
        return f"CUDA does not start ({error})"
    if torch.cuda.device_count() == 0:
        return f"no CUDA device is visible (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')!r})"
    return None


def allocated_gpus() -> str | None:
    """The GPUs SLURM gave this job, as it names them (``SLURM_JOB_GPUS=0``: the indices; a
    count of 0 in ``SLURM_GPUS_ON_NODE`` is none), or None."""
    for variable in GPU_ALLOCATION_VARIABLES:
        value = os.environ.get(variable, "").strip()
        if value and not (variable == "SLURM_GPUS_ON_NODE" and value == "0"):
            return f"{variable}={value}"
    return None


def pick_device(requested: str = "auto") -> str:
    """The device of a model job (the config's ``device``). ``auto``: CUDA where it works, else
    the CPU (laptops), but a job SLURM gave a GPU must use it; ``cuda``/``cuda:N``: CUDA, which
    must work; ``cpu``: the CPU, whatever was allocated. A GPU that cannot be used raises
    :class:`DeviceError` naming the cause."""
    if requested == "cpu":
        return "cpu"
    reason = cuda_unusable_reason()
    if requested == "auto":
        if reason is None:
            return "cuda"
        if allocated_gpus():
            raise DeviceError(f"device 'auto': this job was given a GPU ({allocated_gpus()}) but {reason}. "
                              "Set device: cpu in the config to run on the CPU anyway")
        return "cpu"
    if reason is not None:
        raise DeviceError(f"device {requested!r}: {reason}")
    index = int(requested.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise DeviceError(f"device {requested!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return requested


def pick_dtype(name: str, device: str) -> torch.dtype:
    """fp32 on CPU (exactness, and CPUs gain little from bf16); bf16 on GPU unless asked
    otherwise. bf16 on a GPU without it (before Ampere) raises :class:`DeviceError` naming the
    setting, rather than computing in an emulation of it or in another precision than asked."""
    if name == "auto":
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    else:
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    if dtype == torch.bfloat16 and device.startswith("cuda") and not torch.cuda.is_bf16_supported(
            including_emulation=False):
        raise DeviceError(f"dtype {name!r} computes in bfloat16, which {torch.cuda.get_device_name(device)} does "
                          "not support; set dtype: float16 (or float32) in the config")
    return dtype


def load_tokenizer(path: str | Path, padding_side: str = "left"):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# A PEFT adapter's module names are the model's with this in front ("base_model.model.model.layers.0...")
PEFT_PREFIX = "base_model.model."


def lora_modules(weights: dict[str, torch.Tensor]) -> list[str]:
    """The modules of a PEFT adapter file (``...q_proj`` of ``...q_proj.lora_A.weight``)."""
    return sorted(n.removesuffix(".lora_A.weight") for n in weights if n.endswith(".lora_A.weight"))


def lora_scaling(adapter_config: dict) -> float:
    """PEFT's scaling of an adapter's update: lora_alpha / r (rsLoRA: / sqrt(r))."""
    if adapter_config.get("rank_pattern") or adapter_config.get("alpha_pattern"):
        raise ValueError("the adapter sets ranks or alphas per module (rank_pattern, alpha_pattern), which is not "
                         "read here")
    r = adapter_config["r"]
    return adapter_config["lora_alpha"] / (math.sqrt(r) if adapter_config.get("use_rslora") else r)


def weight_files(model_dir: Path) -> dict[str, Path]:
    """Weight name -> the safetensors file of an HF model directory that holds it (one file, or
    the shards its index names)."""
    from safetensors import safe_open

    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        return {name: model_dir / file for name, file in json.loads(index.read_text())["weight_map"].items()}
    single = model_dir / "model.safetensors"
    if not single.exists():
        raise FileNotFoundError(f"{model_dir} holds no model.safetensors (nor model.safetensors.index.json); "
                                "save the model with save_pretrained(safe_serialization=True)")
    with safe_open(single, framework="pt") as tensors:
        return dict.fromkeys(tensors.keys(), single)


def merge_in_fp32(model, path: Path, adapter: Path):
    """Merges the LoRA ``adapter`` into ``model`` (loaded from ``path`` in its compute dtype) as
    PEFT's merge into the fp32 model, then a cast, would: each weight the adapter updates is read
    again from ``path``'s files in fp32, PEFT's update added there (``W + (B @ A) * scaling``) and
    the sum rounded once to the model's dtype. Only the updated weights are read twice, one at a
    time: the model is never held in fp32 (a 7B evaluation holds 13.5 GB in bf16, not 27 + 13.5).
    In fp32 this is what stage 1 saves (the aligned model).

    As the authors' evaluation does: a LoRA update with a small scaling (r=256, lora_alpha=4:
    1/64) is far below half a bf16 step of the weights it is added to, so merging it into
    weights already rounded to bf16 gives those same weights back. Added to the checkpoint's
    own, finer values in fp32, it survives, and rounding the sum once keeps it on average."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    settings = json.loads((adapter / "adapter_config.json").read_text())
    for unsupported in ("use_dora", "fan_in_fan_out"):
        if settings.get(unsupported):
            raise ValueError(f"{adapter / 'adapter_config.json'}: {unsupported} is set, which the merge here "
                             "does not implement")
    scaling = lora_scaling(settings)
    lora = load_file(adapter / "adapter_model.safetensors")
    files, weights = weight_files(path), dict(model.named_parameters())
    for module in lora_modules(lora):
        name = module.removeprefix(PEFT_PREFIX) + ".weight"
        if name not in files or name not in weights:
            raise ValueError(f"the adapter {adapter} updates {name!r}, which the model {path} does not hold")
        with safe_open(files[name], framework="pt") as tensors:
            weight = tensors.get_tensor(name).float()
        b, a = (lora[f"{module}.lora_{part}.weight"].float() for part in "BA")
        with torch.no_grad():
            weights[name].copy_((weight + (b @ a) * scaling).to(weights[name].dtype))
    return model


def load_model(path: str | Path, adapter: str | Path | None = None, merge: bool = True,
               device: str = "cpu", dtype: str = "auto"):
    """A causal LM from an HF directory, optionally with a PEFT adapter: merged (for speed,
    without losing a small update: :func:`merge_in_fp32`) or kept apart; ``dtype`` as
    :func:`pick_dtype` reads it."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=pick_dtype(dtype, device))
    if adapter is not None and merge:
        model = merge_in_fp32(model, Path(path), Path(adapter))
    elif adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model = model.to(device)
    model.eval()
    return model


def set_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)
