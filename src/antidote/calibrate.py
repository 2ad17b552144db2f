"""Calibration feature norms (stage 3): per input feature j of a LoRA matrix,
n_j = mean over sequences of sum_t X[t, j]^2 (a squared L2 norm; the Wanda score takes its root).

One ordinary forward pass per batch with hooks on the adapter's matrices gives exactly what
the authors' layer-by-layer batch-1 loop computes, because nothing is masked while the
feature norms are gathered. lora_A's hooks sit on their layers' inputs, so the hidden state
that q_proj, k_proj and v_proj share is squared once, not three times. Padding tokens are
excluded, and sums are kept in fp32 (or wider) whatever the model's dtype.
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


def shared_input_layer(model, name: str):
    """The LoRA layer whose input a ``lora_A`` matrix reads, or None for a ``lora_B`` matrix.
    ``lora_A`` reads the layer's input (dropout is off in eval mode; the cast to the adapter's
    dtype is exact), and q_proj, k_proj and v_proj of one block read the same hidden state."""
    layer = name.removesuffix(".lora_A.weight")
    return model.get_submodule(layer) if layer != name else None


@torch.no_grad()
def collect_feature_norms(model, batches, modules: dict[str, torch.nn.Module],
                       accumulate_dtype: torch.dtype = torch.float32) -> tuple[dict[str, torch.Tensor], int]:
    """Run ``batches`` (dicts with input_ids and attention_mask) through ``model`` (in eval mode).

    Returns, per module, ``n_j = (1 / n_sequences) * sum over sequences and non-pad tokens of x_j^2``
    and the number of sequences. An input that several ``lora_A`` matrices share is squared once.
    """
    if model.training:
        raise ValueError("collect_feature_norms needs model.eval(): LoRA dropout would change the inputs")
    sums = {name: torch.zeros(m.in_features, dtype=accumulate_dtype, device=m.weight.device)
            for name, m in modules.items()}
    current_mask: list[torch.Tensor] = []
    last: list = [None, None]  # the last shared input seen and its sums: q, k and v come one after another

    def square_sums(x):
        keep = current_mask[0].to(device=x.device, dtype=accumulate_dtype).unsqueeze(-1)
        return (x.to(accumulate_dtype).square() * keep).sum(dim=(0, 1))

    def shared_input_hook(name):
        def hook(_layer, args):
            if last[0] is not args[0]:
                last[:] = [args[0], square_sums(args[0])]
            sums[name] += last[1]
        return hook

    def own_input_hook(name):
        def hook(_module, inputs, _output):  # returns None: a value would replace the module's output
            sums[name] += square_sums(inputs[0])
        return hook

    handles = []
    for name, module in modules.items():
        layer = shared_input_layer(model, name)
        handles.append(layer.register_forward_pre_hook(shared_input_hook(name)) if layer is not None
                       else module.register_forward_hook(own_input_hook(name)))
    n_sequences = 0
    device = next(model.parameters()).device
    try:
        for batch in tqdm(batches, desc="calibrate", unit="batch"):
            current_mask[:] = [batch["attention_mask"]]
            model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
            n_sequences += batch["input_ids"].shape[0]
    finally:
        last[:] = [None, None]
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
