"""The workflow's costly loops, each timed against the authors' way in the same run, as one table.

    python bench/gpu_loops.py                  # a CUDA GPU: Llama-2-7B shapes, random bf16 weights
    python bench/gpu_loops.py --smoke          # a tiny Llama on the CPU, in seconds (tests/test_bench.py)

Loops (bench/README.md says what every row and column means):
  calibration  feature norms n_j of every LoRA matrix: the authors' batch-1 running mean on an fp32
               model against calibrate.calibration_batches + collect_feature_norms on the bf16 model,
               with the agreement of the antidote masks the two give
  generation   greedy answers: batch 1 against generate.greedy_generate, both on merged weights
  training     LoRA steps on ragged batches: padded batches with the full-sequence loss (as an HF
               Trainer computes it) against the library's length-grouped batches and answer loss
  qlora        the library's 4-bit (QLoRA) training against the bf16 LoRA training (CUDA only)

Models are built from a config with random weights (nothing is downloaded) and fed random token
sequences through a word-level tokenizer whose words are token ids, so every loop runs the
library's own tokenization, padding and decoding. On CUDA every timed region is bracketed by
torch.cuda.synchronize(), after a warm-up; a loop's time is the median of --repeats runs.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import gc
import json
import os
import platform
import random
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # the library's progress bars would bury the table

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # time this checkout's library, whatever copy is installed

from antidote.calibrate import calibration_batches, collect_feature_norms, lora_matrices  # noqa: E402
from antidote.generate import greedy_generate  # noqa: E402
from antidote.prune import compute_masks, mask_agreement  # noqa: E402
from antidote.quantization import check_quantization, load_base_for_training  # noqa: E402
from antidote.reference import authors_generate, authors_running_mean, full_sequence_loss  # noqa: E402
from antidote.train import (IGNORE_INDEX, LoraSettings, TrainSettings, add_lora, answer_loss, collate,  # noqa: E402
                            length_grouped_batches, make_optimizer, mixed_precision, train_step)

LOOPS = ("calibration", "generation", "training", "qlora")
LOOP_TITLES = {"calibration": "calibration feature norms", "generation": "greedy generation",
               "training": "LoRA training", "qlora": "QLoRA training (4-bit base)"}
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]  # ids 0-3; every other id is the word "t<id>"
MASK_ALPHA = 0.1
RAW_TEXT = "chat"  # the random-token texts are encoded as written (no BOS added), as the references encode them
LOSS_CHECK_BATCHES = 4
GIB = 2 ** 30
DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float32: "fp32"}


@dataclass(frozen=True)
class Workload:
    model: dict                      # LlamaConfig sizes
    lora_r: int
    lora_alpha: float
    calibration_sequences: int
    calibration_lengths: tuple[int, int]
    calibration_batch: int
    reference_calibration_sequences: int   # the batch-1 reference runs on the first ones, scaled by tokens
    prompts: int
    prompt_lengths: tuple[int, int]
    new_tokens: int
    generation_batch: int
    measured_prompts: int            # ours runs on the first ones, scaled to ``prompts``
    reference_prompts: int           # the batch-1 reference likewise
    train_examples: int
    train_lengths: tuple[int, int]
    train_prompt_lengths: tuple[int, int]  # the masked prompt part of each training example
    train_batch: int
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")


# The authors' setting: Llama-2-7B, LoRA r=256, alpha 4 on q/k/v, batch 5, 2000 calibration sequences.
REAL = Workload(
    model=dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096),
    lora_r=256, lora_alpha=4, calibration_sequences=2000, calibration_lengths=(64, 384), calibration_batch=16,
    reference_calibration_sequences=200, prompts=1000, prompt_lengths=(32, 96), new_tokens=512,
    generation_batch=128, measured_prompts=256, reference_prompts=2, train_examples=200,
    train_lengths=(64, 384), train_prompt_lengths=(32, 96), train_batch=5)

# The same loops at toy size: hidden 128 keeps k = floor(0.1 * columns) >= 3 per row of every LoRA matrix.
SMOKE = Workload(
    model=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=4, vocab_size=512, max_position_embeddings=256),
    lora_r=32, lora_alpha=4, calibration_sequences=48, calibration_lengths=(16, 48), calibration_batch=16,
    reference_calibration_sequences=16, prompts=24, prompt_lengths=(8, 24), new_tokens=16,
    generation_batch=8, measured_prompts=16, reference_prompts=4, train_examples=20,
    train_lengths=(16, 48), train_prompt_lengths=(4, 12), train_batch=5)


# ----------------------------------------------------------------------------------------------
# Timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    seconds: float                   # median over the repeats
    runs: list[float]
    peak_bytes: int | None           # the largest CUDA allocation peak of the runs (None on a CPU)
    result: object                   # what the last run returned


def measure(run, device: torch.device, repeats: int, warmup=None) -> Timing:
    """``warmup()`` once (kernel selection, allocator, handles), then ``run()`` ``repeats`` times."""
    if warmup is not None:
        warmup()
    synchronize(device)
    runs, peak, result = [], 0, None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        synchronize(device)
        start = time.perf_counter()
        result = run()
        synchronize(device)
        runs.append(time.perf_counter() - start)
        if device.type == "cuda":
            peak = max(peak, torch.cuda.max_memory_allocated(device))
    return Timing(statistics.median(runs), runs, peak if device.type == "cuda" else None, result)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@dataclass
class Ceilings:
    """The device's measured rates, for the floors: a large matrix product in the benchmark's compute
    dtype, and a large device-to-device copy (bytes read plus bytes written)."""
    matmul_flops: float
    copy_bytes_per_s: float


def measure_ceilings(device: torch.device, dtype: torch.dtype) -> Ceilings:
    n, copy_elements = (8192, 2 ** 28) if device.type == "cuda" else (512, 2 ** 24)
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=generator)  # random, never zeros: zeros run faster
    b = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
    matmul = measure(lambda: a @ b, device, repeats=5, warmup=lambda: a @ b)
    source = torch.randn(copy_elements, device=device, dtype=dtype, generator=generator)
    copy = measure(source.clone, device, repeats=5, warmup=source.clone)
    return Ceilings(2 * n ** 3 / matmul.seconds, 2 * source.numel() * source.element_size() / copy.seconds)


# ----------------------------------------------------------------------------------------------
# Work counts, for the floors: the fewest operations and bytes each loop needs


@dataclass(frozen=True)
class LlamaCost:
    hidden: int
    intermediate: int
    layers: int
    kv_dim: int                      # key/value width: heads * head_dim, smaller with grouped-query attention
    vocab: int
    lora_r: int                      # 0 once the adapter is merged
    lora_targets: tuple[str, ...]

    @classmethod
    def of(cls, config, lora_r: int, lora_targets) -> "LlamaCost":
        head_dim = config.hidden_size // config.num_attention_heads
        return cls(config.hidden_size, config.intermediate_size, config.num_hidden_layers,
                   config.num_key_value_heads * head_dim, config.vocab_size, lora_r, tuple(lora_targets))

    def layer_shapes(self) -> dict[str, tuple[int, int]]:
        h, i, kv = self.hidden, self.intermediate, self.kv_dim
        return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def layer_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.layer_shapes().values())

    def flops_per_token(self) -> float:
        """Matrix products of the decoder layers (adapter included), without attention scores."""
        lora = sum(self.lora_r * (a + b) for name, (a, b) in self.layer_shapes().items() if name in self.lora_targets)
        return 2.0 * (self.layer_params() + self.layers * lora)

    def forward_flops(self, length: int, logit_positions: int) -> float:
        """One sequence: the layers, causal attention (QK^T and AV over half the square), and the
        vocabulary projection at ``logit_positions`` positions."""
        attention = 2.0 * self.layers * length * length * self.hidden
        return self.flops_per_token() * length + attention + 2.0 * self.hidden * self.vocab * logit_positions

    def weight_bytes(self, layer_bytes_per_param: float, head_bytes_per_param: float = 2) -> float:
        return self.layer_params() * layer_bytes_per_param + self.hidden * self.vocab * head_bytes_per_param

    def kv_bytes_per_token(self) -> float:
        return 2.0 * self.layers * self.kv_dim * 2  # K and V, bf16


def floor_seconds(flops: float, bytes_moved: float, ceilings: Ceilings) -> float:
    return max(flops / ceilings.matmul_flops, bytes_moved / ceilings.copy_bytes_per_s)


def calibration_floor(cost: LlamaCost, lengths: list[int], batch: int, ceilings: Ceilings) -> float:
    """The layers' forward over every token (no vocabulary projection: no n_j needs it), the weights
    read once per batch."""
    flops = sum(cost.forward_flops(n, logit_positions=0) for n in lengths)
    return floor_seconds(flops, -(-len(lengths) // batch) * cost.weight_bytes(2), ceilings)


def generation_floor(cost: LlamaCost, prompt_lengths: list[int], batch: int, new_tokens: int,
                     ceilings: Ceilings) -> float:
    """greedy_generate's batches (longest prompts first): a prefill, then ``new_tokens - 1`` decode
    steps, each reading the weights and every sequence's cached keys and values once."""
    order = sorted(prompt_lengths, reverse=True)
    steps = new_tokens - 1
    flops = bytes_moved = 0.0
    for start in range(0, len(order), batch):
        chunk = order[start:start + batch]
        flops += sum(cost.forward_flops(n, logit_positions=1) for n in chunk)
        context = sum(steps * n + steps * (steps + 1) / 2 for n in chunk)  # sum over steps of each context length
        flops += len(chunk) * steps * (cost.flops_per_token() + 2.0 * cost.hidden * cost.vocab)
        flops += 4.0 * cost.layers * cost.hidden * context
        bytes_moved += (1 + steps) * cost.weight_bytes(2) + cost.kv_bytes_per_token() * context
    return floor_seconds(flops, bytes_moved, ceilings)


