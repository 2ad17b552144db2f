"""The protocol's stages as file-to-file functions: what the Snakemake scripts and the CLI call."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import pandas as pd
from safetensors.torch import load_file, save_file

from . import data
from .atomic import atomic_path
from .benign import benign_splits
from .calibrate import calibration_batches, collect_feature_norms, lora_matrices
from .checkpoint import Checkpoints, fingerprint
from .generate import greedy_generate
from .maskfile import write_masks, write_projection
from .modeling import format_prompt, load_model, load_tokenizer
from .records import DataError, jsonl_rows, read_jsonl, write_jsonl
from .prune import DEFENSES, ROUNDING, apply_masks, compute_masks, mask_scope, update_removed
from .safelora import alignment_from_adapter, alignment_from_models, safelora
from .tasks import TASKS
from .quantization import check_quantization, load_base_for_training
from .train import LoraSettings, TrainSettings, check_prompts_fit, train_lora
from .training_defenses import TRAINING_DEFENSES

# What every training record holds (stage 1's and 2's JSONL; ``input`` is optional)
TRAINING_FIELDS = ("instruction", "output")

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def build_splits(sources: dict[str, Path], settings: dict, out_dir: Path, only: str | None = None) -> dict:
    """The prompt splits of ``settings["source"]`` (``advbench`` or ``beavertails``), plus the
    benign instructions (``alignment_benign``, and ``benign_test`` held out of it for measuring
    over-refusal: the same for every source), written as JSONL with the counts in ``splits.json``.

    ``sources`` names the files (advbench + donotanswer, or train + test; test_prompts
    optionally); ``settings`` is the config's ``data`` section (source, seed, sizes,
    beavertails.order, test_prompts.field). Seeded splits must be disjoint; the authors' BeaverTails slices
    may share prompts, which ``splits.json`` counts under ``shared_prompts``. RepNoise's harmful
    prompts (:data:`antidote.data.DEFENSE_POOL`, cut after every other split) are written alone with
    ``only``, so that asking for them rewrites no other split; without it every other split and
    the report are written.
    """
    sizes, seed = settings["sizes"], settings["seed"]
    test_prompts = None
    if "test_prompts" in sources:
        test_prompts = data.load_prompts(sources["test_prompts"], settings["test_prompts"].get("field", "prompt"))
    if settings["source"] == "advbench":
        order = "seeded"
        refusal_prompts = data.load_donotanswer(sources["donotanswer"],
                                                settings.get("donotanswer_areas", data.REFUSAL_AREAS))
        splits = data.advbench_splits(data.load_advbench(sources["advbench"]), refusal_prompts,
                                      sizes, seed, test_prompts)
    else:
        order = settings["beavertails"].get("order", "seeded")
        test = data.load_beavertails(sources["test"]) if test_prompts is None else []
        splits = data.beavertails_splits(data.load_beavertails(sources["train"]), test, sizes, seed, order, test_prompts)
    splits.update(benign_splits(sizes, seed))
    if order == "seeded":
        data.check_disjoint(splits)
    shared = data.shared_prompts(splits)
    for pair, prompts in shared.items():
        logging.warning("%d prompts stand in both %s (the authors' slices), e.g. %r", len(prompts), pair, prompts[0])
    if only is not None:
        write_jsonl(out_dir / f"{only}.jsonl", splits[only])
        return {only: len(splits[only])}
    splits.pop(data.DEFENSE_POOL)
    for name, records in splits.items():
        write_jsonl(out_dir / f"{name}.jsonl", records)
    report = {"source": settings["source"], "order": order, **{name: len(records) for name, records in splits.items()},
              "shared_prompts": {pair: len(prompts) for pair, prompts in shared.items()}}
    with atomic_path(out_dir / "splits.json") as temp:
        temp.write_text(json.dumps(report, indent=2))
    return report


def build_task_data(task: str, spec: dict | None, sizes: dict, seed: int, out_dir: Path,
                    in_file_order: bool = False) -> dict:
    """Train, validation and eval items of a task: from the user's files, or the task's built-in
    stand-in. Validation items (``task_validation``, default 0) are held out of both the
    training and the eval items, for choosing settings; adding them changes neither.

    With ``train`` and ``eval`` files, eval items are the first ``task_eval`` of the eval file
    (the authors' protocol); training items are a seeded sample of ``task_train`` from the train
    file, or with ``in_file_order`` its first ones (the authors'), and validation items the next
    ones of the same order (as many as remain, up to ``task_validation``). With one ``file``,
    all three are a balanced, seeded, disjoint cut of its distinct texts
    (:func:`data.corpus_splits`; always seeded), and the report counts what each filter dropped.
    """
    counts = None
    n_validation = sizes.get("task_validation", 0)
    if spec and "file" in spec:
        parts, counts = data.corpus_splits(spec, task, sizes, seed)
        train, validation, evaluation = parts["train"], parts["validation"], parts["eval"]
    elif spec:
        options = dict(fields=spec.get("fields"), labels=spec.get("labels"), **data.task_filters(spec))
        train = data.load_task_file(spec["train"], task, **options)
        evaluation = data.load_task_rows(spec["eval"], task, **options)[:sizes["task_eval"]]
        data.check_distinct(evaluation, data.text_column(task, spec.get("fields")), f"tasks.{task}.eval")
        evaluation = [item for _, item in evaluation]
        held_out = {data.prompt_key(r) for r in evaluation}
        train = [r for r in train if data.prompt_key(r) not in held_out]
        n_train = min(sizes["task_train"], len(train))
        parts = data.cut(train, {"train": n_train, "validation": min(n_validation, len(train) - n_train)}, seed,
                         spec["train"], shuffle=not in_file_order)
        train, validation = parts["train"], parts["validation"]
        if len(validation) < n_validation:
            logging.warning("tasks.%s.train: %d validation items of the %d asked (data.sizes.task_validation): "
                            "the file has no more beside the training items", task, len(validation), n_validation)
    elif TASKS[task].builtin:
        parts = data.cut(TASKS[task].builtin(seed), {"eval": sizes["task_eval"], "train": sizes["task_train"],
                                                     "validation": n_validation}, seed, f"{task} stand-in")
        train, validation, evaluation = parts["train"], parts["validation"], parts["eval"]
    else:
        raise ValueError(f"task {task!r} has no data: set tasks.{task}.file, or tasks.{task}.train and "
                         f"tasks.{task}.eval")
    data.check_disjoint({"train": train, "validation": validation, "eval": evaluation})
    write_jsonl(out_dir / "train.jsonl", train)
    write_jsonl(out_dir / "validation.jsonl", validation)
    write_jsonl(out_dir / "eval.jsonl", evaluation)
    report = {"task": task, "train": len(train), "validation": len(validation), "eval": len(evaluation),
              "source": evaluation[0]["source"] if evaluation else "none"}
    return {**report, "rows": counts} if counts is not None else report


def write_answers(model_dir: Path, prompts_file: Path, out_file: Path, prompt_format: str,
                  max_new_tokens: int, batch_size: int, keep: str, device: str = "cpu", dtype: str = "auto") -> dict:
    """Answers of a model to a prompt file, trimmed to whole sentences.

    ``keep="harmful"`` keeps only answers the refusal judge counts as compliance (the base
    model writes the harmful answers); ``keep="all"`` keeps every answer.
    """
    from .judges import RefusalJudge

    records = read_jsonl(prompts_file, ["instruction"])
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, device=device, dtype=dtype)
    texts = [format_prompt(tokenizer, r["instruction"], r.get("input", ""), prompt_format) for r in records]
    answers = [data.trim_to_sentence(a) for a in
               greedy_generate(model, tokenizer, texts, prompt_format, max_new_tokens, batch_size, desc=out_file.stem)]
    complied = RefusalJudge().flags([r["instruction"] for r in records], answers)
    kept = [dict(r, output=a) for r, a, c in zip(records, answers, complied)
            if keep == "all" or (c and a)]
    write_jsonl(out_file, kept)
    return {"prompts": len(records), "kept": len(kept), "refused_or_empty": len(records) - sum(complied)}


def train_stage(model_dir: Path, train_files: list[Path], out_dir: Path, lora: dict, training: dict,
                prompt_format: str, merge: bool, device: str = "cpu", dtype: str = "auto",
                adapter_dir: Path | None = None, checkpoint_dir: Path | None = None,
                checkpoint_every: int | None = None, checkpoint_minutes: float | None = 30,
                defense: str = "sft", defense_settings: dict | None = None,
                guide_files: list[Path] | None = None) -> None:
    """Stage 1 (``merge=True``: a full HF model directory) or stage 2 (a PEFT adapter).

    Stage 1 merges its adapter into the base's fp32 weights (:func:`~antidote.modeling.merge_in_fp32`) and saves
    the result in fp32: cast to bf16 here, a small alignment update would be rounded away before
    any later stage used it; each later stage rounds it once, to its own dtype, on loading.
    With ``adapter_dir`` it also keeps the adapter it merged there (SafeLoRA's alignment update).

    The training records are checked before any model is loaded. With ``checkpoint_dir`` the
    training saves a checkpoint there every ``checkpoint_minutes`` (and every ``checkpoint_every``
    steps, if set), at each epoch's end, at the last step and after
    :data:`~antidote.checkpoint.CHECKPOINT_SIGNAL`, goes on from one of
    the same settings and data if there is one, and removes it once the output is in place.
    ``defense`` (with ``defense_settings``) is a training-time defense
    (:data:`~antidote.training_defenses.TRAINING_DEFENSES`); one that reads data of its own reads
    ``guide_files``: Lisa the safe answers (the alignment data), RepNoise harmful pairs.
    """
    settings = TrainSettings(**training)
    check_quantization(settings.quantization, device)  # before the tokenizer or any model is loaded
    records = [(where, r) for f in train_files for where, r in jsonl_rows(f, TRAINING_FIELDS)]
    if not records:
        raise DataError(f"no training records in {', '.join(map(str, train_files))}")
    tokenizer = load_tokenizer(model_dir, padding_side="right")
    check_prompts_fit(tokenizer, records, prompt_format, settings.max_length)
    records = [r for _, r in records]
    spec = TRAINING_DEFENSES.get(defense)
    if spec is None:
        raise ValueError(f"unknown training defense {defense!r}; expected one of {sorted(TRAINING_DEFENSES)}")
    guide = [r for f in guide_files or [] for _, r in jsonl_rows(f, TRAINING_FIELDS)] if spec.guide else []
    if spec.guide and not guide:
        raise DataError(f"defense {defense!r} reads {spec.guide} examples of its own (guide files): none given")
    checkpoints = None
    if checkpoint_dir:
        settings_used = [asdict(LoraSettings(**lora)), asdict(settings), prompt_format, dtype, defense,
                         defense_settings or {}, guide]
        checkpoints = Checkpoints(checkpoint_dir, fingerprint(settings_used, records, model_dir=model_dir),
                                  checkpoint_every, checkpoint_minutes)
    # the signal that asks for a checkpoint may come while a large model is still loading
    with checkpoints.on_signal() if checkpoints else contextlib.nullcontext():
        model = load_base_for_training(model_dir, settings.quantization, device=device, dtype=dtype)
        with atomic_path(out_dir) as temp:
            temp.mkdir()
            peft_model = train_lora(model, tokenizer, records, LoraSettings(**lora), settings, prompt_format,
                                    log_path=temp / "train_log.jsonl", checkpoints=checkpoints, defense=defense,
                                    defense_settings=defense_settings, guide_records=guide)
            if merge:
                with tempfile.TemporaryDirectory() as scratch:
                    peft_model.save_pretrained(scratch)
                    del model, peft_model  # the trained copy in ``dtype``; the merge reloads the base in fp32
                    load_model(model_dir, scratch, merge=True, device="cpu", dtype="float32").save_pretrained(temp)
                    if adapter_dir:
                        with atomic_path(adapter_dir) as kept:
                            shutil.copytree(scratch, kept)
            else:
                peft_model.save_pretrained(temp)
            tokenizer.save_pretrained(temp)
    if checkpoints:
        checkpoints.remove()


def calibration_records(calibration_file: Path, calibration_size: int, benign_from: Path | None = None) -> list[dict]:
    """The first ``calibration_size`` (prompt, harmful answer) records of ``calibration_file``; or,
    with ``benign_from`` (a fine-tuning set, rule finetune_data), the benign control: as many of its
    task items (``kind: task``, as fine-tuning saw them) as the harmful set holds."""
    records = read_jsonl(calibration_file, TRAINING_FIELDS)[:calibration_size]
    if len(records) < calibration_size:
        logging.warning("%s holds %d calibration records, fewer than data.calibration_size = %d",
                        calibration_file, len(records), calibration_size)
    if benign_from is None:
        return records
    benign = [r for r in read_jsonl(benign_from, TRAINING_FIELDS) if r.get("kind") == "task"][:len(records)]
    if len(benign) < len(records):
        raise ValueError(f"{benign_from} holds {len(benign)} task items; the benign calibration set needs "
                         f"{len(records)} (as many as the harmful one): lower data.calibration_size")
    return benign


def score_stage(model_dir: Path, adapter_dir: Path, calibration_file: Path, out_file: Path,
                prompt_format: str, calibration_size: int, batch_size: int, max_length: int,
                device: str = "cpu", dtype: str = "auto", benign_from: Path | None = None) -> int:
    """Stage 3: the feature norms n_j of every LoRA matrix on a calibration set
    (:func:`calibration_records`: the harmful one, or with ``benign_from`` the benign control),
    saved as safetensors (adapter weight name -> n_j)."""
    records = calibration_records(calibration_file, calibration_size, benign_from)
    if not records:
        raise DataError(f"{calibration_file} holds no calibration records")
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, adapter=adapter_dir, merge=False, device=device, dtype=dtype)
    texts = [format_prompt(tokenizer, r["instruction"], r.get("input", ""), prompt_format)
             + r["output"] + tokenizer.eos_token for r in records]
    batches = calibration_batches(tokenizer, texts, batch_size, max_length, prompt_format)
    feature_norms, n = collect_feature_norms(model, batches, lora_matrices(model))
    with atomic_path(out_file) as temp:
        save_file(feature_norms, temp, metadata={"n_sequences": str(n),
                                                "calibration": "benign" if benign_from else "harmful"})
    return n


def prune_stage(adapter_dir: Path, feature_norms_file: Path | None, defense: str, alpha: float, seed: int,
                out_adapter: Path, out_mask: Path, random_scope: str = "tensor",
                spared_norms_file: Path | None = None, beta: float | None = None) -> dict:
    """Stage 4: masks from the adapter's weights (and, for a data-aware defense, the calibration
    feature norms of stage 3), a pruned PEFT adapter beside them. ``random_scope`` (``tensor``
    or ``row``) says where random pruning draws its entries; antidote-setdiff also reads the
    benign feature norms (``spared_norms_file``) and ``beta`` (default: alpha)."""
    weights = load_file(adapter_dir / ADAPTER_WEIGHTS)
    feature_norms = load_file(feature_norms_file) if feature_norms_file else None
    spared_norms = load_file(spared_norms_file) if spared_norms_file else None
    masks = compute_masks(weights, feature_norms, defense, alpha, seed, random_scope,
                          spared_norms=spared_norms, beta=beta)
    pruned_weights = apply_masks(weights, masks)
    info = {"defense": defense, "alpha": alpha, "scope": mask_scope(defense, random_scope), "rounding": ROUNDING,
            "seed": seed, "update_removed": update_removed(weights, pruned_weights)}
    if DEFENSES[defense].spared:
        info["beta"] = alpha if beta is None else beta
    _save_adapter(adapter_dir, pruned_weights, out_adapter)
    write_masks(out_mask, masks, info)
    pruned = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    return {**info, "pruned": pruned, "total": total, "matrices": len(masks)}


def safelora_stage(adapter_dir: Path, select: str, value: float, out_adapter: Path, out_projection: Path,
                   alignment_adapter: Path | None = None, base_model: Path | None = None,
                   aligned_model: Path | None = None) -> dict:
    """Stage 4, SafeLoRA (:mod:`antidote.safelora`): the adapter with lora_B projected in the
    selected modules, and the per-module cosines (Parquet). The alignment update V comes from
    stage 1's ``alignment_adapter`` (low rank), or, for an aligned model brought without its
    adapter, from ``base_model`` and ``aligned_model`` (V = W_aligned - W_base per module)."""
    weights = load_file(adapter_dir / ADAPTER_WEIGHTS)
    if alignment_adapter is not None:
        config = json.loads((alignment_adapter / "adapter_config.json").read_text())
        alignment = alignment_from_adapter(load_file(alignment_adapter / ADAPTER_WEIGHTS), config)
    elif base_model is not None and aligned_model is not None:
        alignment = alignment_from_models(base_model, aligned_model)
    else:
        raise ValueError("SafeLoRA needs the alignment update: the alignment adapter, or the base and the "
                         "aligned model directories")
    defended, modules = safelora(weights, alignment, select, value)
    info = {"defense": "safelora", "select": select, "value": value,
            "projected": sum(m["projected"] for m in modules), "modules": len(modules),
            "update_removed": update_removed(weights, defended)}
    _save_adapter(adapter_dir, defended, out_adapter)
    write_projection(out_projection, modules, info)
    return info


def _save_adapter(adapter_dir: Path, weights: dict, out_adapter: Path) -> None:
    """The defended weights as a PEFT adapter with the original's config."""
    with atomic_path(out_adapter) as temp:
        temp.mkdir()
        save_file(weights, temp / ADAPTER_WEIGHTS)
        shutil.copy(adapter_dir / "adapter_config.json", temp / "adapter_config.json")


def _prompt_sets(harmful_sets: list[dict]) -> dict[str, list[dict]]:
    """Name -> records of each harmful prompt set; names must be unique, sets not empty."""
    sets = {}
    for spec in harmful_sets:
        name, key = spec["name"], spec.get("key", f"harmful set {spec['name']!r}")
        if name in sets:
            raise ValueError(f"{key}: the harmful set name {name!r} is used twice; every set needs its own name")
        sets[name] = data.load_prompt_set(spec["path"], spec.get("field"), key)
        if not sets[name]:
            raise ValueError(f"{key}: {spec['path']} holds no prompts")
    return sets


def evaluate_stage(model_dir: Path, adapter_dir: Path | None, harmful_sets: list[dict], task_file: Path | None,
                   task: str, judges: list[dict], prompt_format: str, generation: dict,
                   run: dict, out_answers: Path, out_metrics: Path, device: str = "cpu",
                   dtype: str = "auto", benign: dict | None = None) -> pd.DataFrame:
    """Stage 5: harmful score (per judge and harmful prompt set), over-refusal of benign prompts
    and fine-tune accuracy of one model: one row per judge and harmful set.

    ``harmful_sets``: ``{"name", "path"}`` (a split file of the workflow, JSONL with
    ``instruction``) or ``{"name", "path", "field"}`` (a user's file, read by
    :func:`antidote.data.load_prompts`); optional ``"key"``, the config key naming it in errors.
    ``benign``: ``{"path"}`` or ``{"path", "field"}`` likewise, or None. ``benign_refusal`` is
    the % of benign prompts whose answer holds a refusal phrase (:class:`RefusalJudge`,
    whichever judges score harm; an empty answer is no refusal); NaN without benign prompts.
    ``task_file`` None: no task items (``finetune_accuracy`` NaN), as in the validation
    evaluations that choose alpha by harmful score alone.
    Every set is generated on its own (``max_new_tokens`` for harmful and benign alike), so
    one set's answers do not depend on which other sets are evaluated.
    """
    from .judges import RefusalJudge, make_judge
    sets = _prompt_sets(harmful_sets)
    benign_items = data.load_prompt_set(benign["path"], benign.get("field"), benign.get("key", "benign prompts")) \
        if benign else []
    task_items = read_jsonl(task_file, ["instruction", "label"]) if task_file else []
    if task_file and not task_items:
        raise DataError(f"{task_file} holds no task items to evaluate")
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, adapter=adapter_dir, merge=True, device=device, dtype=dtype)

    def answer(records, max_new_tokens, desc):
        if not records:
            return []
        texts = [format_prompt(tokenizer, r["instruction"], r.get("input", ""), prompt_format) for r in records]
        return greedy_generate(model, tokenizer, texts, prompt_format, max_new_tokens, generation["batch_size"],
                               desc=desc)

    harmful_answers = {name: answer(records, generation["max_new_tokens"], f"harmful prompts ({name})")
                       for name, records in sets.items()}
    benign_answers = answer(benign_items, generation["max_new_tokens"], "benign prompts")
    task_answers = answer(task_items, generation.get("task_max_new_tokens") or TASKS[task].max_new_tokens,
                          f"{task} items")
    del model
    correct = [TASKS[task].correct(a, r["label"]) for a, r in zip(task_answers, task_items)]
    accuracy = 100.0 * sum(correct) / len(correct) if correct else float("nan")
    refused = [RefusalJudge().is_refusal(a) for a in benign_answers]
    benign_refusal = 100.0 * sum(refused) / len(refused) if refused else float("nan")

    rows, verdicts = [], {name: {} for name in sets}
    for spec in judges:
        judge = make_judge(spec, device=device)
        for name, records in sets.items():
            flags = judge.flags([r["instruction"] for r in records], harmful_answers[name])
            verdicts[name][judge.name] = flags
            rows.append({**run, "judge": judge.name, "harmful_set": name,
                         "harmful_score": 100.0 * sum(flags) / len(flags), "benign_refusal": benign_refusal,
                         "finetune_accuracy": accuracy, "n_test_prompts": len(records),
                         "n_benign_prompts": len(benign_items), "n_task_items": len(task_items),
                         "task_data": task_items[0].get("source", "real") if task_items else "none"})
    write_jsonl(out_answers, [{"kind": "harmful", "set": name, "prompt": r["instruction"], "answer": a,
                               **{f"harmful[{j}]": v[i] for j, v in verdicts[name].items()}}
                              for name, records in sets.items()
                              for i, (r, a) in enumerate(zip(records, harmful_answers[name]))]
                + [{"kind": "benign", "prompt": r["instruction"], **({"input": r["input"]} if r.get("input") else {}),
                    "answer": a, "refused": f}
                   for r, a, f in zip(benign_items, benign_answers, refused)]
                + [{"kind": "task", "prompt": r.get("input") or r["instruction"], "answer": a, "label": r["label"],
                    "correct": c}
                   for r, a, c in zip(task_items, task_answers, correct)])
    table = pd.DataFrame(rows)
    with atomic_path(out_metrics) as temp:
        table.to_parquet(temp, index=False)
    return table
