"""The experiment grid of a config, and the checks a JSON schema cannot express.

The schema (workflow/schemas/config.schema.yaml) catches unknown keys, wrong types and
out-of-range values; :func:`check_config` catches settings that are valid one by one but not
together, and :func:`missing_paths` the files and directories that do not exist. Every
message names the key and the value. :func:`resolve_hub_names` maps ``hf://`` names to the
local paths their download rules write.
"""

from __future__ import annotations

import inspect
import itertools
import re
from pathlib import Path

from .benign import benign_pools
from .paths import MADE_BY_WORKFLOW, PATHS, pruned_name, run_id, safelora_name
from .prune import DEFENSES
from .tasks import TASKS
from .training_defenses import TRAINING_DEFENSES

GRID_AXES = ("task", "harmful_ratio", "learning_rate", "epochs", "n_samples", "seed", "align_defense",
             "finetune_defense")
# The training-time defenses of each stage: config key -> (grid axis, stage)
DEFENSE_KEYS = {"align.defense": ("align_defense", "align"), "finetune.defense": ("finetune_defense", "finetune")}
HUB_PREFIX = "hf://"  # models and datasets on the Hugging Face hub, downloaded by rules where a hub is reachable
HUB_DATASET = re.compile(r"hf://datasets/([\w.-]+)/([\w.-]+)/(?:([\w.-]+)/)?([\w.-]+)$")
TASK_FILE_KEYS = ("train", "eval", "file")  # a task's data: train and eval files, or one file cut into both


class ConfigError(ValueError):
    pass


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def axis_values(config: dict) -> dict[str, list]:
    """The config's list for every grid axis: ``finetune.<axis>``, and the training-time defenses
    ``align.defense`` and ``finetune.defense`` (default ``[sft]``)."""
    defenses = {axis: config.get(stage, {}).get("defense", ["sft"]) for axis, stage in DEFENSE_KEYS.values()}
    return {axis: defenses[axis] if axis in defenses else config["finetune"][axis] for axis in GRID_AXES}


def expand_runs(config: dict) -> dict[str, dict]:
    """Every fine-tuning run, keyed by :func:`run_id`, with its settings and its mask ratios.

    Without ``finetune.runs`` the grid is the product of the ``finetune`` lists and the
    training-time defenses of both stages (``align.defense``, ``finetune.defense``). Each entry
    of ``finetune.runs`` is a sub-grid: the axes it names (a value or a list) replace the
    config's lists, the others keep them, so ``{task: gsm8k, learning_rate: 1e-3}`` is one
    GSM8K run per harmful ratio, epoch count, N and seed listed, and ``{align_defense: vaccine}``
    the grid again on Vaccine's aligned model. An entry's ``defenses`` lists the post-fine-tuning
    defenses of its runs (default ``prune.defenses``; ``[]``: none, as for a baseline). A run's alphas are
    ``prune.alpha_by_task[task]`` where given, else ``prune.alpha``.
    """
    finetune, prune = config["finetune"], config["prune"]
    entries, lists_of = finetune.get("runs") or [{}], axis_values(config)
    runs = {}
    for entry in entries:
        lists = [_as_list(entry[axis]) if axis in entry else lists_of[axis] for axis in GRID_AXES]
        for values in itertools.product(*lists):
            settings = dict(zip(GRID_AXES, values))
            alphas = (prune.get("alpha_by_task") or {}).get(settings["task"], prune["alpha"])
            name = run_id(*values)
            if name in runs:
                raise ConfigError(f"finetune.runs: run {name} is listed twice")
            runs[name] = {**settings, "alphas": list(alphas), "defenses": list(entry.get("defenses", prune.get("defenses", [])))}
    return runs


def pruned_models(run: dict, prune: dict) -> dict[str, dict]:
    """Every pruned model of a run by name (:func:`pruned_name`, :func:`safelora_name`), with what
    it stands for: ``defense``, ``alpha`` and SafeLoRA's ``safelora_select`` and ``safelora_value``
    (None where they mean nothing). A masking defense is pruned at the run's alphas, or at
    ``prune.alpha_by_defense[defense]`` where given (a curve for one defense, one point for the
    others); SafeLoRA has no alpha and is run at each setting of ``prune.safelora``."""
    by_defense = prune.get("alpha_by_defense") or {}
    models = {}
    for defense in run.get("defenses", prune["defenses"]):
        if DEFENSES[defense].masks:
            for alpha in by_defense.get(defense, run["alphas"]):
                models[pruned_name(defense, alpha)] = dict(defense=defense, alpha=alpha, safelora_select=None,
                                                           safelora_value=None)
        else:
            for setting in prune["safelora"]:
                models[safelora_name(setting["select"], setting["value"])] = dict(
                    defense=defense, alpha=None, safelora_select=setting["select"], safelora_value=setting["value"])
    return models


