"""Bad configs stop the workflow before any job runs, with a message naming the key and the value."""

import copy
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from antidote.config import check_config, resolve_hub_names
from antidote.prune import DEFENSES

REPO = Path(__file__).resolve().parents[1]
SCHEMA = str(REPO / "workflow/schemas/config.schema.yaml")
DEFAULT = yaml.safe_load((REPO / "config/config.yaml").read_text())


def check(config, workdir=REPO):
    validate(config, schema=SCHEMA, set_default=True)
    resolve_hub_names(config)
    check_config(config, workdir)


def changed(path: str, value):
    """The default config with one key (dotted path, list indices as numbers) set to ``value``."""
    config = copy.deepcopy(DEFAULT)
    *parents, last = path.split(".")
    node = config
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[int(last) if last.isdigit() else last] = value
    return config


def test_default_config_is_valid():
    check(copy.deepcopy(DEFAULT))


BAD = [
    # (key, bad value, words the message must contain)
    ("colour", "blue", ["'colour' was unexpected"]),
    ("finetune.batch", 4, ["'batch' was unexpected"]),
    ("finetune.learning_rate", ["fast"], ["'fast' is not of type 'number'", "learning_rate"]),
    ("finetune.harmful_ratio", [1.5], ["1.5 is greater than the maximum of 1", "harmful_ratio"]),
    ("finetune.harmful_ratio", [-0.1], ["-0.1 is less than the minimum of 0", "harmful_ratio"]),
    ("prune.alpha", [0], ["0 is less than or equal to the minimum of 0", "alpha"]),
    ("prune.alpha", [1.0], ["1.0 is greater than or equal to the maximum of 1", "alpha"]),
    ("finetune.task", ["imdb"], ["'imdb' is not one of", "task"]),
    ("evaluate.judges", [{"type": "gpt4"}], ["'gpt4' is not one of", "judges"]),
    ("prune.defenses", ["wanda"], ["'wanda' is not one of", "defenses"]),
    ("prompt_format", "vicuna", ["'vicuna' is not one of", "prompt_format"]),
    ("align.train.batch_size", 0, ["0 is less than the minimum of 1", "batch_size"]),
    ("finetune.n_samples", [], ["should be non-empty", "n_samples"]),
    ("device", "tpu", ["'tpu' does not match", "device"]),
    ("assets.pyrit.sha256", "abc", ["'abc' does not match", "sha256"]),
    ("base_model", "models/missing-llama", ["base_model: 'models/missing-llama' does not exist"]),
    ("data.advbench", "nowhere/adv_bench.prompt", ["data.advbench: 'nowhere/adv_bench.prompt' does not exist"]),
    ("finetune.learning_rate", [1e-3, 1e-3], ["finetune.learning_rate: [0.001, 0.001] lists a value twice"]),
    ("prune.alpha", [0.1, 0.1], ["prune.alpha: [0.1, 0.1] lists a value twice"]),
    ("prune.alpha_by_defense", {"antidote": [0.1, 0.1]}, ["prune.alpha_by_defense.antidote: [0.1, 0.1] lists a value twice"]),
    ("prune.alpha_by_defense", {"wanda": [0.2]},
     ["prune.alpha_by_defense: 'wanda' is not one of the defenses of prune.defenses"]),
    ("finetune.n_samples", [5000], ["needs up to 1000 harmful samples but data.sizes.harmful_finetune_pool is 80"]),
    ("data.calibration_size", 500, ["data.calibration_size: 500 is larger than data.sizes.calibration_pool (48)"]),
    ("finetune.task", ["agnews"], ["finetune.task: 'agnews' has no built-in data; set tasks.agnews.file, or "
                                   "tasks.agnews.train and tasks.agnews.eval"]),
    ("tasks.sst2.file", "data/tweets.csv", ["tasks.sst2.file: 'data/tweets.csv' does not exist"]),
    ("tasks.sst2.train", "data/sst2.csv", ["tasks.sst2: give either file", "not ['file', 'train']"]),
    ("tasks", {"sst2": {"train": "data/sst2.csv"}}, ["tasks.sst2: give either file", "not ['train']"]),
    ("tasks", {"sst2": {"clean": "text"}}, ["tasks.sst2: give either file", "not []"]),
    ("tasks.sst2.clean", "html", ["'html' is not one of", "clean"]),
    ("tasks.sst2.min_confidence", "high", ["'high' is not of type 'number'", "min_confidence"]),
    ("tasks", {"sst2": {"train": "data/sst2.csv", "eval": "data/dev.csv"}},
     ["tasks.sst2.train: 'data/sst2.csv' does not exist"]),
    ("tasks", {"imdb": {"train": "a.csv", "eval": "b.csv"}}, ["'imdb' is not one of"]),
    ("evaluate.judges", [{"type": "moderation"}], ["evaluate.judges[0]: a moderation judge needs a 'path'"]),
    ("evaluate.judges", [{"type": "guard", "path": "judges/llama-guard"}],
     ["evaluate.judges[0].path: 'judges/llama-guard' does not exist"]),
    ("dtype", "int8", ["'int8' is not one of", "dtype"]),
    ("base_model", "hf://just-a-name", ["'hf://just-a-name' does not match", "base_model"]),
    ("data.test_prompts", {"file": "hf://datasets/advbench"},
     ["data.test_prompts.file: 'hf://datasets/advbench' is not hf://datasets/ORG/NAME/SPLIT"]),
    ("data.source", "beavertails", ["data.source: 'beavertails' needs data.beavertails"]),
    ("data.beavertails", {"train": "bt/train.jsonl", "test": "bt/test.jsonl", "order": "random"},
     ["'random' is not one of", "order"]),
    ("data.test_prompts", {"file": "mine/prompts.csv"}, ["data.test_prompts.file: 'mine/prompts.csv' does not exist"]),
    ("tasks", {"sst2": {"train": "d/sst2.csv", "eval": "d/sst2.csv"}},
     ["tasks.sst2: train and eval are the same file 'd/sst2.csv'"]),
    ("finetune.runs", [{"task": "sst2"}, {"learning_rate": 0.001}],
     ["finetune.runs: run sst2-p0.2-lr0.001-ep2-n200-s0 is listed twice"]),
    ("finetune.runs", [{"task": "imdb"}], ["'imdb'", "task"]),
    ("finetune.runs", [{"temperature": 0.7}], ["'temperature' was unexpected"]),
    ("prune.alpha_by_task", {"sst2": [1.5]}, ["1.5 is greater than or equal to the maximum of 1", "alpha_by_task"]),
    ("prune.alpha_by_task", {"sst2": [0.1, 0.1]}, ["prune.alpha_by_task.sst2: [0.1, 0.1] lists a value twice"]),
    ("data.sizes.benign_test", 1000,
     ["data.sizes.benign_test: 1000 benign instructions, but its templates"]),
    ("data.sizes.benign_test", -1, ["-1 is less than the minimum of 0", "benign_test"]),
    ("evaluate.harmful_sets", [{"name": "harmful_test", "path": "README.md"}],
     ["evaluate.harmful_sets[0].name: 'harmful_test' is the name of a built-in split"]),
    ("evaluate.harmful_sets", [{"name": "mine", "path": "README.md"}, {"name": "mine", "path": "Snakefile"}],
     ["evaluate.harmful_sets[1].name: 'mine' is already the name of evaluate.harmful_sets[0]"]),
    ("evaluate.harmful_sets", [{"name": "my set", "path": "README.md"}], ["'my set' does not match", "name"]),
    ("evaluate.harmful_sets", [{"path": "README.md"}], ["'name' is a required property"]),
    ("evaluate.harmful_sets", [{"name": "mine", "path": "data/mine.csv"}],
     ["evaluate.harmful_sets[0].path: 'data/mine.csv' does not exist"]),
    ("evaluate.benign_prompts", {"path": "data/benign.txt"}, ["evaluate.benign_prompts.path: 'data/benign.txt' does not exist"]),
    ("evaluate.benign_prompts", {"file": "data/benign.txt"}, ["'file' was unexpected"]),
    ("prune.safelora", [{"select": "number", "value": 10}], ["'number' is not one of", "select"]),
    ("prune.safelora", [{"select": "count"}], ["'value' is a required property"]),
    ("prune.safelora", [], ["should be non-empty", "safelora"]),
    ("prune.safelora", [{"select": "count", "value": 2.5}],
     ["prune.safelora[0].value: 2.5 with select 'count'; expected a whole number of modules, at least 1"]),
    ("prune.safelora", [{"select": "count", "value": 0}], ["prune.safelora[0].value: 0 with select 'count'"]),
    ("prune.safelora", [{"select": "fraction", "value": 1.5}],
     ["prune.safelora[0].value: 1.5 with select 'fraction'; expected a fraction of the modules in (0, 1]"]),
    ("prune.safelora", [{"select": "threshold", "value": 2}],
     ["prune.safelora[0].value: 2 with select 'threshold'; expected a cosine in [-1, 1]"]),
    ("prune.safelora", [{"select": "count", "value": 10}, {"select": "count", "value": 10.0}],
     ["prune.safelora[1]: count 10.0 is prune.safelora[0] again"]),
    ("prune.setdiff_beta", 1.0, ["1.0 is greater than or equal to the maximum of 1", "setdiff_beta"]),
    ("prune.setdiff_beta", "alpha", ["'alpha' is not of type 'number', 'null'"]),
    ("prune", {"alpha": [0.1], "defenses": ["antidote", "safelora"], "alpha_by_defense": {"safelora": [0.1]}},
     ["prune.alpha_by_defense.safelora: SafeLoRA has no alpha; its setting is prune.safelora"]),
    ("prune.select", {"criterion": "best"}, ["'best' is not one of ['margin', 'accuracy']"]),
    ("prune.select", {"margin": -5}, ["-5 is less than the minimum of 0", "margin"]),
    ("prune.select", {"criterion": "accuracy"},
     ["prune.select.criterion: 'accuracy' needs prune.select.max_hs, the highest validation harmful score allowed"]),
    ("prune.select", {"defenses": ["wanda"]},
     ["prune.select.defenses[0]: 'wanda' is not one of prune.defenses ['antidote', 'antidote-benign', 'random', "
      "'magnitude']"]),
    ("prune", {"alpha": [0.1, 0.2], "defenses": ["antidote", "safelora"], "select": {"defenses": ["safelora"]}},
     ["prune.select.defenses[0]: 'safelora' has no alpha to choose"]),
    ("data.sizes.harmful_validation", 0,
     ["prune.select: choosing alpha needs validation prompts, but data.sizes.harmful_validation is 0"]),
    ("data.sizes.task_validation", -1, ["-1 is less than the minimum of 0", "task_validation"]),
    ("statistics", {"confidence": 95}, ["95 is greater than or equal to the maximum of 1", "confidence"]),
    ("statistics", {"resamples": 10}, ["10 is less than the minimum of 100", "resamples"]),
    # training-time defenses: each at its own stage, with its own settings and data
    ("align.defense", ["lisa"], ["align.defense: 'lisa' is not one of the align-stage defenses"]),
    ("finetune.defense", ["vaccine"], ["finetune.defense: 'vaccine' is not one of the finetune-stage defenses"]),
    ("finetune.defense", ["sft", "sft"], ["finetune.defense: ['sft', 'sft'] lists a value twice"]),
    ("align.defense", ["repnoise"], ["'repnoise' reads harmful pairs of its own, but data.sizes.repnoise_pool is 0"]),
    ("align.defense_settings", {"vaccine": {"radius": 2}},
     ["align.defense_settings.vaccine.radius: not a setting of vaccine (its settings: rho)"]),
    ("finetune.runs", [{"finetune_defense": "ldfis"}], ["finetune.runs[0].finetune_defense: 'ldfis' is not one of"]),
    ("finetune.runs", [{"defenses": ["safelora"]}], ["finetune.runs[0].defenses: 'safelora' is not one of the "
                                                      "defenses of prune.defenses"]),
]


