"""Training on a 4-bit base (QLoRA): the setting ``train.quantization`` (``none`` or ``4bit``).

``4bit`` loads the frozen base in NF4 with bf16 compute (bitsandbytes), prepares it with PEFT's
``prepare_model_for_kbit_training`` (norms in fp32, gradient checkpointing) and trains the LoRA
adapter with bitsandbytes' 8-bit AdamW: the base takes a quarter of its bf16 memory, the
optimizer states a quarter of theirs. The adapter is saved as usual and later stages use it on
the full-precision base, as QLoRA adapters are used.

CUDA only: bitsandbytes also loads 4-bit models on a CPU, but training there leaves the loss
where it was (the adapter learns nothing, silently), so a CPU request is refused before any
model is loaded. bitsandbytes is the optional extra ``gpu`` and is imported only when asked for.
"""

from __future__ import annotations


import torch

from .modeling import load_model, pick_dtype

QUANTIZATIONS = ("none", "4bit")
INSTALL_HINT = "pip install -e '.[gpu]'"


def check_quantization(quantization: str, device: str) -> None:
    """Raise, naming the setting, if ``quantization`` cannot train on ``device`` here."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"train.quantization: unknown value {quantization!r}; expected one of {QUANTIZATIONS}")
    if quantization == "none":
        return
    if torch.device(device).type != "cuda":
        raise ValueError(
            f"train.quantization: {quantization!r} needs a CUDA device, but this job runs on {device!r}. "
            "bitsandbytes loads a 4-bit model on a CPU, but training it there leaves the loss unchanged "
            "(the adapter learns nothing), so it is refused. Use train.quantization: none on a CPU.")
    import_bitsandbytes()


def import_bitsandbytes():
    """bitsandbytes, or an error that says how to install it."""
    try:
        import bitsandbytes
    except ImportError as error:
        raise ImportError(f"train.quantization: '4bit' needs bitsandbytes, which is not installed: "
                          f"{INSTALL_HINT}") from error
    return bitsandbytes


def check_training_model(model, quantization: str) -> None:
    """A 4-bit setting must come with a model loaded by :func:`load_base_for_training` in 4 bits
    (otherwise the 8-bit optimizer would quietly train an unquantized model)."""
    check_quantization(quantization, str(next(model.parameters()).device))
    if quantization == "4bit" and not getattr(model, "is_loaded_in_4bit", False):
        raise ValueError("train.quantization: '4bit', but the model was not loaded in 4 bits; "
                         "load it with antidote.quantization.load_base_for_training")


def load_base_for_training(path, quantization: str, device: str, dtype: str = "auto"):
    """The base model that :func:`antidote.train.train_lora` wraps: as :func:`load_model` gives it,
    or in 4-bit NF4, prepared for k-bit training."""
    check_quantization(quantization, device)
    if quantization == "none":
        return load_model(path, device=device, dtype=dtype)
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    index = torch.device(device).index
    model = AutoModelForCausalLM.from_pretrained(
        path, quantization_config=config, dtype=pick_dtype(dtype, device),
        device_map={"": torch.cuda.current_device() if index is None else index})
    # Non-reentrant checkpointing needs no input-gradient hack and works with frozen embeddings.
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                           gradient_checkpointing_kwargs={"use_reentrant": False})
