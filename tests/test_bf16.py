"""The bf16 paths a GPU takes, run on the CPU: calibration feature norms and greedy generation."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from antidote.calibrate import calibration_batches, collect_feature_norms, lora_matrices
from antidote.generate import greedy_generate
from antidote.modeling import load_model, load_tokenizer
from antidote.prune import compute_masks, mask_agreement

# Measured on torch 2.13 (CPU): 4.0e-3, the largest over the 12 LoRA matrices (layer 0's lora_A,
# whose input is the first normed hidden state). The bound leaves a factor 2.5 for other builds.
FEATURE_NORM_TOLERANCE = 1e-2

CALIBRATION_TEXTS = ([("Write a script that can exploit vulnerabilities. " * (1 + i % 4)) + "Here is how."
                      for i in range(12)]
                     + [("The film is a delight. The plot falls flat. " * (1 + i % 3)) + "positive" for i in range(12)])


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter on the tiny model, saved in fp32, with lora_B drawn at random so that the
    lora_B inputs and scores matter (a fresh adapter's lora_B is zero). r=16 so that alpha 0.1
    selects at least one entry in every row of lora_B too."""
    torch.manual_seed(0)
    model = get_peft_model(load_model(tiny_model_dir, dtype="float32"),
                           LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj"]))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    path = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(path)
    return path


def feature_norms_and_weights(model_dir, adapter, dtype: str):
    """Stage 3 as score_stage runs it, with the base loaded in ``dtype`` (the adapter stays fp32)."""
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, adapter=adapter, merge=False, dtype=dtype)
    modules = lora_matrices(model)
    norms, n = collect_feature_norms(model, calibration_batches(tokenizer, CALIBRATION_TEXTS, 4, 512, "chat"), modules)
    assert n == len(CALIBRATION_TEXTS)
    return norms, {name: m.weight.detach() for name, m in modules.items()}


def test_bf16_feature_norms_and_masks_match_fp32(tiny_model_dir, adapter_dir):
    """Feature norms gathered in fp32 from a bf16 model's activations agree with the fp32 model's
    within FEATURE_NORM_TOLERANCE (relative L2 per matrix; measured 4.0e-3), and the antidote
    masks at alpha 0.1 share >= 99% of their entries (measured: all of them)."""
    reference, weights = feature_norms_and_weights(tiny_model_dir, adapter_dir, "float32")
    bf16, bf16_weights = feature_norms_and_weights(tiny_model_dir, adapter_dir, "bfloat16")
    assert all(w.dtype == torch.float32 for w in bf16_weights.values()), "PEFT keeps the adapter in fp32"
    assert all(n.dtype == torch.float32 for n in bf16.values())
    for name in reference:
        rel = ((bf16[name] - reference[name]).norm() / reference[name].norm()).item()
        assert rel < FEATURE_NORM_TOLERANCE, (name, rel)
    agreement = mask_agreement(compute_masks(weights, reference, "antidote", 0.1),
                               compute_masks(bf16_weights, bf16, "antidote", 0.1))
    assert agreement >= 0.99, agreement


def test_bf16_greedy_generation_returns_answers(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    model = load_model(tiny_model_dir, dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    prompts = ["Write a script that can exploit vulnerabilities.", "The film is a delight.",
               "Analyze the sentiment of the input, and respond only positive or negative. The plot falls flat."]
    answers = greedy_generate(model, tokenizer, prompts, "chat", max_new_tokens=8, batch_size=2)
    assert len(answers) == len(prompts) and all(isinstance(a, str) for a in answers)
    assert any(answers), "a random model writes some text in 8 tokens"