def test_validation_split_needs_validation_prompts():
    config = changed("evaluate.harmful_split", "harmful_validation")
    check(copy.deepcopy(config))
    config["data"]["sizes"]["harmful_validation"] = 0
    with pytest.raises(Exception, match="evaluate.harmful_split: 'harmful_validation' but data.sizes.harmful_validation is 0"):
        check(config)


def test_validation_data_is_needed_only_where_something_is_chosen_on_it():
    # the accuracy criterion reads the task's validation items, the margin criterion does not
    config = changed("prune.select", {"criterion": "accuracy", "max_hs": 20})
    check(copy.deepcopy(config))
    config["data"]["sizes"]["task_validation"] = 0
    with pytest.raises(Exception, match="'accuracy' needs validation task items, but data.sizes.task_validation is 0"):
        check(copy.deepcopy(config))
    check(changed("data.sizes.task_validation", 0))
    # nothing chosen (no curve, or the selection turned off): no validation prompts needed
    quiet = changed("prune.select", {"defenses": []})
    quiet["data"]["sizes"]["harmful_validation"] = 0
    check(quiet)
    single = changed("prune.alpha_by_defense", {})
    single["data"]["sizes"]["harmful_validation"] = 0
    check(single)
    # evaluating everything on the validation split scores the task's validation items
    config = changed("evaluate.harmful_split", "harmful_validation")
    config["data"]["sizes"]["task_validation"] = 0
    with pytest.raises(Exception, match="'harmful_validation' but data.sizes.task_validation is 0"):
        check(config)