def training_floor(cost: LlamaCost, examples: list[dict], batch: int, ceilings: Ceilings,
                   layer_bytes_per_param: float = 2) -> float:
    """Forward plus the backward to the inputs (a frozen base needs no weight gradients): twice the
    forward's operations, logits at answer positions only; the weights read twice per step."""
    flops = 2 * sum(cost.forward_flops(len(e["input_ids"]), sum(t != IGNORE_INDEX for t in e["labels"]))
                    for e in examples)
    steps = -(-len(examples) // batch)
    return floor_seconds(flops, 2 * steps * cost.weight_bytes(layer_bytes_per_param), ceilings)


# ----------------------------------------------------------------------------------------------
# Random model and data


def word_tokenizer(vocab_size: int):
    """A real HF fast tokenizer whose words are token ids ("t17 t4093" -> [17, 4093]), so random token
    sequences go through the library's own tokenization, padding and decoding."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    vocab.update({f"t{i}": i for i in range(len(SPECIAL_TOKENS), vocab_size)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>")


def random_ids(rng: random.Random, length: int, vocab_size: int) -> list[int]:
    return [rng.randrange(len(SPECIAL_TOKENS), vocab_size) for _ in range(length)]


def as_text(ids: list[int]) -> str:
    return " ".join(f"t{i}" for i in ids)


def random_lengths(rng: random.Random, count: int, bounds: tuple[int, int]) -> list[int]:
    return [rng.randint(*bounds) for _ in range(count)]


def random_llama_with_lora(workload: Workload, tokenizer, device: torch.device, seed: int):
    """An fp32 Llama with random weights and the authors' LoRA adapter, built on ``device``; lora_B is
    drawn at random too (a fresh adapter's is zero, which would make every lora_B score tie)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**workload.model, tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    model = add_lora(model, LoraSettings(r=workload.lora_r, alpha=workload.lora_alpha, dropout=0.0,
                                         target_modules=list(workload.lora_targets)))
    randomize_lora_b(model, seed)
    return model.eval(), config


