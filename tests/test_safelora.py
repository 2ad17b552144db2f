"""SafeLoRA against a brute-force transcription of the reference formula (IBM/SafeLoRA) on tiny
models of two families, its module selection, and the defended adapter loading with PEFT."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from antidote.maskfile import read_mask_info
from antidote.modeling import load_model, lora_modules, lora_scaling
from antidote.prune import update_removed
from antidote.safelora import alignment_from_adapter, projected, selected_modules
from antidote.stages import safelora_stage, train_stage

from test_model_families import RECORDS, save_tiny_model

QKV = ["q_proj", "k_proj", "v_proj"]


def random_adapter(model, folder, r, alpha, target_modules, seed):
    """A PEFT adapter on ``model`` with random A and B (B is zero when PEFT makes it), saved to ``folder``."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules=target_modules))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, weight in peft_model.named_parameters():
            if "lora_" in name:
                weight.copy_(0.2 * torch.randn(weight.shape, generator=generator))
    peft_model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=["LlamaConfig", "Qwen2Config"])
def family(request, tmp_path_factory):
    """A base model, an alignment adapter merged into it (the aligned model), and a user's adapter on
    the aligned model that also targets o_proj, which the alignment adapter does not reach."""
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp(request.param)
    base = save_tiny_model(request.param, folder / "base")
    alignment = random_adapter(AutoModelForCausalLM.from_pretrained(base), folder / "alignment", 4, 8, QKV, seed=1)
    load_model(base, alignment, merge=True, dtype="float32").save_pretrained(folder / "aligned")
    user = random_adapter(AutoModelForCausalLM.from_pretrained(folder / "aligned"), folder / "user", 8, 16,
                          [*QKV, "o_proj"], seed=2)
    return {"base": base, "alignment": alignment, "aligned": folder / "aligned", "user": user, "folder": folder}


