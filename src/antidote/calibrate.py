"""Calibration feature norms (stage 3): per input feature j of a LoRA matrix,
n_j = mean over sequences of sum_t X[t, j]^2 (a squared L2 norm; the Wanda score takes its root).

One ordinary forward pass per batch with hooks on the adapter's matrices gives exactly what
the authors' layer-by-layer batch-1 loop computes, because nothing is masked while the
feature norms are gathered. Padding tokens are excluded, and sums are kept in fp32 (or wider)
whatever the model's dtype.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .modeling import encode_prompt


def adapter_weight_name(module_name: str, adapter: str = "default") -> str:
    """The name of a module's weight in a saved PEFT adapter file (the adapter's own name dropped)."""
    return module_name.removesuffix(f".{adapter}") + ".weight"


def lora_matrices(model, adapter: str = "default") -> dict[str, torch.nn.Linear]:
    """Every lora_A / lora_B linear layer of ``model``, keyed by its saved-adapter weight name."""
    return {adapter_weight_name(name, adapter): module for name, module in model.named_modules()
            if name.endswith((f"lora_A.{adapter}", f"lora_B.{adapter}")) and isinstance(module, torch.nn.Linear)}


@torch.no_grad()
def collect_feature_norms(model, batches, modules: dict[str, torch.nn.Module],
                       accumulate_dtype: torch.dtype = torch.float32) -> tuple[dict[str, torch.Tensor], int]:
    """Run ``batches`` (dicts with input_ids and attention_mask) through ``model``.

    Returns, per module, ``n_j = (1 / n_sequences) * sum over sequences and non-pad tokens of x_j^2``
    and the number of sequences.
    """
    sums = {name: torch.zeros(m.in_features, dtype=accumulate_dtype, device=m.weight.device)
            for name, m in modules.items()}
    current_mask: list[torch.Tensor] = []

    def hook_for(name):
        def hook(_module, inputs, _output):
            x = inputs[0].to(accumulate_dtype)
            keep = current_mask[0].to(device=x.device, dtype=accumulate_dtype).unsqueeze(-1)
            sums[name] += (x.square() * keep).sum(dim=(0, 1))
        return hook

    handles = [m.register_forward_hook(hook_for(name)) for name, m in modules.items()]
    n_sequences = 0
    device = next(model.parameters()).device
    try:
        for batch in tqdm(batches, desc="calibrate", unit="batch"):
            current_mask[:] = [batch["attention_mask"]]
            model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
            n_sequences += batch["input_ids"].shape[0]
    finally:
        for handle in handles:
            handle.remove()
    return {name: (total / max(n_sequences, 1)).float().cpu() for name, total in sums.items()}, n_sequences


def calibration_batches(tokenizer, texts: list[str], batch_size: int, max_length: int, prompt_format: str):
    """Right-padded batches of full calibration texts (formatted prompt + answer + EOS), sorted
    by length to keep padding small."""
    encoded = [encode_prompt(tokenizer, t, prompt_format)[:max_length] for t in texts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    tokenizer.padding_side = "right"
    return [tokenizer.pad({"input_ids": [encoded[i] for i in order[s:s + batch_size]]}, return_tensors="pt")
            for s in range(0, len(order), batch_size)]
