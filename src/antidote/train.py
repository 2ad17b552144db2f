"""LoRA supervised fine-tuning: the safety alignment (stage 1) and the user's fine-tuning (stage 2).

A plain loop rather than a Trainer: the loss is on the answer tokens only (the prompt is
masked, as in the authors' Alpaca-style code), and every step is logged. Batches are drawn as
the authors' HF Trainer draws them, at random from the shuffled mix each epoch; grouping them
by length (``group_by_length``) spends less compute on padding but changes how much short
task items weigh against long harmful answers, whose tokens then share fewer batches.

With :class:`~antidote.checkpoint.Checkpoints` the loop saves its whole state every ``minutes``
(and every ``every`` steps, if set), at each epoch's end and at the step after
:data:`CHECKPOINT_SIGNAL` arrives, and a new
call with the same settings and data goes on from the latest checkpoint: on the CPU in fp32 it
ends with the same adapter, to the bit, as a run never interrupted.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .checkpoint import CHECKPOINT_SIGNAL, Checkpoints
from .modeling import encode_prompt, format_prompt
from .quantization import check_training_model, import_bitsandbytes
from .records import DataError
from .training_defenses import TRAINING_DEFENSES

IGNORE_INDEX = -100
# Test hooks (tests/test_resume.py, tests/test_slurm.py): a training that started from step 0, not from
# a checkpoint, ends itself with SIGKILL right after step N and any checkpoint due then ...
KILL_AFTER_STEP = "ANTIDOTE_TEST_KILL_AFTER_STEP"
# ... or waits there (answering CHECKPOINT_SIGNAL) until something else ends it: scancel, a time limit.
WAIT_AFTER_STEP = "ANTIDOTE_TEST_WAIT_AFTER_STEP"


@dataclass
class LoraSettings:
    r: int = 8
    alpha: float = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj"])


@dataclass
class TrainSettings:
    epochs: float = 1
    learning_rate: float = 1e-4
    batch_size: int = 8
    weight_decay: float = 0.0
    scheduler: str = "constant"      # "constant" or "cosine"
    warmup_ratio: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int = 256
    seed: int = 0
    group_by_length: bool = False    # False: random batches of the shuffled mix, as the authors' Trainer
    quantization: str = "none"       # "none", or "4bit": QLoRA on CUDA (see antidote.quantization)


def encoded_prompt(tokenizer, record: dict, prompt_format: str) -> list[int]:
    prompt = format_prompt(tokenizer, record["instruction"], record.get("input", ""), prompt_format)
    return encode_prompt(tokenizer, prompt, prompt_format)


def check_prompts_fit(tokenizer, records: list[tuple[str, dict]], prompt_format: str, max_length: int) -> None:
    """Stop on the first of the (where, record) whose prompt alone fills ``max_length`` tokens:
    its whole answer would be cut away. Needs the tokenizer only, so it runs before any model loads."""
    for where, record in records:
        n = len(encoded_prompt(tokenizer, record, prompt_format))
        if n >= max_length:
            fields = "fields 'instruction' and 'input'" if record.get("input") else "field 'instruction'"
            raise DataError(f"{where}, {fields}: the prompt alone takes {n} tokens, so max_length = {max_length} "
                            "leaves no token of its answer to train on; raise train.max_length")


def tokenize_example(tokenizer, record: dict, prompt_format: str, max_length: int) -> dict:
    """input_ids and labels with the prompt masked; the answer ends with EOS so the model learns to stop."""
    prompt_ids = encoded_prompt(tokenizer, record, prompt_format)
    answer_ids = tokenizer(record["output"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    input_ids = (prompt_ids + answer_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + answer_ids)[:max_length]
    return {"input_ids": input_ids, "labels": labels}


def shuffled_batches(n_examples: int, batch_size: int, rng: random.Random) -> list[list[int]]:
    """One epoch as the HF Trainer's random sampler gives it: a new permutation, cut in order."""
    order = list(range(n_examples))
    rng.shuffle(order)
    return [order[i:i + batch_size] for i in range(0, n_examples, batch_size)]


