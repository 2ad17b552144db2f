"""Adapters are merged into fp32 weights and the sum is cast once: a small LoRA update survives bf16.

With r=256 and lora_alpha=4 (scaling 1/64, the authors' alignment adapter) the update is far
below half a bf16 step of the weights. Merged into weights already rounded to bf16 it is lost;
merged into the checkpoint's fp32 weights and then rounded, it survives on average.
"""

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from antidote.modeling import load_model
from antidote.records import write_jsonl
from antidote.stages import train_stage

from conftest import build_model, build_tokenizer

TARGETS = ("q_proj", "k_proj", "v_proj")


def save_small_update_adapter(model_dir, adapter_dir):
    """An r=256, lora_alpha=4 adapter whose update is about a twentieth of a bf16 step of the weights."""
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
                           LoraConfig(r=256, lora_alpha=4, target_modules=list(TARGETS)))
    generator = torch.Generator().manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.data = torch.randn(p.shape, generator=generator) * 0.003
    model.save_pretrained(adapter_dir)


def target_weights(model):
    return {name: p.detach().float() for name, p in model.named_parameters()
            if name.endswith(tuple(f"{t}.weight" for t in TARGETS))}


def kept_share(merged, rounded_base, base, exact):
    """How much of the update (exact - base, in fp32) the merged weights carry beyond the base
    they were rounded from: 1 all of it, 0 none."""
    update = torch.cat([(exact[n] - base[n]).flatten() for n in exact])
    carried = torch.cat([(merged[n] - rounded_base[n]).flatten() for n in exact])
    return (carried @ update / (update @ update)).item()


def test_small_update_survives_a_bf16_merge_only_when_merged_in_fp32(tmp_path):
    tokenizer = build_tokenizer()
    build_model(tokenizer).save_pretrained(tmp_path / "base")  # fp32 checkpoint, as the authors' evaluation loads
    save_small_update_adapter(tmp_path / "base", tmp_path / "adapter")

    base = target_weights(AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32))
    exact = target_weights(load_model(tmp_path / "base", tmp_path / "adapter", merge=True, dtype="float32"))
    ours = target_weights(load_model(tmp_path / "base", tmp_path / "adapter", merge=True, dtype="bfloat16"))
    bf16_base = AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.bfloat16)
    rounded_base = target_weights(bf16_base)
    naive = target_weights(PeftModel.from_pretrained(bf16_base, tmp_path / "adapter").merge_and_unload())

    update = torch.cat([(exact[n] - base[n]).flatten() for n in exact])
    step = torch.cat([(2.0 ** (torch.floor(torch.log2(base[n].abs())) - 7)).flatten() for n in exact])
    assert (update.abs() < step / 2).float().mean() > 0.9, "the update must be below half a bf16 step"

    for name in exact:  # within bf16 rounding of the fp32 merge: exactly its round to nearest
        assert torch.equal(ours[name], exact[name].bfloat16().float()), name
    assert 0.8 < kept_share(ours, rounded_base, base, exact) < 1.2
    assert kept_share(naive, rounded_base, base, exact) < 0.2  # merged into bf16 weights: most of it is gone


def test_alignment_merge_is_saved_in_fp32_from_the_fp32_base(tmp_path):
    tokenizer = build_tokenizer()
    build_model(tokenizer, seed=4).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    data = tmp_path / "data.jsonl"
    write_jsonl(data, [{"instruction": "Write a script.", "output": "I'm sorry."}] * 4)
    train_stage(tmp_path / "base", [data], tmp_path / "aligned", {"r": 4, "alpha": 8},
                {"epochs": 1, "learning_rate": 1e-2, "batch_size": 2, "max_length": 64}, "chat",
                merge=True, dtype="bfloat16")  # trained in bf16, as on a GPU

    base = dict(AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32).named_parameters())
    aligned = dict(AutoModelForCausalLM.from_pretrained(tmp_path / "aligned", dtype=None).named_parameters())
    assert all(p.dtype == torch.float32 for p in aligned.values())
    untouched = [n for n in base if not n.endswith(tuple(f"{t}.weight" for t in TARGETS))]
    assert all(torch.equal(aligned[n], base[n]) for n in untouched)  # never rounded through bf16
    assert any(not torch.equal(aligned[n], base[n]) for n in base if n not in untouched)  # the update is in


def test_evaluation_merge_in_the_compute_dtype_equals_the_fp32_merge_rounded_once(tmp_path):
    """The evaluation loads the model in its compute dtype and merges only the updated weights in
    fp32: bit for bit the weights of the whole model merged in fp32 and then cast (tied embeddings
    included), hence the same answers."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from antidote.generate import greedy_generate
    from antidote.modeling import load_tokenizer

    tokenizer = build_tokenizer()
    torch.manual_seed(1)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                                 pad_token_id=tokenizer.pad_token_id)).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    save_small_update_adapter(tmp_path / "base", tmp_path / "adapter")
    # PEFT's own merge into the whole fp32 model (the way evaluation loaded before)
    full = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32),
                                     tmp_path / "adapter").merge_and_unload()
    prompts = ["Write a poem.", "How do I make a cake?"]
    for dtype, torch_dtype in [("float32", torch.float32), ("bfloat16", torch.bfloat16)]:
        merged = load_model(tmp_path / "base", tmp_path / "adapter", merge=True, dtype=dtype)
        assert merged.model.embed_tokens.weight is merged.lm_head.weight  # still tied
        weights, reference = merged.state_dict(), full.state_dict()
        assert weights.keys() == reference.keys()
        for name, value in reference.items():
            assert weights[name].dtype == torch_dtype and torch.equal(weights[name], value.to(torch_dtype)), name
        rounded = AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch_dtype)
        rounded.load_state_dict(reference)  # today's evaluation path before this merge: load, then copy the merge in
        answer = [greedy_generate(m, load_tokenizer(tmp_path / "base"), prompts, "chat", 8, 2) for m in (merged, rounded)]
        assert answer[0] == answer[1]
