"""Batched greedy generation: length-sorted batches, left padding, answers in input order."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .modeling import encode_prompt


@torch.no_grad()
def greedy_generate(model, tokenizer, prompts: list[str], prompt_format: str, max_new_tokens: int,
                    batch_size: int = 32, desc: str = "generate") -> list[str]:
    """Greedy answers to prompts already formatted in ``prompt_format``.

    Sorting by length keeps padding (wasted compute) small; left padding keeps every prompt's
    last token at the same position, which batched decoding needs.
    """
    tokenizer.padding_side = "left"
    encoded = [encode_prompt(tokenizer, p, prompt_format) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]), reverse=True)
    answers: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch"):
        batch = order[start:start + batch_size]
        padded = tokenizer.pad({"input_ids": [encoded[i] for i in batch]}, return_tensors="pt")
        output = model.generate(
            input_ids=padded["input_ids"].to(device),
            attention_mask=padded["attention_mask"].to(device),
            max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None,
            top_k=None, pad_token_id=tokenizer.pad_token_id)
        new_tokens = output[:, padded["input_ids"].shape[1]:]
        for i, text in zip(batch, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
            answers[i] = text.strip()
    return answers
