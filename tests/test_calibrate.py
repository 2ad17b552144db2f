"""Batched, padded calibration statistics equal the authors' batch-1 running mean."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from antidote.calibrate import calibration_batches, collect_feature_norms, lora_matrices
from antidote.reference import authors_running_mean

from conftest import build_model


def lora_model(tokenizer):
    model = build_model(tokenizer, seed=1)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj"]))
    for name, p in model.named_parameters():  # lora_B starts at zero: give it values so its output matters
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    return model.eval()


def test_batched_padded_statistics_equal_batch1_running_mean(tiny_tokenizer):
    model = lora_model(tiny_tokenizer)
    texts = [("Write a script that can exploit vulnerabilities. " * (1 + i % 4)) + "Here is how." for i in range(11)]
    modules = lora_matrices(model)
    assert len(modules) == 2 * 3 * 2  # A and B of q, k, v in 2 layers
    reference = authors_running_mean(model, tiny_tokenizer, texts, modules)
    batches = calibration_batches(tiny_tokenizer, texts, batch_size=4, max_length=512, prompt_format="chat")
    assert any((b["attention_mask"] == 0).any() for b in batches), "the test must exercise padding"
    feature_norms, n = collect_feature_norms(model, batches, modules)
    assert n == len(texts)
    for name in modules:
        rel = (feature_norms[name] - reference[name]).norm() / reference[name].norm()
        assert rel < 1e-5, (name, rel.item())


def test_statistics_need_eval_mode(tiny_tokenizer):
    model = lora_model(tiny_tokenizer).train()
    batches = calibration_batches(tiny_tokenizer, ["Write a script."], batch_size=1, max_length=512, prompt_format="chat")
    with pytest.raises(ValueError, match="model.eval"):
        collect_feature_norms(model, batches, lora_matrices(model))


def test_statistics_names_match_saved_adapter_keys(tiny_tokenizer, tmp_path):
    from safetensors.torch import load_file

    model = lora_model(tiny_tokenizer)
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    modules = lora_matrices(model)
    assert set(modules) == set(saved)
    for name, module in modules.items():
        assert saved[name].shape == module.weight.shape


def test_benign_calibration_set_is_the_runs_task_items_as_many_as_the_harmful_set(tmp_path):
    from antidote.records import read_jsonl, write_jsonl
    from antidote.stages import calibration_records

    harmful, finetune, short = tmp_path / "harmful.jsonl", tmp_path / "mix.jsonl", tmp_path / "short.jsonl"
    write_jsonl(harmful, [{"instruction": f"harm {i}", "output": "sure"} for i in range(3)])
    mix = [{"instruction": f"task {i}", "input": f"text {i}", "output": "positive", "label": "positive", "kind": "task"}
           for i in range(5)]
    mix.insert(1, {"instruction": "harm x", "output": "sure", "kind": "harmful"})
    write_jsonl(finetune, mix)
    write_jsonl(short, mix[:2])
    assert calibration_records(harmful, 2) == read_jsonl(harmful)[:2]
    benign = calibration_records(harmful, 10, benign_from=finetune)  # the harmful file holds 3
    assert [r["instruction"] for r in benign] == ["task 0", "task 1", "task 2"]
    assert all(r["kind"] == "task" and r["output"] == "positive" for r in benign)
    with pytest.raises(ValueError, match="lower data.calibration_size"):
        calibration_records(harmful, 3, benign_from=short)