def randomize_lora_b(model, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)


def cast_base_keep_adapter(model, dtype: torch.dtype) -> None:
    """The base's weights in ``dtype``, the adapter's untouched in fp32 (never rounded through
    ``dtype``): what load_model(dtype=...) plus PEFT give. Buffers (the rotary frequencies) stay
    fp32, as from_pretrained leaves them."""
    adapter = set(lora_matrices(model).values())
    with torch.no_grad():
        for module in model.modules():
            if module not in adapter:
                for p in module.parameters(recurse=False):
                    p.data = p.data.to(dtype)


# ----------------------------------------------------------------------------------------------
# Rows


@dataclass
class Row:
    loop: str
    workload: str
    status: str = "measured"         # or "skipped"
    reference_s: float | None = None
    ours_s: float | None = None
    floor_s: float | None = None
    reference_peak_gib: float | None = None
    ours_peak_gib: float | None = None
    rate_unit: str = ""              # tokens/s of the loops whose target is a rate
    reference_rate: float | None = None
    ours_rate: float | None = None
    checks: dict = field(default_factory=dict)
    check: str = ""
    note: str = ""
    run: int = 0                     # index of the run (header) that measured it

    @property
    def ratio(self) -> float | None:
        return self.reference_s / self.ours_s if self.reference_s and self.ours_s else None


def peak_gib(timing: Timing) -> float | None:
    return None if timing.peak_bytes is None else timing.peak_bytes / GIB


