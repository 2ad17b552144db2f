"""Loading models and tokenizers, and the one prompt format used for training and evaluation."""

from __future__ import annotations

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


def merged_in_fp32(path: str | Path, adapter: str | Path):
    """The model of ``path`` loaded in fp32 (on the CPU) with the PEFT ``adapter`` merged into it.

    As the authors' evaluation does: a LoRA update with a small scaling (r=256, lora_alpha=4:
    1/64) is far below half a bf16 step of the weights it is added to, so merging it into
    weights already rounded to bf16 gives those same weights back. Added to the checkpoint's
    own, finer values in fp32, it survives, and rounding the sum once keeps it on average.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return PeftModel.from_pretrained(base, adapter).merge_and_unload()


def load_model(path: str | Path, adapter: str | Path | None = None, merge: bool = True,
               device: str = "cpu", dtype: str = "auto"):
    """A causal LM from an HF directory, optionally with a PEFT adapter (merged for speed, in
    fp32: :func:`merged_in_fp32`); ``dtype`` as :func:`pick_dtype` reads it."""
    from transformers import AutoModelForCausalLM

    torch_dtype = pick_dtype(dtype, device)
    if adapter is not None and merge:
        model = merged_in_fp32(path, adapter)
        if torch_dtype != torch.float32:
            # Loaded as usual in the target dtype (its buffers and fp32-kept modules as from_pretrained
            # makes them), then every weight is copied from the fp32 merge and so rounded once.
            merged, model = model, AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
            model.load_state_dict(merged.state_dict())
            del merged
        model = model.to(device)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(device)
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    return model


def set_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)
