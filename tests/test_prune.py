"""The mask: exactly floor(alpha * cols) largest scores per row, deterministic ties, exact zeroing, Parquet round trip."""

import math

import pytest
import torch

from antidote.maskfile import read_masks, write_masks
from antidote.prune import antidote_score, apply_masks, compute_masks, top_fraction_mask


def brute_force_mask(score, alpha):
    """Row by row: rank entries by (score descending, column ascending), mark the first floor(alpha*cols)."""
    rows, cols = score.shape
    k = math.floor(alpha * cols)
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    for i in range(rows):
        ranked = sorted(range(cols), key=lambda j: (-score[i, j].item(), j))
        for j in ranked[:k]:
            mask[i, j] = True
    return mask


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.1, 0.25, 0.5, 0.99])
@pytest.mark.parametrize("shape", [(7, 13), (16, 64), (3, 100)])
def test_mask_matches_brute_force(alpha, shape):
    score = torch.rand(shape, generator=torch.Generator().manual_seed(int(alpha * 100) + shape[1]))
    mask = top_fraction_mask(score, alpha)
    assert torch.equal(mask, brute_force_mask(score, alpha))
    assert (mask.sum(dim=1) == math.floor(alpha * shape[1])).all()


def test_ties_are_broken_by_lower_column():
    score = torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.5, 2.0, 1.0, 1.0, 1.0, 1.0]])
    mask = top_fraction_mask(score, 0.3)  # k = 3 of the four tied 2.0 entries
    assert mask.nonzero()[:, 1].tolist() == [1, 2, 3]
    assert torch.equal(mask, brute_force_mask(score, 0.3))


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
    assert (first["a"].sum(1) == 10).all() and (first["b"].sum(1) == 1).all()


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
