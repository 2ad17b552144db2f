"""What each training-time defense adds to a training step, against plain SFT in the same run.

    python bench/training_defense_cost.py --model tiny --steps 20           # seconds
    python bench/training_defense_cost.py --model smollm2-135m --steps 12   # the default run's shapes

The same training (``antidote.train.train_lora``: random token sequences, batch 8, max_length
192, random weights; nothing is downloaded) runs once per defense of
``antidote.training_defenses.TRAINING_DEFENSES`` with its default settings (Lisa: 2 alignment and
3 fine-tuning steps, so that both phases and the proximal terms, which start after 10% of the
steps, are in the median), after a short warm-up training. The table gives the median step (each
training's first step left out) and its ratio to SFT's.
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from antidote.train import TrainSettings, train_lora  # noqa: E402
from antidote.training_defenses import TRAINING_DEFENSES  # noqa: E402
from checkpoint_cost import MODELS  # noqa: E402
from gpu_loops import as_text, random_ids, word_tokenizer  # noqa: E402

SETTINGS = {"lisa": {"alignment_steps": 2, "finetune_steps": 3}}


def median_step(name: str, defense: str, steps: int) -> float:
    shape, lora = MODELS[name]
    torch.manual_seed(0)
    tokenizer = word_tokenizer(shape["vocab_size"])
    rng = random.Random(0)

    def records(n):
        return [{"instruction": as_text(random_ids(rng, rng.randint(20, 60), shape["vocab_size"])),
                 "output": as_text(random_ids(rng, rng.randint(40, 120), shape["vocab_size"]))} for _ in range(n)]

    training, guide = records(8 * steps), records(8 * steps)
    config = LlamaConfig(**shape, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "log.jsonl"
        train_lora(LlamaForCausalLM(config), tokenizer, training, lora,
                   TrainSettings(epochs=1, learning_rate=1e-4, batch_size=8, max_length=192), "alpaca", log,
                   defense=defense, defense_settings=SETTINGS.get(defense), guide_records=guide)
        seconds = [float(re.search(r'"seconds": ([0-9.e-]+)', line).group(1)) for line in log.read_text().splitlines()]
    return statistics.median([b - a for a, b in zip([0.0] + seconds, seconds)][1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=MODELS, default="tiny")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    median_step(args.model, "sft", 3)  # a warm-up: the process's first training pays for what later ones reuse
    times = {defense: median_step(args.model, defense, args.steps) for defense in TRAINING_DEFENSES}
    print(f"{args.model}, {args.steps} steps of batch 8, {args.threads} threads, CPU\n")
    print("| defense | median step, s | against sft |")
    print("|---|---|---|")
    for defense, seconds in times.items():
        print(f"| {defense} | {seconds:.3f} | {seconds / times['sft']:.2f}x |")


if __name__ == "__main__":
    main()