def calibration_row(model, tokenizer, workload: Workload, cost: LlamaCost, ceilings: Ceilings,
                    device: torch.device, repeats: int, rng: random.Random, compute_dtype: torch.dtype) -> Row:
    lengths = random_lengths(rng, workload.calibration_sequences, workload.calibration_lengths)
    texts = [as_text(random_ids(rng, n, cost.vocab)) for n in lengths]
    subsample = texts[:workload.reference_calibration_sequences]
    modules = lora_matrices(model)

    reference = measure(lambda: authors_running_mean(model, tokenizer, subsample, modules), device, repeats,
                        warmup=lambda: authors_running_mean(model, tokenizer, subsample[:2], modules))
    free_memory(device)
    cast_base_keep_adapter(model, compute_dtype)

    def ours(some_texts):
        batches = calibration_batches(tokenizer, some_texts, workload.calibration_batch, workload.calibration_lengths[1],
                                      RAW_TEXT)
        return collect_feature_norms(model, batches, modules)[0]

    timing = measure(lambda: ours(texts), device, repeats, warmup=lambda: ours(texts[:2 * workload.calibration_batch]))
    ours_on_subsample = ours(subsample)  # the same sequences as the reference, for the agreement
    weights = {name: m.weight.detach().float().cpu() for name, m in modules.items()}
    agreement = mask_agreement(compute_masks(weights, reference.result, "antidote", MASK_ALPHA),
                               compute_masks(weights, ours_on_subsample, "antidote", MASK_ALPHA))
    norm_error = max(((ours_on_subsample[n] - reference.result[n]).norm() / reference.result[n].norm()).item()
                     for n in modules)

    total_tokens, sub_tokens = sum(lengths), sum(lengths[:len(subsample)])
    scaled = len(subsample) < len(texts)
    return Row(
        loop="calibration", status="measured",
        workload=(f"{len(texts)} sequences of {workload.calibration_lengths[0]}-{workload.calibration_lengths[1]} "
                  f"tokens ({total_tokens} tokens), batch {workload.calibration_batch}"),
        reference_s=reference.seconds * total_tokens / sub_tokens, ours_s=timing.seconds,
        floor_s=calibration_floor(cost, lengths, workload.calibration_batch, ceilings),
        reference_peak_gib=peak_gib(reference), ours_peak_gib=peak_gib(timing),
        checks={"mask_agreement": agreement, "feature_norm_rel_error": norm_error},
        check=f"mask agreement {100 * agreement:.2f}% (alpha {MASK_ALPHA}); n_j rel. diff {norm_error:.1e}",
        note=("reference: batch 1, fp32 model"
              + (f", run on {len(subsample)} of {len(texts)} sequences and scaled by token count" if scaled else "")
              + f"; ours: {DTYPE_NAMES[compute_dtype]} model, fp32 sums; agreement on the reference's sequences"))


