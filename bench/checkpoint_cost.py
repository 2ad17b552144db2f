"""What a training checkpoint costs: the time to write one against the time of a training step.

    python bench/checkpoint_cost.py --model tiny            # the tests' tiny Llama, seconds
    python bench/checkpoint_cost.py --model smollm2-135m    # the default run's shapes, random weights
    python bench/checkpoint_cost.py --write-only llama2-7b  # writing a 7B adapter's checkpoint alone

The same training (``antidote.train.train_lora``, random token sequences, batch 8, max_length
192) runs twice: without checkpoints, then with one after every step (``checkpoint_every: 1``).
The table gives the mean step of the first run (its first step, a warm-up, left out), the mean
and the longest time to write a checkpoint (as the training logs it: building the state,
``torch.save`` to a temporary file, fsync, rename; the fsync waits for the disk, so a busy disk
shows in the longest), the checkpoint's size, and the mean checkpoint as a share of a mean step
(at ``checkpoint_every`` steps apart, divide by that number). Nothing is downloaded.

``--write-only`` skips the training, which a 7B model would need a GPU for: it writes, with the
same ``Checkpoints.save``, a checkpoint of the state a training of the authors' adapter holds
(r=256 on q, k, v of Llama-2-7B's 32 layers: the adapter and AdamW's two moments in fp32, random
values), and prints its size and the time to write it (median of three).
"""

from __future__ import annotations

import argparse
import logging
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from antidote.checkpoint import Checkpoints  # noqa: E402
from antidote.train import LoraSettings, TrainSettings, train_lora  # noqa: E402
from gpu_loops import as_text, random_ids, word_tokenizer  # noqa: E402

MODELS = {  # (model, adapter): the tests' tiny Llama (tests/tiny/config.yaml's fine-tuning), SmolLM2-135M
    "tiny": (dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=300, tie_word_embeddings=False), LoraSettings(r=8, alpha=16)),
    "smollm2-135m": (dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                          num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
                     LoraSettings(r=32, alpha=64)),
}


class Written(logging.Handler):
    """The times of the training's "checkpoint at step N of M written in S s" lines."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def emit(self, record):
        match = re.search(r"written in ([0-9.]+) s", record.getMessage())
        if match:
            self.seconds.append(float(match.group(1)))


def run(name: str, steps: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    shape, lora = MODELS[name]
    torch.manual_seed(0)
    tokenizer = word_tokenizer(shape["vocab_size"])
    rng = random.Random(0)
    records = [{"instruction": as_text(random_ids(rng, rng.randint(20, 60), shape["vocab_size"])),
                "output": as_text(random_ids(rng, rng.randint(40, 120), shape["vocab_size"]))}
               for _ in range(8 * steps)]
    settings = TrainSettings(epochs=1, learning_rate=1e-4, batch_size=8, max_length=192)
    config = LlamaConfig(**shape, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    written = Written()
    logging.getLogger().addHandler(written)
    logging.getLogger().setLevel(logging.INFO)
    step_seconds = []
    with tempfile.TemporaryDirectory() as folder:
        for every in (None, 1):
            checkpoints = Checkpoints(Path(folder), "bench", every, minutes=None) if every else None
            log = Path(folder) / "log.jsonl"
            started = time.time()
            train_lora(LlamaForCausalLM(config), tokenizer, records, lora, settings, "alpaca", log, checkpoints)
            if every is None:
                seconds = [float(re.search(r'"seconds": ([0-9.e-]+)', line).group(1))
                           for line in log.read_text().splitlines()]
                step_seconds = [b - a for a, b in zip([0.0] + seconds, seconds)][1:]  # the first warms up
            else:
                size = (Path(folder) / "checkpoint.pt").stat().st_size
            print(f"{name}: {'no checkpoints' if every is None else 'a checkpoint every step'}: "
                  f"{time.time() - started:.1f} s", file=sys.stderr)
    step, write = statistics.mean(step_seconds), statistics.mean(written.seconds)
    return {"model": name, "step_s": step, "checkpoint_s": write, "longest_s": max(written.seconds),
            "checkpoint_mb": size / 1e6, "share": write / step}


# (layers, hidden size, LoRA rank) of the adapters whose checkpoint --write-only writes
ADAPTER_SHAPES = {"llama2-7b": (32, 4096, 256), "tiny": (2, 32, 8)}


def write_only(name: str, repeats: int = 3) -> dict:
    """The time to write (``Checkpoints.save``: torch.save, fsync, rename) the checkpoint of an
    adapter of these shapes with its AdamW state, and its size."""
    layers, hidden, rank = ADAPTER_SHAPES[name]
    shapes = [shape for _ in range(layers * 3) for shape in ((rank, hidden), (hidden, rank))]
    adapter = {f"weight.{i}": torch.randn(shape) for i, shape in enumerate(shapes)}
    moments = {i: {"step": torch.tensor(1.0), "exp_avg": torch.randn(shape), "exp_avg_sq": torch.rand(shape)}
               for i, shape in enumerate(shapes)}
    state = {"step": 1, "adapter": adapter, "optimizer": {"state": moments, "param_groups": [{"params": list(moments)}]}}
    seconds = []
    with tempfile.TemporaryDirectory() as folder:
        checkpoints = Checkpoints(Path(folder), "bench")
        for _ in range(repeats):
            started = time.perf_counter()
            checkpoints.save(state)
            seconds.append(time.perf_counter() - started)
        size = checkpoints.file.stat().st_size
    return {"adapter": name, "weights_m": sum(t.numel() for t in adapter.values()) / 1e6, "checkpoint_gb": size / 1e9,
            "seconds": statistics.median(seconds), "longest_s": max(seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, nargs="+", default=["tiny"])
    parser.add_argument("--write-only", choices=ADAPTER_SHAPES, help="only write a checkpoint of these shapes")
    parser.add_argument("--steps", type=int, default=6, help="training steps per run (default 6)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.write_only:
        r = write_only(args.write_only)
        print("| adapter | weights (M) | checkpoint (GB) | write, median of 3 (s) | longest (s) |")
        print("|---|---|---|---|---|")
        print(f"| {r['adapter']} (r={ADAPTER_SHAPES[r['adapter']][2]}, q/k/v) | {r['weights_m']:.3g} | {r['checkpoint_gb']:.2f} | {r['seconds']:.1f} | "
              f"{r['longest_s']:.1f} |")
        return
    print(f"{args.steps} steps, batch 8, {args.threads} threads, torch {torch.__version__}\n")
    print("| model | step (s) | checkpoint (s) | longest checkpoint (s) | checkpoint (MB) | checkpoint / step |")
    print("|---|---|---|---|---|---|")
    for name in args.model:
        r = run(name, args.steps, args.threads)
        print(f"| {r['model']} | {r['step_s']:.3f} | {r['checkpoint_s']:.3f} | {r['longest_s']:.3f} | "
              f"{r['checkpoint_mb']:.1f} | {100 * r['share']:.1f}% |")


if __name__ == "__main__":
    main()
