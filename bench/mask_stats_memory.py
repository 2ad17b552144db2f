"""Peak memory of rule mask_stats at 7B shapes, reading every mask at once (as it did) against one
matrix at a time (as it does), printed as a table.

    .venv/bin/python bench/mask_stats_memory.py [--defenses 4] [--layers 32]

Random masks of Llama-2-7B's LoRA shapes (r=256 on q, k, v of 32 layers: lora_A 256 x 4096,
lora_B 4096 x 256, 201M entries per adapter), alpha 0.05 per row, one file per defense of one
run, are written to a temporary folder; each way then runs in a process of its own, whose peak
resident memory (``ru_maxrss``) is the figure. Nothing is downloaded; about a minute on 2 cores.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFENSES = ["antidote", "antidote-benign", "antidote-setdiff", "random", "magnitude"]
HIDDEN, RANK, ALPHA = 4096, 256, 0.05

# The two ways, each run as `python -c` in a fresh process: the masks' (run, model) -> file map
# and the defenses' settings come from the folder's index.json.
SETUP = """
import json, sys
from pathlib import Path
folder = Path(sys.argv[1])
index = json.loads((folder / "index.json").read_text())
files = {("run", model): folder / f"{model}.parquet" for model in index}
pruned = {model: {"defense": spec[0], "alpha": spec[1]} for model, spec in index.items()}
"""
WAYS = {
    "every mask read at once (before)": SETUP + """
from antidote.maskfile import read_masks
from antidote.maskstats import density_table, overlap_table
masks = {key: read_masks(path)[0] for key, path in files.items()}
overlap_table(masks, pruned), density_table(masks, pruned)
""",
    "one matrix at a time (write_mask_stats)": SETUP + """
from antidote.maskstats import write_mask_stats
write_mask_stats(files, pruned, folder / "tables", folder / "plots")
""",
}


def write_random_masks(folder: Path, defenses: list[str], layers: int) -> float:
    """One mask file per defense: alpha of every row pruned at random (a mask's size and density
    as Antidote's at 7B). Returns the size of one file in MB."""
    import json

    import torch

    from antidote.maskfile import write_masks
    from antidote.paths import pruned_name
    from antidote.prune import random_score, top_fraction_mask

    generator = torch.Generator().manual_seed(0)
    index = {}
    for defense in defenses:
        masks = {}
        for layer in range(layers):
            for module in ("q_proj", "k_proj", "v_proj"):
                prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
                for matrix, shape in (("A", (RANK, HIDDEN)), ("B", (HIDDEN, RANK))):
                    score = random_score(torch.empty(shape), None, generator)
                    masks[f"{prefix}.lora_{matrix}.weight"] = top_fraction_mask(score, ALPHA)
        name = pruned_name(defense, ALPHA)
        write_masks(folder / f"{name}.parquet", masks, {"defense": defense, "alpha": ALPHA})
        index[name] = [defense, ALPHA]
    (folder / "index.json").write_text(json.dumps(index))
    return (folder / f"{pruned_name(defenses[0], ALPHA)}.parquet").stat().st_size / 1e6


def peak_mb(code: str, folder: Path) -> tuple[float, float]:
    """Peak resident memory (MB) and wall seconds of ``code`` in a process of its own."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", code, str(folder)])
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"the measured process failed with status {status}")
    return usage.ru_maxrss / 1024, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--defenses", type=int, default=4, help="mask files of one run and alpha (at most 5)")
    parser.add_argument("--layers", type=int, default=32, help="decoder layers (Llama-2-7B: 32)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        size = write_random_masks(folder, DEFENSES[:args.defenses], args.layers)
        entries = args.layers * 3 * 2 * RANK * HIDDEN
        print(f"{args.defenses} masks of {entries / 1e6:.0f}M entries ({args.layers} layers, r={RANK} on q, k, v), "
              f"{size:.1f} MB per file\n")
        print("| rule mask_stats | peak memory MB | wall s |")
        print("|---|---|---|")
        for way, code in WAYS.items():
            peak, seconds = peak_mb(code, folder)
            print(f"| {way} | {peak:.0f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
