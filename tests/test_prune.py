"""The mask: the authors' per-row count and ties, whole-tensor random pruning, exact zeroing, Parquet round trip."""

import pytest
import torch

from antidote.maskfile import read_masks, write_masks
from antidote.prune import antidote_score, apply_masks, compute_masks, top_fraction_mask, whole_tensor_mask

AUTHORS_ALPHAS = [0.01, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]


def authors_mask(score, alpha):
    """A literal transcription of the authors' construction, in plain Python: sort each row
    ascending (stable), keep the first int(cols * (1 - alpha)) entries, mark the rest."""
    rows, cols = score.shape
    mask = torch.ones(rows, cols, dtype=torch.bool)
    for i in range(rows):
        ascending = sorted(range(cols), key=lambda j: score[i, j].item())  # Python's sort is stable
        for j in ascending[:int(cols * (1 - alpha))]:
            mask[i, j] = False
    return mask


def scores_with_ties(rows, cols, seed):
    """Rows of distinct scores, rows of a few repeated values (ties everywhere) and a constant row."""
    generator = torch.Generator().manual_seed(seed)
    distinct = torch.rand(rows, cols, generator=generator)
    tied = torch.randint(0, 4, (rows, cols), generator=generator).float()
    return torch.cat([distinct, tied, torch.ones(1, cols)])


@pytest.mark.parametrize("alpha", AUTHORS_ALPHAS)
@pytest.mark.parametrize("cols", [4096, 256, 32, 7])
def test_mask_matches_the_authors_construction(cols, alpha):
    score = scores_with_ties(2, cols, seed=cols + int(alpha * 100))
    mask = top_fraction_mask(score, alpha)
    assert torch.equal(mask, authors_mask(score, alpha))
    assert (mask.sum(dim=1) == cols - int(cols * (1 - alpha))).all()


@pytest.mark.parametrize("cols, alpha, pruned", [(4096, 0.1, 410), (256, 0.1, 26), (32, 0.1, 4), (7, 0.3, 3),
                                                 (4096, 0.05, 205), (7, 0.01, 1)])
def test_a_row_loses_one_more_than_floor_where_alpha_times_cols_is_not_whole(cols, alpha, pruned):
    assert (top_fraction_mask(torch.rand(3, cols), alpha).sum(dim=1) == pruned).all()