def selected_defenses(run: dict, prune: dict) -> dict[str, list[float]]:
    """The masking defenses whose alpha rule select_alpha chooses for this run on validation data,
    each with its curve (the alphas it is pruned at): ``prune.select.defenses``, or by default
    every masking defense pruned at two alphas or more."""
    curves: dict[str, list[float]] = {}
    for spec in pruned_models(run, prune).values():
        if spec["alpha"] is not None:
            curves.setdefault(spec["defense"], []).append(spec["alpha"])
    chosen = prune["select"].get("defenses")
    if chosen is None:
        return {defense: alphas for defense, alphas in curves.items() if len(alphas) >= 2}
    return {defense: curves[defense] for defense in chosen if defense in curves}


def check_selection(config: dict) -> None:
    """prune.select names masking defenses of prune.defenses, has the setting its criterion reads,
    and the validation data it needs exists."""
    prune, sizes = config["prune"], config["data"]["sizes"]
    select = prune["select"]
    for i, defense in enumerate(select.get("defenses") or []):
        if defense not in prune["defenses"]:
            raise ConfigError(f"prune.select.defenses[{i}]: {defense!r} is not one of prune.defenses {prune['defenses']}")
        if not DEFENSES[defense].masks:
            raise ConfigError(f"prune.select.defenses[{i}]: {defense!r} has no alpha to choose")
    if select["criterion"] == "accuracy" and "max_hs" not in select:
        raise ConfigError("prune.select.criterion: 'accuracy' needs prune.select.max_hs, the highest validation "
                          "harmful score allowed")
    if not any(selected_defenses(run, prune) for run in expand_runs(config).values()):
        return
    if sizes["harmful_validation"] == 0:
        raise ConfigError("prune.select: choosing alpha needs validation prompts, but data.sizes.harmful_validation "
                          "is 0 (or set prune.select.defenses: [] to turn the selection off)")
    if select["criterion"] == "accuracy" and sizes["task_validation"] == 0:
        raise ConfigError("prune.select.criterion: 'accuracy' needs validation task items, but "
                          "data.sizes.task_validation is 0")


def local_path(key: str, value: str) -> str:
    """Where a path the config names lives: a model ``hf://org/name`` where rule hub_model puts it,
    a dataset split ``hf://datasets/org/name[/subset]/split`` where rule hub_dataset does."""
    if not value.startswith(HUB_PREFIX):
        return value
    if value.startswith(HUB_PREFIX + "datasets/"):
        match = HUB_DATASET.match(value)
        if not match:
            raise ConfigError(f"{key}: {value!r} is not hf://datasets/ORG/NAME/SPLIT or hf://datasets/ORG/NAME/SUBSET/SPLIT")
        org, name, subset, split = match.groups()
        return PATHS["hub_dataset"].format(org=org, name=name, subset=subset or "default", split=split)
    org, name = value[len(HUB_PREFIX):].split("/")
    return PATHS["hub_model"].format(org=org, name=name)


def resolve_hub_names(config: dict) -> None:
    """Replace, in place, every hub name among the config's paths by the local path its
    download rule writes, so that every stage reads local files."""
    config["base_model"] = local_path("base_model", config["base_model"])
    for i, judge in enumerate(config["evaluate"]["judges"]):
        if "path" in judge:
            judge["path"] = local_path(f"evaluate.judges[{i}].path", judge["path"])
    data = config["data"]
    for key in ("train", "test"):
        if key in data.get("beavertails", {}):
            data["beavertails"][key] = local_path(f"data.beavertails.{key}", data["beavertails"][key])
    if "test_prompts" in data:
        data["test_prompts"]["file"] = local_path("data.test_prompts.file", data["test_prompts"]["file"])
    for key, spec in prompt_files(config["evaluate"]).items():
        spec["path"] = local_path(f"{key}.path", spec["path"])
    for task, spec in config.get("tasks", {}).items():
        for key in TASK_FILE_KEYS:
            if key in spec:
                spec[key] = local_path(f"tasks.{task}.{key}", spec[key])