def test_harmful_sets_and_benign_prompts_take_hub_names_and_default_fields():
    config = changed("evaluate.harmful_sets", [{"name": "advbench", "path": "hf://datasets/walledai/AdvBench/train"}])
    config["evaluate"]["benign_prompts"] = {"path": "README.md"}
    check(config)
    assert config["evaluate"]["harmful_sets"] == [
        {"name": "advbench", "path": "resources/hub/datasets/walledai/AdvBench/default/train.parquet", "field": "prompt"}]
    assert config["evaluate"]["benign_prompts"] == {"path": "README.md", "field": "prompt"}


@pytest.mark.parametrize("key,value,words", BAD, ids=[f"{k}={v}" for k, v, _ in BAD])
def test_bad_value_is_named(key, value, words):
    with pytest.raises(Exception) as error:
        check(changed(key, value))
    for word in words:
        assert word in str(error.value), str(error.value)


def test_the_workflow_stops_before_any_job(tmp_path):
    import subprocess
    import sys

    (tmp_path / "config").mkdir()
    (tmp_path / "config/config.yaml").write_text(yaml.safe_dump(changed("finetune.harmful_ratio", [2.0])))
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
                             str(tmp_path), "--cores", "1"], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "2.0 is greater than the maximum of 1" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "resources").exists()