def length_grouped_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of similar length: sort inside shuffled windows of 50 batches, then shuffle batches."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * 50
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def epoch_batches(lengths: list[int], settings: TrainSettings, rng: random.Random) -> list[list[int]]:
    if settings.group_by_length:
        return length_grouped_batches(lengths, settings.batch_size, rng)
    return shuffled_batches(len(lengths), settings.batch_size, rng)


def require_answer_tokens(batch: dict[str, torch.Tensor], max_length: int) -> None:
    """Stop on a batch whose every label is masked: its mean loss is 0/0, a NaN that would
    poison every weight it reaches."""
    if not (batch["labels"][:, 1:] != IGNORE_INDEX).any():
        raise ValueError(f"a training batch has no answer tokens: each of its prompts fills max_length = "
                         f"{max_length} tokens, so every answer was cut away; raise train.max_length")


def collate(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e["input_ids"]) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e["input_ids"])
        input_ids[row, :n] = torch.tensor(e["input_ids"])
        labels[row, :n] = torch.tensor(e["labels"])
        attention[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


def answer_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token loss over answer tokens, with logits computed only where some row has an answer.

    The vocabulary projection is the costliest layer of a small model; prompts (system
    prompt and instruction) are masked anyway, so their logits are never computed.
    """
    targets = batch["labels"][:, 1:]
    positions = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   logits_to_keep=positions).logits
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets[:, positions].flatten(),
                                             ignore_index=IGNORE_INDEX)


def make_schedule(optimizer, settings: TrainSettings, total_steps: int):
    warmup = int(settings.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if settings.scheduler == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    if settings.scheduler not in ("constant", "cosine"):
        raise ValueError(f"unknown scheduler {settings.scheduler!r}; expected 'constant' or 'cosine'")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def add_lora(model, lora: LoraSettings):
    """``model`` wrapped in a new, trainable LoRA adapter (PEFT keeps it in fp32 on a bf16 base)."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules), task_type="CAUSAL_LM"))


def make_optimizer(params, settings: TrainSettings):
    """AdamW; on a 4-bit base bitsandbytes' 8-bit AdamW, whose states take a quarter of the memory."""
    optimizer = import_bitsandbytes().optim.AdamW8bit if settings.quantization == "4bit" else torch.optim.AdamW
    return optimizer(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)


def mixed_precision(device: torch.device):
    """bf16 autocast on CUDA; none on the CPU, where models run in the dtype they were loaded in."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def train_step(model, batch: dict[str, torch.Tensor], optimizer, params, max_grad_norm: float,
               loss_fn=answer_loss) -> torch.Tensor:
    """One optimizer step on a collated batch; returns the loss (not synchronised with the host)."""
    with mixed_precision(batch["input_ids"].device):
        loss = loss_fn(model, batch)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def _test_hook(name: str) -> int | None:
    return int(os.environ[name]) if os.environ.get(name) else None


def train_lora(model, tokenizer, records: list[dict], lora: LoraSettings, settings: TrainSettings,
               prompt_format: str, log_path: Path | None = None, checkpoints: Checkpoints | None = None,
               defense: str = "sft", defense_settings: dict | None = None, guide_records: list[dict] | None = None):
    """Wrap ``model`` in a new LoRA adapter, train it on ``records``, return the PEFT model.
    With ``checkpoints``, go on from the latest checkpoint of the same fingerprint, and save new ones
    (also at the step after a request in ``checkpoints.requested``: :meth:`Checkpoints.on_signal`).
    ``defense``: a training-time defense of :data:`~antidote.training_defenses.TRAINING_DEFENSES`,
    with its ``defense_settings``; one that reads data of its own (Lisa, RepNoise) reads ``guide_records``."""
    check_training_model(model, settings.quantization)
    torch.manual_seed(settings.seed)
    model = add_lora(model, lora)
    examples = [tokenize_example(tokenizer, r, prompt_format, settings.max_length) for r in records]
    answerless = sum(all(label == IGNORE_INDEX for label in e["labels"]) for e in examples)
    if answerless:  # they take places in batches but teach nothing
        logging.warning("%d of %d training examples lose their whole answer to max_length = %d",
                        answerless, len(examples), settings.max_length)
    lengths = [len(e["input_ids"]) for e in examples]
    rng = random.Random(settings.seed)
    steps_per_epoch = math.ceil(len(examples) / settings.batch_size)
    total_steps = max(1, round(settings.epochs * steps_per_epoch))
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    params = list(trainable.values())
    optimizer = make_optimizer(params, settings)
    schedule = make_schedule(optimizer, settings, total_steps)
    device = next(model.parameters()).device

    def batch_of(chosen: list[dict]) -> dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in collate(chosen, tokenizer.pad_token_id).items()}

    spec = TRAINING_DEFENSES[defense]
    guide = {}
    if spec.guide:
        guide = dict(guide=[tokenize_example(tokenizer, r, prompt_format, settings.max_length) for r in guide_records or []],
                     collate=batch_of, batch_size=settings.batch_size, seed=settings.seed)
    training_defense = spec.make(model, total_steps, **guide, **(defense_settings or {}))

    # step: optimizer steps done; done_in_epoch: batches of the current epoch done, whose order
    # epoch_batches draws again from the random state at the epoch's start
    step, done_in_epoch, history = 0, 0, []
    state = checkpoints.load() if checkpoints else None
    if state:
        with torch.no_grad():
            for name, p in trainable.items():
                p.copy_(state["adapter"][name])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        rng.setstate(state["epoch_rng"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        step, done_in_epoch, history = state["step"], state["done_in_epoch"], state["log"]
        training_defense.load_state_dict(state["defense"])
        logging.info("resuming from the checkpoint %s: step %d of %d", checkpoints.file, step, total_steps)
    resumed_at = step

    def save_checkpoint(epoch_rng, done: int) -> None:
        if checkpoints.requested:
            logging.info("%s arrived (the job's time limit is near): a checkpoint now", CHECKPOINT_SIGNAL.name)
            checkpoints.requested.clear()
        saving = time.time()
        checkpoints.save({
            "step": step, "epoch_rng": epoch_rng, "done_in_epoch": done, "log": history,
            "adapter": {name: p.detach() for name, p in trainable.items()}, "defense": training_defense.state_dict(),
            "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []})
        logging.info("checkpoint at step %d of %d written in %.3f s", step, total_steps, time.time() - saving)

    model.train()
    log = open(log_path, "w", buffering=1) if log_path else None  # line by line, for those who follow it
    if log:
        log.writelines(json.dumps(line) + "\n" for line in history)
    progress = tqdm(total=total_steps, initial=step, desc="train", unit="step")
    started, seconds_before = time.time(), history[-1]["seconds"] if history else 0.0
    while step < total_steps:
        epoch_rng = rng.getstate()
        batches = epoch_batches(lengths, settings, rng)
        for done, batch_ids in enumerate(batches[done_in_epoch:], done_in_epoch + 1):
            batch = training_defense.batch(batch_of([examples[i] for i in batch_ids]), step)
            require_answer_tokens(batch, settings.max_length)
            loss = train_step(model, batch, optimizer, params, settings.max_grad_norm,
                              lambda m, b: training_defense.loss(m, b, step, answer_loss))
            training_defense.after_step(step)
            schedule.step()
            step += 1
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.3f}")
            history.append({"step": step, "epoch": step / steps_per_epoch, "loss": loss.item(),
                            "lr": schedule.get_last_lr()[0], "seconds": seconds_before + time.time() - started})
            if log:
                log.write(json.dumps(history[-1]) + "\n")
            if checkpoints and (checkpoints.due(step) or done == len(batches) or step == total_steps):
                save_checkpoint(epoch_rng, done)
            if resumed_at == 0 and step == _test_hook(KILL_AFTER_STEP):
                os.kill(os.getpid(), signal.SIGKILL)
            while resumed_at == 0 and step == _test_hook(WAIT_AFTER_STEP):
                time.sleep(0.1)
                if checkpoints and checkpoints.requested:
                    save_checkpoint(epoch_rng, done)
            if step == total_steps:
                break
        done_in_epoch = 0
    progress.close()
    if log:
        log.close()
    model.eval()
    return model