HARMFUL_SPLITS = ("harmful_test", "harmful_validation")  # the built-in harmful sets (evaluate.harmful_split)


def prompt_files(evaluate: dict) -> dict[str, dict]:
    """The user's prompt files of the config's ``evaluate`` section, by config key:
    ``evaluate.harmful_sets[i]`` and ``evaluate.benign_prompts`` -> their ``{path, field, ...}``."""
    files = {f"evaluate.harmful_sets[{i}]": spec for i, spec in enumerate(evaluate.get("harmful_sets") or [])}
    if evaluate.get("benign_prompts"):
        files["evaluate.benign_prompts"] = evaluate["benign_prompts"]
    return files


def check_prompt_sets(config: dict) -> None:
    """Harmful set names must be unique and not a built-in split's; each benign split must fit in
    its templates' prompts."""
    seen = {}
    for i, spec in enumerate(config["evaluate"].get("harmful_sets") or []):
        key, name = f"evaluate.harmful_sets[{i}].name", spec["name"]
        if name in HARMFUL_SPLITS:
            raise ConfigError(f"{key}: {name!r} is the name of a built-in split (evaluate.harmful_split); "
                              "give your set another name")
        if name in seen:
            raise ConfigError(f"{key}: {name!r} is already the name of evaluate.harmful_sets[{seen[name]}]; "
                              "every harmful set needs its own name")
        seen[name] = i
    sizes = config["data"]["sizes"]
    for split, pool in benign_pools().items():
        if sizes.get(split, 0) > len(pool):
            raise ConfigError(f"data.sizes.{split}: {sizes[split]} benign instructions, but its templates "
                              f"(antidote.benign) make only {len(pool)} distinct ones (evaluate.benign_prompts "
                              "may name your own file to test on, with data.sizes.benign_test: 0)")


def grid_tasks(config: dict) -> list[str]:
    return sorted({run["task"] for run in expand_runs(config).values()})


def check_names(config: dict) -> None:
    """Task and defense names must be in their registries (:data:`antidote.tasks.TASKS`,
    :data:`antidote.prune.DEFENSES`), the one place each is listed."""
    finetune, prune = config["finetune"], config["prune"]
    named = [("finetune.task", finetune["task"], TASKS, "tasks"),
             *((f"finetune.runs[{i}].task", _as_list(run["task"]), TASKS, "tasks")
               for i, run in enumerate(finetune.get("runs") or []) if "task" in run),
             ("tasks", list(config.get("tasks") or {}), TASKS, "tasks"),
             ("prune.alpha_by_task", list(prune.get("alpha_by_task") or {}), TASKS, "tasks"),
             ("prune.defenses", prune["defenses"], DEFENSES, "defenses"),
             *((f"finetune.runs[{i}].defenses", run["defenses"], prune["defenses"], "defenses of prune.defenses")
               for i, run in enumerate(finetune.get("runs") or []) if "defenses" in run),
             ("prune.alpha_by_defense", list(prune.get("alpha_by_defense") or {}), prune["defenses"],
              "defenses of prune.defenses")]
    for key, (axis, stage) in DEFENSE_KEYS.items():
        stage_defenses = [name for name, spec in TRAINING_DEFENSES.items() if spec.stage in (stage, "any")]
        named.append((key, axis_values(config)[axis], stage_defenses, f"{stage}-stage defenses"))
        named += [(f"finetune.runs[{i}].{axis}", _as_list(run[axis]), stage_defenses, f"{stage}-stage defenses")
                  for i, run in enumerate(finetune.get("runs") or []) if axis in run]
        named.append((f"{key}_settings", list(config.get(stage, {}).get("defense_settings") or {}), stage_defenses,
                      f"{stage}-stage defenses"))
    for key, values, registry, what in named:
        for value in values:
            if value not in registry:
                raise ConfigError(f"{key}: {value!r} is not one of the {what} {list(registry)}")
    for stage in ("align", "finetune"):
        for defense, settings in (config.get(stage, {}).get("defense_settings") or {}).items():
            accepted = defense_settings_accepted(defense)
            for name in settings or {}:
                if name not in accepted:
                    raise ConfigError(f"{stage}.defense_settings.{defense}.{name}: not a setting of {defense} "
                                      f"(its settings: {', '.join(accepted) or 'none'})")


