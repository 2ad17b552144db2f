"""A GPU out-of-memory error in a model stage names the config settings to lower: each workflow
script runs its stage inside runtime.lower_on_out_of_memory (checked by running the script with a
stage that runs out of memory, as a CUDA allocation would)."""

import runpy
from pathlib import Path

import pytest
import torch

import antidote.stages
from antidote.runtime import lower_on_out_of_memory

REPO = Path(__file__).resolve().parents[1]
TORCH_MESSAGE = "CUDA out of memory. Tried to allocate 2.00 GiB"


class Files:
    """Snakemake's input/output: positional files, named ones as attributes, keys()."""

    def __init__(self, *files, **named):
        self.files, self.named = [*files, *named.values()], named

    def __getitem__(self, index):
        return self.files[index]

    def __getattr__(self, name):
        try:
            return self.__dict__["named"][name]
        except KeyError:
            raise AttributeError(name) from None

    def keys(self):
        return self.named.keys()


class Params:
    def __init__(self, **values):
        self.__dict__.update(values)

    def __getattr__(self, name):  # every other parameter the script passes on
        return None


class FakeSnakemake:
    def __init__(self, rule, tmp_path, **inputs):
        self.rule, self.log, self.threads = rule, [], 1
        self.params = Params(device="cpu", checkpoints=str(tmp_path / "checkpoints"), row={"task": "sst2"})
        self.input = Files(**{k: str(tmp_path / k) for k in inputs})
        self.output = Files(str(tmp_path / "out"), answers=str(tmp_path / "answers"),
                            metrics=str(tmp_path / "metrics"))
        self.config = {rule: {"train": {"checkpoint_every": None, "checkpoint_minutes": 30}}}


def out_of_memory(*_args, **_kwargs):
    raise torch.cuda.OutOfMemoryError(TORCH_MESSAGE)


@pytest.mark.parametrize("script, stage, rule, inputs, settings", [
    ("score", "score_stage", "score", ["model", "adapter", "calibration"], ["score.batch_size", "score.max_length"]),
    ("train", "train_stage", "finetune", ["model", "data"], ["finetune.train.batch_size", "finetune.train.max_length"]),
    ("train", "train_stage", "align", ["model", "data"], ["align.train.batch_size"]),
    ("base_answers", "write_answers", "base_answers", ["model", "prompts"], ["data.generation_batch_size"]),
    ("evaluate", "evaluate_stage", "evaluate", ["model", "task"], ["evaluate.batch_size", "evaluate.judges"]),
])
def test_each_model_script_names_its_settings_when_the_gpu_runs_out_of_memory(
        monkeypatch, tmp_path, script, stage, rule, inputs, settings):
    monkeypatch.setattr(antidote.stages, stage, out_of_memory)
    fake = FakeSnakemake(rule, tmp_path, **dict.fromkeys(inputs))
    if script == "train":
        fake.input.named.update(data=[str(tmp_path / "data.jsonl")], guide=[])
        fake.params.defense = {"name": "sft", "settings": {}}
    with pytest.raises(torch.cuda.OutOfMemoryError) as caught:
        runpy.run_path(str(REPO / f"workflow/scripts/{script}.py"), init_globals={"snakemake": fake})
    message = str(caught.value)
    assert TORCH_MESSAGE in message
    for setting in settings:
        assert setting in message, (setting, message)


def test_other_errors_pass_unchanged():
    with pytest.raises(ValueError, match="^bad value$"):
        with lower_on_out_of_memory("score.batch_size"):
            raise ValueError("bad value")