def training_examples(workload: Workload, vocab_size: int, rng: random.Random) -> list[dict]:
    """Ragged examples as tokenize_example gives them: a masked prompt, then the answer."""
    examples = []
    for length in random_lengths(rng, workload.train_examples, workload.train_lengths):
        prompt = min(rng.randint(*workload.train_prompt_lengths), length // 2)
        ids = random_ids(rng, length, vocab_size)
        examples.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return examples


@dataclass
class TrainingRun:
    timing: Timing
    first_losses: list[float]


def time_training(model, examples, batch_ids: list[list[int]], settings: TrainSettings, pad_id: int,
                  device: torch.device, repeats: int, loss_fn=answer_loss) -> TrainingRun:
    """One epoch of ``train_step`` over ``batch_ids``, from the same adapter weights every repeat."""
    params = [p for p in model.parameters() if p.requires_grad]
    initial = [p.detach().clone() for p in params]

    def reset_adapter():
        with torch.no_grad():
            for p, start in zip(params, initial):
                p.copy_(start)

    def epoch(batches):
        reset_adapter()
        optimizer = make_optimizer(params, settings)
        losses = []
        for ids in batches:
            batch = {k: v.to(device) for k, v in collate([examples[i] for i in ids], pad_id).items()}
            losses.append(train_step(model, batch, optimizer, params, settings.max_grad_norm, loss_fn).detach())
        return torch.stack(losses).float().tolist()  # one host sync per epoch, not per step

    model.train()
    timing = measure(lambda: epoch(batch_ids), device, repeats, warmup=lambda: epoch(batch_ids[:2]))
    reset_adapter()
    model.eval()
    return TrainingRun(timing, timing.result[:LOSS_CHECK_BATCHES])


def same_batch_losses(model, examples, batch_ids, pad_id, device) -> tuple[list[float], list[float]]:
    """The full-sequence loss and the answer loss of the same batches, same weights, no update."""
    full, ours = [], []
    with torch.no_grad(), mixed_precision(device):
        for ids in batch_ids[:LOSS_CHECK_BATCHES]:
            batch = {k: v.to(device) for k, v in collate([examples[i] for i in ids], pad_id).items()}
            full.append(full_sequence_loss(model, batch).float().item())
            ours.append(answer_loss(model, batch).float().item())
    return full, ours


def training_row(model, examples, workload: Workload, settings: TrainSettings, pad_id: int, cost: LlamaCost,
                 ceilings: Ceilings, device: torch.device, repeats: int, seed: int) -> tuple[Row, TrainingRun]:
    # The reference: an HF Trainer's random sampler, batches padded to their longest example.
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    reference_batches = [order[i:i + workload.train_batch] for i in range(0, len(order), workload.train_batch)]
    our_batches = length_grouped_batches([len(e["input_ids"]) for e in examples], workload.train_batch,
                                         random.Random(seed))
    full, answer_only = same_batch_losses(model, examples, reference_batches, pad_id, device)
    loss_error = max(abs(a - b) / abs(a) for a, b in zip(full, answer_only))

    reference = time_training(model, examples, reference_batches, settings, pad_id, device, repeats, full_sequence_loss)
    free_memory(device)
    ours = time_training(model, examples, our_batches, settings, pad_id, device, repeats)
    free_memory(device)
    tokens = sum(len(e["input_ids"]) for e in examples)
    row = Row(
        loop="training",
        workload=(f"{len(examples)} examples of {workload.train_lengths[0]}-{workload.train_lengths[1]} tokens "
                  f"({tokens} tokens), batch {workload.train_batch}, one epoch"),
        reference_s=reference.timing.seconds, ours_s=ours.timing.seconds,
        floor_s=training_floor(cost, examples, workload.train_batch, ceilings),
        reference_peak_gib=peak_gib(reference.timing), ours_peak_gib=peak_gib(ours.timing),
        rate_unit="trained tokens/s", reference_rate=tokens / reference.timing.seconds,
        ours_rate=tokens / ours.timing.seconds,
        checks={"loss_rel_error": loss_error, "reference_loss": statistics.fmean(full),
                "ours_loss": statistics.fmean(answer_only)},
        check=(f"loss on the same {len(full)} batches: full {statistics.fmean(full):.4f} / answer-only "
               f"{statistics.fmean(answer_only):.4f} (max rel. diff {loss_error:.1e})"),
        note=("reference: random batches padded to their longest, logits at every position; "
              "ours: length-grouped batches, logits at answer positions; both: train_step "
              f"({'bf16 autocast' if device.type == 'cuda' else 'no autocast on a CPU'}, AdamW, clipping)"))
    return row, ours


def generation_row(model, tokenizer, workload: Workload, cost: LlamaCost, ceilings: Ceilings,
                   device: torch.device, repeats: int, rng: random.Random) -> Row:
    lengths = random_lengths(rng, workload.prompts, workload.prompt_lengths)
    prompts = [as_text(random_ids(rng, n, cost.vocab)) for n in lengths]
    measured, reference_prompts = prompts[:workload.measured_prompts], prompts[:workload.reference_prompts]
    # Every prompt gets exactly new_tokens tokens: the evaluation's worst case, and a fixed token count.
    model.generation_config.eos_token_id = None
    new = workload.new_tokens

    reference = measure(lambda: authors_generate(model, tokenizer, reference_prompts, new), device, repeats,
                        warmup=lambda: authors_generate(model, tokenizer, reference_prompts[:1], 8))
    free_memory(device)
    ours = measure(lambda: greedy_generate(model, tokenizer, measured, RAW_TEXT, new, workload.generation_batch),
                   device, repeats,
                   warmup=lambda: greedy_generate(model, tokenizer, measured[:2], RAW_TEXT, 8, workload.generation_batch))
    free_memory(device)
    same = sum(a == b for a, b in zip(reference.result, ours.result))
    notes = [f"EOS disabled: {new} new tokens per prompt", "both on merged weights"]
    if len(reference_prompts) < len(prompts):
        notes.append(f"reference: batch 1 on {len(reference_prompts)} prompts, time scaled by prompt count")
    if len(measured) < len(prompts):
        notes.append(f"ours: batch {workload.generation_batch} on {len(measured)} prompts, time scaled by prompt count")
    return Row(
        loop="generation",
        workload=(f"{len(prompts)} prompts of {workload.prompt_lengths[0]}-{workload.prompt_lengths[1]} tokens, "
                  f"{new} new tokens each, batch {workload.generation_batch}"),
        reference_s=reference.seconds * len(prompts) / len(reference_prompts),
        ours_s=ours.seconds * len(prompts) / len(measured),
        floor_s=generation_floor(dataclasses.replace(cost, lora_r=0), lengths, workload.generation_batch, new, ceilings),
        reference_peak_gib=peak_gib(reference), ours_peak_gib=peak_gib(ours),
        rate_unit="generated tokens/s", reference_rate=len(reference_prompts) * new / reference.seconds,
        ours_rate=len(measured) * new / ours.seconds,
        checks={"same_answers": same, "compared_answers": len(reference_prompts)},
        check=f"answers equal to batch 1: {same}/{len(reference_prompts)} (bf16 padding may flip near-ties)",
        note="; ".join(notes))


def qlora_skip_reason(device: torch.device) -> str | None:
    try:
        check_quantization("4bit", str(device))
    except ValueError:
        return "skipped: needs CUDA (bitsandbytes 4-bit training on a CPU leaves the loss unchanged)"
    except ImportError:
        return "skipped: bitsandbytes is not installed (pip install -e '.[gpu]')"
    return None


def qlora_row(model_dir: Path, examples, workload: Workload, settings: TrainSettings, pad_id: int, cost: LlamaCost,
              ceilings: Ceilings, device: torch.device, repeats: int, seed: int, bf16: TrainingRun) -> Row:
    """The library's 4-bit path (load_base_for_training, 8-bit AdamW) on the same batches as ours."""
    base = load_base_for_training(model_dir, "4bit", device=str(device))
    model = add_lora(base, LoraSettings(r=workload.lora_r, alpha=workload.lora_alpha, dropout=0.0,
                                        target_modules=list(workload.lora_targets)))
    randomize_lora_b(model, seed)
    batches = length_grouped_batches([len(e["input_ids"]) for e in examples], workload.train_batch, random.Random(seed))
    quantized = time_training(model, examples, batches, dataclasses.replace(settings, quantization="4bit"),
                              pad_id, device, repeats)
    tokens = sum(len(e["input_ids"]) for e in examples)
    first_bf16, first_4bit = bf16.first_losses[0], quantized.first_losses[0]
    return Row(
        loop="qlora", workload="as LoRA training, on a 4-bit NF4 base with 8-bit AdamW",
        reference_s=bf16.timing.seconds, ours_s=quantized.timing.seconds,
        floor_s=training_floor(cost, examples, workload.train_batch, ceilings, layer_bytes_per_param=0.5),
        reference_peak_gib=peak_gib(bf16.timing), ours_peak_gib=peak_gib(quantized.timing),
        rate_unit="trained tokens/s", reference_rate=tokens / bf16.timing.seconds,
        ours_rate=tokens / quantized.timing.seconds,
        checks={"first_loss_bf16": first_bf16, "first_loss_4bit": first_4bit},
        check=f"first-step loss bf16 {first_bf16:.4f} / 4-bit {first_4bit:.4f}",
        note=("reference: the LoRA training row's ours (bf16 base); ours: load_base_for_training(quantization='4bit'), "
              "gradient checkpointing as prepare_model_for_kbit_training sets it"))


# ----------------------------------------------------------------------------------------------
# Output


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    threads = torch.get_num_threads()
    return f"CPU {platform.machine()} {platform.processor() or ''}".strip() + f", {threads} torch thread{'s' * (threads != 1)}"


def versions() -> str:
    import peft
    import transformers

    try:
        import bitsandbytes
        bnb = bitsandbytes.__version__
    except ImportError:
        bnb = "not installed"
    return f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, bitsandbytes {bnb}"


def command_line() -> str:
    script = os.path.relpath(sys.argv[0]) if Path(sys.argv[0]).resolve().is_relative_to(Path.cwd()) else sys.argv[0]
    return " ".join(shlex.quote(a) for a in ["python", script, *sys.argv[1:]])


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.1f} s"