# What the loop gives every training-time defense, not the config
LOOP_ARGUMENTS = {"self", "model", "total_steps", "guide", "collate", "batch_size", "seed"}


def defense_settings_accepted(defense: str) -> list[str]:
    """The settings a training-time defense takes from the config (its constructor's keywords)."""
    parameters = inspect.signature(TRAINING_DEFENSES[defense].make.__init__).parameters
    return [name for name, p in parameters.items() if name not in LOOP_ARGUMENTS and p.default is not p.empty]


def check_peer_defenses(prune: dict) -> None:
    """SafeLoRA's settings must fit their selection and name distinct models; SafeLoRA has no alpha to set."""
    if "safelora" in (prune.get("alpha_by_defense") or {}):
        raise ConfigError("prune.alpha_by_defense.safelora: SafeLoRA has no alpha; its setting is prune.safelora")
    ranges = {"count": "a whole number of modules, at least 1", "fraction": "a fraction of the modules in (0, 1]",
              "threshold": "a cosine in [-1, 1]"}
    seen = {}
    for i, setting in enumerate(prune.get("safelora") or []):
        select, value = setting["select"], setting["value"]
        fits = {"count": value >= 1 and value == int(value), "fraction": 0 < value <= 1,
                "threshold": -1 <= value <= 1}[select]
        if not fits:
            raise ConfigError(f"prune.safelora[{i}].value: {value} with select {select!r}; expected {ranges[select]}")
        name = safelora_name(select, value)
        if name in seen:
            raise ConfigError(f"prune.safelora[{i}]: {select} {value} is prune.safelora[{seen[name]}] again")
        seen[name] = i


def check_config(config: dict, workdir: str | Path = ".", require_paths: bool = True) -> None:
    """Raise :class:`ConfigError` on the first inconsistent setting (and, with ``require_paths``,
    on the first missing path; the workflow defers those to the start of a real run, so that a
    dry run of a config whose weights are not downloaded yet still shows the whole DAG)."""
    check_names(config)
    finetune, sizes, data = config["finetune"], config["data"]["sizes"], config["data"]
    keys = {axis: key for key, (axis, _) in DEFENSE_KEYS.items()}
    for axis, values in axis_values(config).items():
        if len(set(values)) != len(values):
            raise ConfigError(f"{keys.get(axis, f'finetune.{axis}')}: {values} lists a value twice")
    for key, alphas in [("prune.alpha", config["prune"]["alpha"]),
                        *((f"prune.alpha_by_{kind}.{name}", alphas)
                          for kind in ("task", "defense")
                          for name, alphas in (config["prune"].get(f"alpha_by_{kind}") or {}).items())]:
        if len(set(alphas)) != len(alphas):
            raise ConfigError(f"{key}: {alphas} lists a value twice")

    check_peer_defenses(config["prune"])

    runs = expand_runs(config)
    guides = {TRAINING_DEFENSES[run[axis]].guide: run[axis] for run in runs.values() for axis, _ in DEFENSE_KEYS.values()}
    if "harmful" in guides and sizes.get("repnoise_pool", 0) == 0:
        raise ConfigError(f"align.defense: {guides['harmful']!r} reads harmful pairs of its own, but "
                          "data.sizes.repnoise_pool is 0 (set it to how many harmful prompts it may read)")
    most_harmful = max(round(r["harmful_ratio"] * r["n_samples"]) for r in runs.values())
    if most_harmful > sizes["harmful_finetune_pool"]:
        raise ConfigError(f"finetune.harmful_ratio x finetune.n_samples needs up to {most_harmful} harmful "
                          f"samples but data.sizes.harmful_finetune_pool is {sizes['harmful_finetune_pool']}")
    most_task = max(r["n_samples"] - round(r["harmful_ratio"] * r["n_samples"]) for r in runs.values())
    if most_task > sizes["task_train"]:
        raise ConfigError(f"finetune.n_samples needs up to {most_task} task items but "
                          f"data.sizes.task_train is {sizes['task_train']}")
    if data["calibration_size"] > sizes["calibration_pool"]:
        raise ConfigError(f"data.calibration_size: {data['calibration_size']} is larger than "
                          f"data.sizes.calibration_pool ({sizes['calibration_pool']})")
    if config["evaluate"]["harmful_split"] == "harmful_validation":
        for split in ("harmful_validation", "task_validation"):
            if sizes[split] == 0:
                raise ConfigError(f"evaluate.harmful_split: 'harmful_validation' but data.sizes.{split} is 0")
    check_selection(config)
    check_prompt_sets(config)

    source = data["source"]
    for key in {"advbench": ("advbench", "donotanswer"), "beavertails": ("beavertails",)}[source]:
        if key not in data:
            raise ConfigError(f"data.source: {source!r} needs data.{key}")
    if source == "beavertails" and "test" not in data["beavertails"] and "test_prompts" not in data:
        raise ConfigError("data.beavertails.test: needed unless data.test_prompts names your own test prompts")
    for task, spec in (config.get("tasks") or {}).items():
        if ("file" in spec) == ("train" in spec or "eval" in spec) or ("train" in spec) != ("eval" in spec):
            raise ConfigError(f"tasks.{task}: give either file (one labelled file, cut into train and eval items) "
                              f"or both train and eval, not {sorted(k for k in TASK_FILE_KEYS if k in spec)}")
    for task in grid_tasks(config):
        spec = config.get("tasks", {}).get(task)
        if spec is None and not TASKS[task].builtin:
            raise ConfigError(f"finetune.task: {task!r} has no built-in data; set tasks.{task}.file, or "
                              f"tasks.{task}.train and tasks.{task}.eval, to local files")
        if spec and "train" in spec and spec["train"] == spec["eval"]:
            raise ConfigError(f"tasks.{task}: train and eval are the same file {spec['train']!r}; "
                              "the evaluation items must be held out")

    for i, judge in enumerate(config["evaluate"]["judges"]):
        if judge["type"] in ("moderation", "guard") and "path" not in judge:
            raise ConfigError(f"evaluate.judges[{i}]: a {judge['type']} judge needs a 'path' to a model directory")
    for stage in ("align", "finetune"):  # the training jobs refuse it too; this stops the run before any job
        quantization = config[stage]["train"].get("quantization", "none")
        if quantization != "none" and config.get("device") == "cpu":
            raise ConfigError(f"{stage}.train.quantization: {quantization!r} needs CUDA, but device is 'cpu' "
                              "(4-bit training on a CPU leaves the loss unchanged)")

    if require_paths:
        missing = missing_paths(config, workdir)
        if missing:
            raise ConfigError(missing[0])