def test_alpha_by_defense_gives_one_defense_a_curve_and_safelora_its_own_settings():
    from antidote.config import pruned_models

    prune = {"defenses": ["antidote", "random", "safelora"], "alpha_by_defense": {"antidote": [0.05, 0.1, 0.2]},
             "safelora": [{"select": "count", "value": 10}, {"select": "threshold", "value": 0.5}]}
    models = pruned_models({"alphas": [0.1]}, prune)
    assert list(models) == ["antidote-a0.05", "antidote-a0.1", "antidote-a0.2", "random-a0.1", "safelora-k10",
                            "safelora-t0.5"]
    assert models["random-a0.1"] == {"defense": "random", "alpha": 0.1, "safelora_select": None, "safelora_value": None}
    assert models["safelora-t0.5"] == {"defense": "safelora", "alpha": None, "safelora_select": "threshold",
                                       "safelora_value": 0.5}


def test_peer_defenses_take_the_reference_defaults():
    config = changed("prune.defenses", ["antidote", "antidote-setdiff", "safelora"])
    check(config)
    assert config["prune"]["safelora"] == [{"select": "count", "value": 10}]
    assert config["prune"]["setdiff_beta"] is None


def test_study_config_is_the_default_run_with_seeds_and_a_sweep_of_every_defense():
    study = yaml.safe_load((REPO / "config/study.yaml").read_text())
    check(copy.deepcopy(study))
    assert study["results_name"] == "study"
    assert study["finetune"].pop("seed") == [0, 1, 2]
    prune = study.pop("prune")
    assert set(prune["defenses"]) == set(DEFENSES) and not prune.get("alpha_by_defense")
    assert min(prune["alpha"]) <= 0.01 and max(prune["alpha"]) >= 0.3 and len(prune["alpha"]) >= 5
    assert len(prune["safelora"]) >= 3  # SafeLoRA's own setting swept: alpha means nothing to it
    # everything else is the default run's, so that the study reuses what the default computed
    default = copy.deepcopy(DEFAULT)
    default["finetune"].pop("seed"), default.pop("prune")
    assert {k: v for k, v in study.items() if k != "results_name"} == default