def cell(time_s: float | None, rate: float | None, unit: str) -> str:
    if rate is None:
        return seconds(time_s)
    return f"{seconds(time_s)} ({rate:,.0f} {unit})"


def memory_cell(row: Row) -> str:
    if row.reference_peak_gib is None and row.ours_peak_gib is None:
        return "n/a (CPU)" if row.status == "measured" else "-"
    return f"{row.reference_peak_gib:.1f} / {row.ours_peak_gib:.1f} GiB"


COLUMNS = ["loop", "workload", "reference", "ours", "ratio", "floor", "peak GPU memory (reference / ours)",
           "check", "note"]


def markdown(runs: list[dict], rows: list[Row]) -> str:
    lines = ["# The workflow's costly loops: the library against the authors' ways", ""]
    for i, run in enumerate(runs):
        lines += [f"Run {i}:", "",
                  f"- command: `{run['command']}`",
                  f"- device: {run['device']}",
                  f"- {run['versions']}",
                  f"- model: {run['model']}",
                  f"- measured ceilings (for the floors): {run['ceilings']}",
                  f"- timing: median of {run['repeats']} runs after a warm-up; started {run['started']}", ""]
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        ratio = f"{row.ratio:.2f}x" if row.ratio else "-"
        cells = [LOOP_TITLES[row.loop] + (f" (run {row.run})" if len(runs) > 1 else ""), row.workload,
                 cell(row.reference_s, row.reference_rate, row.rate_unit),
                 cell(row.ours_s, row.ours_rate, row.rate_unit), ratio, seconds(row.floor_s), memory_cell(row),
                 row.check, row.note]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    lines += ["", "ratio: reference time / ours time (above 1: ours is faster). floor: the larger of the "
              "loop's fewest operations at the measured matmul rate and its fewest bytes at the measured "
              "copy rate (bench/README.md).", ""]
    if any(run["device"].startswith("CPU") for run in runs):
        lines += ["A CPU run checks that every loop runs and agrees; its times say nothing about a GPU.", ""]
    return "\n".join(lines)