def reference_safelora(base_dir, aligned_dir, user_dir, select, value):
    """The reference's formula transcribed as it is written, on full matrices: for every module the
    user's adapter targets, V = W_aligned - W_base, C = V V^T / ||V||_F, cos = cosine(C B A, B A);
    project (B <- C B) where cos <= the threshold, or <= the k-th lowest cosine ("number")."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = dict(AutoModelForCausalLM.from_pretrained(base_dir).named_parameters())
    aligned = AutoModelForCausalLM.from_pretrained(aligned_dir)
    weights = dict(aligned.named_parameters())
    peft = dict(PeftModel.from_pretrained(aligned, user_dir).named_parameters())
    cosines, candidates = {}, {}
    for name in peft:
        if ".lora_A." not in name:
            continue
        module = name.split(".lora_A.")[0]
        weight = module.removeprefix("base_model.model.") + ".weight"
        a, b = peft[name].detach().double(), peft[name.replace("lora_A", "lora_B")].detach().double()
        v = (weights[weight] - base[weight]).detach().double()
        if torch.linalg.norm(v) == 0:
            cosines[module] = math.nan  # no alignment update here: C is 0 / 0
            continue
        c = v @ v.T / torch.linalg.norm(v)
        candidates[module] = c @ b
        cosines[module] = torch.nn.functional.cosine_similarity((c @ b @ a).reshape(1, -1),
                                                                (b @ a).reshape(1, -1)).item()
    judged = sorted(c for c in cosines.values() if not math.isnan(c))
    limit = value if select == "threshold" else judged[:int(value)][-1]
    chosen = {m for m, c in cosines.items() if c <= limit}
    return cosines, {m: candidates[m] for m in chosen}


@pytest.mark.parametrize("select, value", [("count", 3), ("threshold", 0.4), ("count", 20)])
def test_safelora_matches_a_transcription_of_the_reference(family, select, value, tmp_path):
    out = tmp_path / "defended"
    info = safelora_stage(family["user"], select, value, out, tmp_path / "projection.parquet",
                          alignment_adapter=family["alignment"])
    cosines, projected_b = reference_safelora(family["base"], family["aligned"], family["user"], select, value)

    import pandas as pd
    table = pd.read_parquet(tmp_path / "projection.parquet").set_index("module")
    assert set(table.index) == set(cosines) and len(cosines) == 2 * 4  # 2 layers x q, k, v, o
    for module, cosine in cosines.items():
        if math.isnan(cosine):
            assert "o_proj" in module and math.isnan(table.loc[module, "cosine"])
        else:  # V from the adapter's factors, the reference's from the fp32 merge: equal to rounding
            assert table.loc[module, "cosine"] == pytest.approx(cosine, abs=1e-5), module
    assert set(table.index[table["projected"]]) == set(projected_b)
    assert info["projected"] == len(projected_b) > 0 and info["modules"] == 8
    if select == "count" and value > 6:
        assert len(projected_b) == 6  # every module with a cosine, none without

    original, defended = load_file(family["user"] / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    for name, weight in defended.items():
        module = name.split(".lora_")[0]
        if ".lora_B." in name and module in projected_b:
            assert torch.allclose(weight.double(), projected_b[module], rtol=1e-4, atol=1e-7), name
        else:
            assert torch.equal(weight, original[name]), name  # A everywhere, B where not projected


def test_the_dense_fallback_equals_the_low_rank_alignment_update(family, tmp_path):
    """An aligned model brought without its adapter: V = W_aligned - W_base gives the same result."""
    low_rank = safelora_stage(family["user"], "count", 3, tmp_path / "a", tmp_path / "a.parquet",
                              alignment_adapter=family["alignment"])
    dense = safelora_stage(family["user"], "count", 3, tmp_path / "b", tmp_path / "b.parquet",
                           base_model=family["base"], aligned_model=family["aligned"])
    assert dense["projected"] == low_rank["projected"] == 3
    assert dense["update_removed"] == pytest.approx(low_rank["update_removed"], rel=1e-4)
    first, second = load_file(tmp_path / "a/adapter_model.safetensors"), load_file(tmp_path / "b/adapter_model.safetensors")
    assert all(torch.allclose(first[n], second[n], rtol=1e-4, atol=1e-7) for n in first)


def test_defended_adapter_loads_with_peft_and_records_update_removed(family, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "defended"
    info = safelora_stage(family["user"], "count", 2, out, tmp_path / "projection.parquet",
                          alignment_adapter=family["alignment"])
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(family["aligned"]), out)
    loaded = {n: p.detach() for n, p in model.named_parameters()}
    for name, weight in load_file(out / "adapter_model.safetensors").items():
        assert torch.equal(loaded[name.replace(".weight", ".default.weight")], weight)
    # ||dW - C B A||^2 / ||dW||^2 over every module, entry by entry
    original, defended = load_file(family["user"] / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    removed = total = 0.0
    for a in [n for n in original if "lora_A" in n]:
        b = a.replace("lora_A", "lora_B")
        before, after = original[b].double() @ original[a].double(), defended[b].double() @ defended[a].double()
        removed, total = removed + float((before - after).square().sum()), total + float(before.square().sum())
    assert info["update_removed"] > 0 and info["update_removed"] == pytest.approx(100 * removed / total, rel=1e-9)
    assert read_mask_info(tmp_path / "projection.parquet") == info
    assert info["update_removed"] == pytest.approx(update_removed(original, defended))


def test_stage_1_keeps_the_adapter_it_merged(tmp_path):
    """The alignment adapter kept by stage 1 is the update merged into the aligned model."""
    from transformers import AutoModelForCausalLM

    from antidote.records import write_jsonl

    base = save_tiny_model("LlamaConfig", tmp_path / "base")
    write_jsonl(tmp_path / "data.jsonl", RECORDS)
    train_stage(base, [tmp_path / "data.jsonl"], tmp_path / "aligned", {"r": 4, "alpha": 8},
                {"epochs": 1, "learning_rate": 1e-2, "batch_size": 2, "max_length": 128}, "chat", merge=True,
                adapter_dir=tmp_path / "adapter")
    weights = load_file(tmp_path / "adapter/adapter_model.safetensors")
    alignment = alignment_from_adapter(weights, json.loads((tmp_path / "adapter/adapter_config.json").read_text()))
    before = dict(AutoModelForCausalLM.from_pretrained(base).named_parameters())
    after = dict(AutoModelForCausalLM.from_pretrained(tmp_path / "aligned").named_parameters())
    assert len(lora_modules(weights)) == 6
    assert alignment("base_model.model.model.layers.0.self_attn.o_proj") is None  # not an aligned module
    for module in lora_modules(weights):
        left, right = alignment(module)
        weight = module.removeprefix("base_model.model.") + ".weight"
        update = (after[weight] - before[weight]).detach().double()
        assert update.abs().max() > 0 and torch.allclose(left @ right, update, atol=1e-6), module


def test_projection_from_factors_equals_the_full_matrices():
    generator = torch.Generator().manual_seed(0)
    left, right, b = (torch.randn(shape, generator=generator, dtype=torch.float64) for shape in [(12, 3), (3, 10), (12, 4)])
    v = left @ right
    assert torch.allclose(projected(b, (left, right)), v @ v.T / torch.linalg.norm(v) @ b)
    assert projected(b, (torch.zeros(12, 3, dtype=torch.float64), right)) is None  # no alignment update: no C
    assert lora_scaling({"r": 16, "lora_alpha": 32}) == 2 and lora_scaling({"r": 16, "lora_alpha": 32, "use_rslora": True}) == 8
    with pytest.raises(ValueError, match="rank_pattern"):
        lora_scaling({"r": 16, "lora_alpha": 32, "rank_pattern": {"q_proj": 8}})


def test_module_selection_as_the_reference():
    cosines = {"a": 0.1, "b": 0.1, "c": 0.3, "d": 0.7, "e": math.nan}
    assert selected_modules(cosines, "count", 1) == {"a", "b"}  # ties at the k-th cosine go too
    assert selected_modules(cosines, "count", 3) == {"a", "b", "c"}
    assert selected_modules(cosines, "count", 10) == {"a", "b", "c", "d"}  # never a module without a cosine
    assert selected_modules(cosines, "fraction", 0.5) == {"a", "b", "c"}  # ceil(0.5 * 5) = 3
    assert selected_modules(cosines, "threshold", 0.3) == {"a", "b", "c"}  # at most the threshold
    assert selected_modules(cosines, "threshold", -0.5) == set()
    with pytest.raises(ValueError, match="unknown SafeLoRA selection 'number'"):
        selected_modules(cosines, "number", 3)


def test_the_command_line_runs_safelora_and_names_what_it_lacks(family, tmp_path, capsys):
    from antidote.cli import main

    common = ["prune", "--adapter", str(family["user"]), "--defense", "safelora", "--out", str(tmp_path / "out"),
              "--mask", str(tmp_path / "projection.parquet")]
    with pytest.raises(SystemExit, match="--defense safelora needs --alignment-adapter, or --base-model"):
        main(common)
    main([*common, "--select", "threshold", "--value", "0.4", "--alignment-adapter", str(family["alignment"])])
    printed = json.loads(capsys.readouterr().out)
    assert printed["select"] == "threshold" and printed["projected"] == 3 and printed["modules"] == 8
    with pytest.raises(SystemExit, match="--defense antidote needs --alpha"):
        main(["prune", "--adapter", str(family["user"]), "--out", "x", "--mask", "y"])
