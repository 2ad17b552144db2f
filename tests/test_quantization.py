"""train.quantization: 4-bit training is refused without CUDA before any model is loaded, a missing
bitsandbytes names the extra to install, and on a CUDA machine with bitsandbytes it trains."""

import importlib.util
import json
import sys

import pytest
import torch

from antidote.config import ConfigError
from antidote.quantization import check_quantization
from antidote.stages import train_stage
from antidote.train import LoraSettings, TrainSettings, train_lora

from conftest import build_model, build_tokenizer, write_jsonl
from test_config import changed, check
from test_train import RECORDS


def test_4bit_on_cpu_is_refused_before_any_model_is_loaded(tmp_path):
    # The model directory does not exist: loading anything would fail with another error.
    with pytest.raises(ValueError, match=r"train\.quantization: '4bit' needs a CUDA device.*loss unchanged"):
        train_stage(tmp_path / "no-model", [tmp_path / "no-data.jsonl"], tmp_path / "out",
                    {"r": 8, "alpha": 16}, {"quantization": "4bit"}, "chat", merge=False, device="cpu")
    assert not (tmp_path / "out").exists()


def test_4bit_settings_with_an_unquantized_model_are_refused(tiny_tokenizer):
    with pytest.raises(ValueError, match="needs a CUDA device"):
        train_lora(build_model(tiny_tokenizer), tiny_tokenizer, RECORDS, LoraSettings(),
                   TrainSettings(quantization="4bit"), "chat")


def test_missing_bitsandbytes_names_the_gpu_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as if not installed, even where it is
    with pytest.raises(ImportError, match=r"bitsandbytes, which is not installed: pip install -e '\.\[gpu\]'"):
        check_quantization("4bit", "cuda")


def test_unknown_quantization_is_refused():
    with pytest.raises(ValueError, match="unknown value '8bit'"):
        check_quantization("8bit", "cpu")
    check_quantization("none", "cpu")


def test_config_with_4bit_on_a_cpu_device_stops_before_any_job():
    config = changed("device", "cpu")
    config["finetune"]["train"]["quantization"] = "4bit"
    with pytest.raises(ConfigError, match=r"finetune\.train\.quantization: '4bit' needs CUDA"):
        check(config)
    with pytest.raises(Exception, match="'8bit' is not one of"):
        check(changed("align.train.quantization", "8bit"))
    check(changed("align.train.quantization", "4bit"))  # device auto: the job decides on its machine


@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None,
                    reason="4-bit training needs CUDA and bitsandbytes (pip install -e '.[gpu]')")
def test_4bit_training_lowers_the_loss_and_merges_into_a_plain_model(tmp_path):
    tokenizer = build_tokenizer()
    # a larger init than the default, as in test_train: the tiny frozen output layer must let the adapter matter
    build_model(tokenizer, seed=3, initializer_range=0.5).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    data = write_jsonl(tmp_path / "train.jsonl", RECORDS * 4)
    train_stage(tmp_path / "base", [data], tmp_path / "aligned", {"r": 8, "alpha": 16},
                {"epochs": 5, "learning_rate": 1e-2, "batch_size": 4, "quantization": "4bit"}, "chat",
                merge=True, device="cuda")
    losses = [json.loads(line)["loss"] for line in (tmp_path / "aligned/train_log.jsonl").read_text().splitlines()]
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0], losses
    saved = json.loads((tmp_path / "aligned/config.json").read_text())
    assert "quantization_config" not in saved, "the adapter is merged into the full-precision base"