def write_outputs(out: Path, runs: list[dict], rows: list[Row]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(runs, rows))
    records = [{**dataclasses.asdict(r), "ratio": r.ratio} for r in rows]
    out.with_suffix(".json").write_text(json.dumps({"runs": runs, "rows": records}, indent=2) + "\n")
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[k for k in records[0] if k != "checks"] + ["checks"])
        writer.writeheader()
        for record in records:
            writer.writerow({**record, "checks": json.dumps(record["checks"])})


def merge_with_previous(out: Path, run: dict, rows: list[Row]) -> tuple[list[dict], list[Row]]:
    """--update: keep the earlier rows of the loops not run now (one table from several calls)."""
    previous = out.with_suffix(".json")
    if not previous.exists():
        return [run], rows
    old = json.loads(previous.read_text())
    runs = old["runs"] + [run]
    now = {r.loop for r in rows}
    for r in rows:
        r.run = len(runs) - 1
    kept = [Row(**{k: v for k, v in r.items() if k != "ratio"}) for r in old["rows"] if r["loop"] not in now]
    return runs, kept + rows


# ----------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a tiny Llama and tiny counts (on the CPU unless --device)")
    parser.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda when present)")
    parser.add_argument("--loops", nargs="+", choices=LOOPS, default=list(LOOPS))
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per loop and way; the median is reported")
    parser.add_argument("--out", type=Path,
                        help="the Markdown table, .json and .csv beside it (default: bench/results/gpu_loops.md, "
                             "or gpu_loops_smoke.md with --smoke, so a smoke run never overwrites a GPU result)")
    parser.add_argument("--update", action="store_true",
                        help="keep the rows of loops not run now from the existing .json beside --out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads (default: 1 for --smoke on a CPU, where a tiny model's matrices gain "
                             "nothing from threads and a busy machine stalls them; else torch's default)")
    sizes = parser.add_argument_group("workload (defaults: the authors' setting, or tiny with --smoke)")
    for name in ("calibration_sequences", "reference_calibration_sequences", "calibration_batch", "prompts",
                 "measured_prompts", "reference_prompts", "new_tokens", "generation_batch", "train_examples"):
        sizes.add_argument("--" + name.replace("_", "-"), type=int)
    args = parser.parse_args(argv)
    args.out = args.out or REPO / "bench/results" / ("gpu_loops_smoke.md" if args.smoke else "gpu_loops.md")
    workload = SMOKE if args.smoke else REAL
    workload = dataclasses.replace(workload, **{k: v for k, v in vars(args).items()
                                                if k in Workload.__dataclass_fields__ and v is not None})
    if workload.reference_calibration_sequences > workload.calibration_sequences \
            or workload.measured_prompts > workload.prompts or workload.reference_prompts > workload.measured_prompts:
        parser.error("subsamples must not exceed their workloads (reference prompts <= measured prompts <= prompts)")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda" and not args.smoke:
        parser.error("the real workload (Llama-2-7B shapes) needs a CUDA GPU; use --smoke on a CPU")
    return args, workload, device


