"""The authors' ways of running the three costly loops, kept as references.

The library computes the same things faster (batched, length-sorted, padding masked, logits
only where a loss needs them); the tests check it against these functions and
``bench/gpu_loops.py`` times it against them.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def authors_running_mean(model, tokenizer, texts: list[str], modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """Calibration as Wanda's layerwrapper gathers it: batch 1, no padding,
    ``scaler_row *= n / (n + 1); scaler_row += ||x||^2 / (n + 1)`` per forward call."""
    scaler = {name: torch.zeros(m.in_features, dtype=torch.float32, device=m.weight.device)
              for name, m in modules.items()}
    count = {name: 0 for name in modules}

    def hook_for(name):
        def hook(_module, inputs, _output):
            x = inputs[0].reshape(-1, inputs[0].shape[-1]).t().float()
            scaler[name] *= count[name] / (count[name] + 1)
            count[name] += 1
            scaler[name] += torch.norm(x, p=2, dim=1) ** 2 / count[name]
        return hook

    device = next(model.parameters()).device
    handles = [m.register_forward_hook(hook_for(n)) for n, m in modules.items()]
    try:
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
            model(input_ids=ids.to(device))
    finally:
        for h in handles:
            h.remove()
    return {name: s.cpu() for name, s in scaler.items()}


@torch.no_grad()
def authors_generate(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy answers one prompt at a time (batch 1, so no padding), as the authors' evaluation loop."""
    device = next(model.parameters()).device
    answers = []
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
        output = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                do_sample=False, temperature=None, top_p=None, top_k=None,
                                pad_token_id=tokenizer.pad_token_id)
        answers.append(tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True).strip())
    return answers


def full_sequence_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The loss as an HF Trainer computes it: logits at every position, prompt and padding included,
    then cross-entropy on the unmasked labels."""
    return model(**batch).loss