SOURCE_KEYS = {"advbench": "data.advbench", "donotanswer": "data.donotanswer", "train": "data.beavertails.train",
               "test": "data.beavertails.test", "test_prompts": "data.test_prompts.file"}


def split_sources(data: dict) -> dict[str, str]:
    """The files the prompt splits are cut from (role -> path), for the config's ``data`` section."""
    if data["source"] == "advbench":
        sources = {"advbench": data["advbench"], "donotanswer": data["donotanswer"]}
    else:
        sources = {"train": data["beavertails"]["train"]}
        if "test_prompts" not in data:
            sources["test"] = data["beavertails"]["test"]
    if "test_prompts" in data:
        sources["test_prompts"] = data["test_prompts"]["file"]
    return sources


def external_paths(config: dict) -> dict[str, str]:
    """The paths the config names that the workflow does not make (key -> path)."""
    paths = {"base_model": config["base_model"]}
    paths.update({SOURCE_KEYS[role]: path for role, path in split_sources(config["data"]).items()})
    for task in grid_tasks(config):
        for key, path in (config.get("tasks", {}).get(task) or {}).items():
            if key in TASK_FILE_KEYS:
                paths[f"tasks.{task}.{key}"] = path
    for i, judge in enumerate(config["evaluate"]["judges"]):
        if "path" in judge:
            paths[f"evaluate.judges[{i}].path"] = judge["path"]
    for key, spec in prompt_files(config["evaluate"]).items():
        paths[f"{key}.path"] = spec["path"]
    return {key: path for key, path in paths.items() if not path.startswith(MADE_BY_WORKFLOW)}


def missing_paths(config: dict, workdir: str | Path = ".") -> list[str]:
    """One message per configured path that does not exist (or, for the base model, is not an
    HF model directory)."""
    workdir, messages = Path(workdir), []
    for key, path in external_paths(config).items():
        if not (workdir / path).exists():
            messages.append(f"{key}: {path!r} does not exist")
        elif key == "base_model" and not (workdir / path / "config.json").exists():
            messages.append(f"base_model: {path!r} is not a Hugging Face model directory (no config.json)")
    return messages