def main(argv=None) -> None:
    args, workload, device = parse_args(argv)
    threads = args.threads or (1 if args.smoke and device.type == "cpu" else 0)
    if threads:
        torch.set_num_threads(threads)
    compute_dtype = torch.bfloat16
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    tokenizer = word_tokenizer(workload.model["vocab_size"])
    ceilings = measure_ceilings(device, compute_dtype)
    model, config = random_llama_with_lora(workload, tokenizer, device, args.seed)
    cost = LlamaCost.of(config, workload.lora_r, workload.lora_targets)
    settings = TrainSettings(learning_rate=1e-4, weight_decay=0.1, batch_size=workload.train_batch)  # the paper's fine-tuning
    run = {"command": command_line(), "device": describe_device(device), "versions": versions(),
           "model": (f"Llama, hidden {config.hidden_size}, {config.num_hidden_layers} layers, {config.num_attention_heads} "
                     f"heads, intermediate {config.intermediate_size}, vocab {config.vocab_size}, random weights "
                     f"(seed {args.seed}); LoRA r={workload.lora_r}, alpha {workload.lora_alpha:g}, dropout 0, "
                     f"on {', '.join(workload.lora_targets)}"),
           "ceilings": (f"{DTYPE_NAMES[compute_dtype]} matmul {ceilings.matmul_flops / 1e12:.3g} TFLOP/s, "
                        f"device copy {ceilings.copy_bytes_per_s / 1e9:.3g} GB/s"),
           "repeats": args.repeats, "started": started}
    rows: list[Row] = []

    def data_rng(loop: str) -> random.Random:
        # one stream per loop: a loop run alone (--loops, --update) sees the same data as in a full run
        return random.Random(f"{args.seed}:{loop}")

    def progress(message):
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    if "calibration" in args.loops:
        progress("calibration")
        rows.append(calibration_row(model, tokenizer, workload, cost, ceilings, device, args.repeats,
                                    data_rng("calibration"), compute_dtype))
    cast_base_keep_adapter(model, compute_dtype)  # every later loop runs on the bf16 base, as on a GPU
    free_memory(device)

    skip_qlora = qlora_skip_reason(device) if "qlora" in args.loops else None
    bf16_training = None
    if "training" in args.loops or ("qlora" in args.loops and not skip_qlora):
        progress("training")
        examples = training_examples(workload, config.vocab_size, data_rng("training"))
        row, bf16_training = training_row(model, examples, workload, settings, tokenizer.pad_token_id, cost, ceilings,
                                          device, args.repeats, args.seed)
        if "training" in args.loops:
            rows.append(row)

    model = model.merge_and_unload()  # as evaluate_stage loads a model: the adapter merged
    free_memory(device)
    if "generation" in args.loops:
        progress("generation")
        rows.append(generation_row(model, tokenizer, workload, cost, ceilings, device, args.repeats,
                                   data_rng("generation")))

    if "qlora" in args.loops and skip_qlora:
        rows.append(Row(loop="qlora", workload="as LoRA training, on a 4-bit NF4 base with 8-bit AdamW",
                        status="skipped", check=skip_qlora))
    elif "qlora" in args.loops:
        progress("qlora")
        with tempfile.TemporaryDirectory() as model_dir:
            model.save_pretrained(model_dir)  # bitsandbytes quantizes while loading, so the 4-bit base loads from disk
            del model
            free_memory(device)
            rows.append(qlora_row(Path(model_dir), examples, workload, settings, tokenizer.pad_token_id, cost,
                                  ceilings, device, args.repeats, args.seed, bf16_training))

    runs, rows = merge_with_previous(args.out, run, rows) if args.update else ([run], rows)
    rows.sort(key=lambda r: LOOPS.index(r.loop))
    write_outputs(args.out, runs, rows)
    print(markdown(runs, rows))
    print(f"written: {args.out} (+ .json, .csv)", file=sys.stderr)


if __name__ == "__main__":
    main()