def test_ties_prune_the_higher_column():
    score = torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.5, 2.0, 1.0, 1.0, 1.0, 1.0]])
    mask = top_fraction_mask(score, 0.3)  # keeps int(10 * 0.7) = 7: three of the four tied 2.0 entries go
    assert mask.nonzero()[:, 1].tolist() == [2, 3, 5]
    assert torch.equal(mask, authors_mask(score, 0.3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_masks_on_a_gpu_equal_those_on_the_cpu():
    score = scores_with_ties(8, 4096, seed=0)
    for select in (top_fraction_mask, whole_tensor_mask):
        on_gpu = select(score.cuda(), 0.1)
        assert on_gpu.is_cuda and torch.equal(on_gpu.cpu(), select(score, 0.1))


def test_wanda_score_is_weight_magnitude_times_root_norm():
    weight = torch.tensor([[1.0, -2.0], [-3.0, 0.5]])
    norm = torch.tensor([4.0, 9.0])
    assert torch.allclose(antidote_score(weight, norm), torch.tensor([[2.0, 6.0], [6.0, 1.5]]))


def test_antidote_prefers_large_activations_over_large_weights():
    # column 0 has the larger weights, column 1 the far larger activations: Wanda picks column 1
    weight = torch.tensor([[2.0, 1.0]] * 3)
    masks = compute_masks({"w": weight}, {"w": torch.tensor([1.0, 100.0])}, "antidote", 0.5)
    assert masks["w"][:, 1].all() and not masks["w"][:, 0].any()
    magnitude = compute_masks({"w": weight}, None, "magnitude", 0.5)
    assert magnitude["w"][:, 0].all() and not magnitude["w"][:, 1].any()


def test_random_masks_are_seeded_and_differ_between_seeds():
    weights = {"a": torch.randn(8, 50), "b": torch.randn(50, 8)}
    first = compute_masks(weights, None, "random", 0.2, seed=3)
    assert all(torch.equal(first[n], compute_masks(weights, None, "random", 0.2, seed=3)[n]) for n in weights)
    assert not torch.equal(first["a"], compute_masks(weights, None, "random", 0.2, seed=4)["a"])


@pytest.mark.parametrize("alpha", AUTHORS_ALPHAS)
def test_random_pruning_takes_int_alpha_numel_of_each_whole_tensor(alpha):
    weights = {"a": torch.randn(64, 48), "b": torch.randn(7, 13), "c": torch.randn(256, 32)}
    masks = compute_masks(weights, None, "random", alpha, seed=1)
    for name, weight in weights.items():
        assert int(masks[name].sum()) == int(alpha * weight.numel()), name
    # drawn from the whole tensor, not alpha of every row: the rows' counts differ
    assert len(set(masks["a"].sum(dim=1).tolist())) > 1


@pytest.mark.parametrize("alpha", AUTHORS_ALPHAS)
def test_random_pruning_per_row_takes_each_rows_count(alpha):
    weights = {"a": torch.randn(64, 48), "b": torch.randn(7, 13), "c": torch.randn(256, 32)}
    masks = compute_masks(weights, None, "random", alpha, seed=1, random_scope="row")
    for name, weight in weights.items():
        cols = weight.shape[1]
        assert (masks[name].sum(dim=1) == cols - int(cols * (1 - alpha))).all(), name


def test_random_scope_leaves_the_data_aware_defenses_per_row():
    weights, norms = {"w": torch.randn(16, 40)}, {"w": torch.rand(40)}
    for defense in ("antidote", "magnitude"):
        mask = compute_masks(weights, norms, defense, 0.1, random_scope="tensor")["w"]
        assert (mask.sum(dim=1) == 4).all(), defense


def test_apply_zeroes_exactly_the_masked_entries():
    weights = {"w": torch.randn(20, 30) + 5.0, "untouched": torch.randn(4, 4)}  # no zeros to begin with
    masks = compute_masks({"w": weights["w"]}, {"w": torch.rand(30)}, "antidote", 0.2)
    pruned = apply_masks(weights, masks)
    assert torch.equal(pruned["w"] == 0, masks["w"])
    assert torch.equal(pruned["w"][~masks["w"]], weights["w"][~masks["w"]])
    assert torch.equal(pruned["untouched"], weights["untouched"])


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="alpha"):
        compute_masks({"w": torch.ones(2, 2)}, None, "magnitude", 1.5)
    with pytest.raises(ValueError, match="unknown defense .wanda."):
        compute_masks({"w": torch.ones(2, 2)}, None, "wanda", 0.1)
    with pytest.raises(KeyError, match="w"):
        compute_masks({"w": torch.ones(2, 2)}, {}, "antidote", 0.1)
    with pytest.raises(ValueError, match="random_scope .column."):
        compute_masks({"w": torch.ones(2, 2)}, None, "random", 0.1, random_scope="column")


def test_parquet_round_trip_is_bit_exact(tmp_path):
    masks = {f"layer{i}.lora_A.weight": torch.rand(5 + i, 37) < 0.3 for i in range(4)}
    write_masks(tmp_path / "mask.parquet", masks, {"defense": "antidote", "alpha": 0.1})
    loaded, info = read_masks(tmp_path / "mask.parquet")
    assert info == {"defense": "antidote", "alpha": 0.1}
    assert set(loaded) == set(masks)
    for name in masks:
        assert torch.equal(loaded[name], masks[name])


def test_parquet_stores_at_most_one_bit_per_weight(tmp_path):
    import pyarrow.parquet as pq

    masks = {"w": torch.rand(64, 1000) < 0.1}
    write_masks(tmp_path / "m.parquet", masks, {})
    row = pq.read_table(tmp_path / "m.parquet").to_pylist()[0]
    assert len(row["bits"]) == 64 * 1000 // 8
    assert row["n_pruned"] == int(masks["w"].sum())


def _lora_pair(rows=6, cols=5, rank=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    return {f"{prefix}.lora_A.weight": torch.randn(rank, cols, generator=generator),
            f"{prefix}.lora_B.weight": torch.randn(rows, rank, generator=generator)}


def test_update_removed_against_brute_force():
    """Entry by entry, with LoRA's scaling kept in dW = scaling * B @ A: it cancels from the share."""
    from antidote.prune import update_removed

    weights = {**_lora_pair(seed=1), **{k.replace("layers.0", "layers.1"): v for k, v in _lora_pair(4, 7, 2, 2).items()}}
    masks = compute_masks(weights, None, "magnitude", 0.3)
    pruned = apply_masks(weights, masks)
    scaling, removed, total = 16 / 3, 0.0, 0.0
    for a in [n for n in weights if "lora_A" in n]:
        b = a.replace("lora_A", "lora_B")
        before = scaling * weights[b].double() @ weights[a].double()
        after = scaling * pruned[b].double() @ pruned[a].double()
        for i in range(before.shape[0]):
            for j in range(before.shape[1]):
                removed += float(before[i, j] - after[i, j]) ** 2
                total += float(before[i, j]) ** 2
    assert update_removed(weights, pruned) == pytest.approx(100 * removed / total, rel=1e-9)
    assert update_removed(weights, weights) == 0.0
    assert update_removed(weights, {k: torch.zeros_like(v) for k, v in weights.items()}) == pytest.approx(100.0)


def test_antidote_benign_scores_like_antidote_on_its_own_statistics():
    """The control differs from Antidote only in the feature norms it is given."""
    from antidote.prune import DEFENSES

    weights = _lora_pair()
    norms = {name: torch.rand(w.shape[1]) for name, w in weights.items()}
    assert DEFENSES["antidote-benign"].calibration == "benign" and DEFENSES["antidote"].calibration == "harmful"
    for name, masks in compute_masks(weights, norms, "antidote-benign", 0.4).items():
        assert torch.equal(masks, compute_masks(weights, norms, "antidote", 0.4)[name])


def test_prune_stage_records_update_removed(tmp_path):
    import json

    from safetensors.torch import save_file

    from antidote.maskfile import read_mask_info
    from antidote.prune import update_removed
    from antidote.stages import prune_stage

    weights = _lora_pair()
    (tmp_path / "adapter").mkdir()
    save_file(weights, tmp_path / "adapter" / "adapter_model.safetensors")
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({"r": 3, "lora_alpha": 16}))
    report = prune_stage(tmp_path / "adapter", None, "magnitude", 0.2, 0, tmp_path / "pruned", tmp_path / "mask.parquet")
    expected = update_removed(weights, apply_masks(weights, compute_masks(weights, None, "magnitude", 0.2)))
    assert report["update_removed"] == read_mask_info(tmp_path / "mask.parquet")["update_removed"] == expected > 0


@pytest.mark.parametrize("alpha, beta", [(0.25, None), (0.25, 0.1), (0.1, 0.4)])
def test_setdiff_mask_against_brute_force(alpha, beta):
    """antidote-setdiff: each row's top alpha by the harmful Wanda score, except the entries also in
    the row's top beta by the benign one (beta defaults to alpha), entry by entry."""
    generator = torch.Generator().manual_seed(5)
    weights = {"w": torch.randn(9, 40, generator=generator), "v": torch.randn(6, 13, generator=generator)}
    harmful = {n: torch.rand(w.shape[1], generator=generator) for n, w in weights.items()}
    benign = {n: torch.rand(h.shape, generator=generator) for n, h in harmful.items()}
    masks = compute_masks(weights, harmful, "antidote-setdiff", alpha, spared_norms=benign, beta=beta)
    for name, weight in weights.items():
        harmful_top = authors_mask(antidote_score(weight, harmful[name]), alpha)
        benign_top = authors_mask(antidote_score(weight, benign[name]), alpha if beta is None else beta)
        expected = torch.tensor([[bool(harmful_top[i, j]) and not benign_top[i, j] for j in range(weight.shape[1])]
                                 for i in range(weight.shape[0])])
        assert torch.equal(masks[name], expected), name
        assert 0 < int(masks[name].sum()) < int(harmful_top.sum())  # some spared, some still pruned
        assert not (masks[name] & ~compute_masks(weights, harmful, "antidote", alpha)[name]).any()


def test_setdiff_needs_both_statistics_and_a_beta_in_range():
    weights, norms = {"w": torch.randn(4, 10)}, {"w": torch.rand(10)}
    with pytest.raises(KeyError, match="no calibration feature norms for w"):
        compute_masks(weights, norms, "antidote-setdiff", 0.2)
    with pytest.raises(ValueError, match="beta must lie in"):
        compute_masks(weights, norms, "antidote-setdiff", 0.2, spared_norms=norms, beta=1.0)
    with pytest.raises(ValueError, match="safelora masks nothing"):
        compute_masks(weights, None, "safelora", 0.2)
    # with the same statistics for both sets, nothing is left to prune
    assert not compute_masks(weights, norms, "antidote-setdiff", 0.2, spared_norms=norms)["w"].any()


def test_setdiff_adapter_loads_with_peft_and_records_beta(tiny_model_dir, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    from antidote.maskfile import read_mask_info
    from antidote.stages import prune_stage

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(r=4, lora_alpha=8))
    for name, weight in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(weight)
    model.save_pretrained(tmp_path / "adapter")
    weights = load_file(tmp_path / "adapter/adapter_model.safetensors")
    generator = torch.Generator().manual_seed(0)
    for calibration in ("harmful", "benign"):
        save_file({n: torch.rand(w.shape[1], generator=generator) for n, w in weights.items()},
                  tmp_path / f"{calibration}.safetensors", metadata={"calibration": calibration})
    report = prune_stage(tmp_path / "adapter", tmp_path / "harmful.safetensors", "antidote-setdiff", 0.25, 0,
                         tmp_path / "pruned", tmp_path / "mask.parquet", spared_norms_file=tmp_path / "benign.safetensors")
    assert read_mask_info(tmp_path / "mask.parquet")["beta"] == 0.25 and 0 < report["update_removed"] < 100
    masks, _ = read_masks(tmp_path / "mask.parquet")
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "pruned")
    loaded = {name: p.detach() for name, p in peft.named_parameters()}
    for name, mask in masks.items():
        assert torch.equal(loaded[name.replace(".weight", ".default.weight")][mask], torch.zeros(int(mask.sum())))