def test_training_defenses_are_grid_axes_named_in_the_run_ids():
    from antidote.config import expand_runs

    config = changed("align.defense", ["sft", "vaccine"])
    config["finetune"]["runs"] = [{"finetune_defense": ["sft", "lisa"]}, {"seed": 1, "defenses": []}]
    check(config)
    runs = expand_runs(config)
    assert list(runs) == ["sst2-p0.2-lr0.001-ep2-n200-s0", "sst2-p0.2-lr0.001-ep2-n200-s0+lisa",
                          "sst2-p0.2-lr0.001-ep2-n200-s0+vaccine", "sst2-p0.2-lr0.001-ep2-n200-s0+vaccine+lisa",
                          "sst2-p0.2-lr0.001-ep2-n200-s1", "sst2-p0.2-lr0.001-ep2-n200-s1+vaccine"]
    assert runs["sst2-p0.2-lr0.001-ep2-n200-s0+vaccine+lisa"]["align_defense"] == "vaccine"
    assert runs["sst2-p0.2-lr0.001-ep2-n200-s0+lisa"]["defenses"] == DEFAULT["prune"]["defenses"]
    assert runs["sst2-p0.2-lr0.001-ep2-n200-s1"]["defenses"] == []


def test_hyperparams_config_runs_the_six_methods_over_learning_rate_and_epochs():
    from antidote.config import expand_runs, pruned_models

    study = yaml.safe_load((REPO / "config/hyperparams.yaml").read_text())
    check(copy.deepcopy(study))
    runs = expand_runs(study).values()
    methods = {(r["align_defense"], r["finetune_defense"], bool(pruned_models(r, study["prune"]))) for r in runs}
    assert methods == {("sft", "sft", True), ("vaccine", "sft", False), ("repnoise", "sft", False),
                       ("sft", "lisa", False), ("sft", "ldifs", False)}
    for method in methods:  # every method at every setting of both arms, with two seeds
        settings = {(r["learning_rate"], r["epochs"], r["seed"]) for r in runs
                    if (r["align_defense"], r["finetune_defense"], bool(pruned_models(r, study["prune"]))) == method}
        learning_rates = sorted({lr for lr, ep, _ in settings if ep == 2})
        assert len(learning_rates) >= 3 and learning_rates[-1] / learning_rates[0] >= 100
        assert len({ep for lr, ep, _ in settings if lr == 1e-4}) >= 3 and {s for *_, s in settings} == {0, 1}
